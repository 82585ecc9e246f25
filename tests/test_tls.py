"""
TLS: the real ``twistd -n phoenix`` serving ``wss://`` from an ``ssl:``
endpoint description, reached by the real phoenix.js under Node.

A throwaway CA and a server certificate for ``127.0.0.1``/``localhost`` are
made at test time; Node trusts the CA through ``NODE_EXTRA_CA_CERTS``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
import shutil
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer
from twisted.trial import unittest

from ._server import ChildFailed, require_node_modules, run_node_scenario, start_server


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory: str) -> dict[str, str]:
    """
    Write ``ca.pem``, ``server-key.pem`` and ``server-cert.pem`` (for
    127.0.0.1 and localhost, signed by the CA) into ``directory``; return their paths.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("twisted_phoenix test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    paths = {
        "ca": os.path.join(directory, "ca.pem"),
        "key": os.path.join(directory, "server-key.pem"),
        "cert": os.path.join(directory, "server-cert.pem"),
    }
    with open(paths["ca"], "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return paths


class TLSTests(unittest.TestCase):
    """phoenix.js over wss:// against ``twistd phoenix --listen ssl:...``."""

    timeout = 60

    def setUp(self) -> None:
        try:
            require_node_modules("phoenix", "ws")
        except ChildFailed as e:
            self.fail(str(e))
        directory = tempfile.mkdtemp(prefix="twisted_phoenix_tls_")
        self.addCleanup(shutil.rmtree, directory, True)
        self.paths = make_certificates(directory)

    def start_tls_server(self) -> defer.Deferred[Any]:
        listen = f"ssl:0:interface=127.0.0.1:privateKey={self.paths['key']}:certKey={self.paths['cert']}"
        return start_server(self, listen=[listen])

    @defer.inlineCallbacks
    def test_wss_ping(self) -> Any:
        """phoenix.js trusting the CA connects over wss://, joins ping and gets pong (V1 and V2)."""
        server = yield self.start_tls_server()
        for vsn in ("1.0.0", "2.0.0"):
            run = yield run_node_scenario(
                self, "ping", server.url(scheme="wss"), {"vsn": vsn},
                env={"NODE_EXTRA_CA_CERTS": self.paths["ca"]}, server=server,
            )
            replies = {e["label"]: (e["status"], e["response"]) for e in run.events if e["ev"] == "reply"}
            self.assertEqual(replies["ping"], ("ok", {"ping": "pong"}), vsn)
            (connecting,) = [e for e in run.events if e["ev"] == "connecting"]
            self.assertTrue(connecting["url"].startswith(f"wss://127.0.0.1:{server.port}/socket/websocket?"))
            self.assertEqual([e for e in run.events if e["ev"] == "join"][0]["status"], "ok")

    @defer.inlineCallbacks
    def test_untrusted_certificate_refused(self) -> Any:
        """phoenix.js that does not trust the CA never opens the wss:// connection."""
        server = yield self.start_tls_server()
        run = yield run_node_scenario(
            self, "refused", server.url(scheme="wss"), {"vsn": "2.0.0"},
            env={"NODE_EXTRA_CA_CERTS": None}, server=server,
        )
        self.assertEqual([e for e in run.events if e["ev"] == "open"], [])
        errors = [e for e in run.events if e["ev"] == "error"]
        self.assertGreaterEqual(len(errors), 2)
        for e in errors:
            self.assertIn("certificate", e["message"])
