# -*- test-case-name: tests.test_cluster_auth -*-
"""
TLS for cluster links.

Links are encrypted by default: a node with no certificates configured
makes itself a self-signed one at start (an EC P-256 key, in memory) and
verifies nothing about its peers' certificates; who a peer is, is proved by
the cookie, in a challenge-response bound to the TLS channel
(:func:`channel_binding`), so a relay that terminates TLS on either side
cannot pass it.  With certificates from a cluster CA (``--dist-cert``,
``--dist-key``, ``--dist-ca``) each node also verifies its peers' against the
CA, and the cookie proof is bound to the channel all the same.

Links speak TLS 1.3 only: both ends are this software, and its exporter
(RFC 8446, section 7.5) is the channel binding.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet import ssl
from twisted.internet.interfaces import ISSLTransport

__all__ = ["ClusterTLS", "channel_binding", "BINDING_LABEL"]

#: The exporter label of the channel binding (RFC 5705 / RFC 8446 7.5).
BINDING_LABEL = b"EXPORTER-twisted-phoenix-cluster-link"


class ClusterTLS:
    """
    A node's certificate and the authority it trusts for its peers.

    :param certificate: this node's certificate with its private key.
    :param authority: the CA that signed every node's certificate, or
        ``None`` (a self-signed certificate): peers' certificates are then
        not verified, the cookie proof alone authenticates them.
    """

    def __init__(self, certificate: ssl.PrivateCertificate, authority: ssl.Certificate | None) -> None:
        self.certificate = certificate
        self.authority = authority

    @property
    def self_signed(self) -> bool:
        """Whether this is a node's own certificate, with no CA to verify peers against."""
        return self.authority is None

    @classmethod
    def from_files(cls, cert: str, key: str, ca: str) -> ClusterTLS:
        """Load PEM files: the node's certificate, its key, the CA certificate."""
        with open(cert, "rb") as f:
            cert_pem = f.read()
        with open(key, "rb") as f:
            key_pem = f.read()
        with open(ca, "rb") as f:
            ca_pem = f.read()
        return cls(ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem), ssl.Certificate.loadPEM(ca_pem))

    @classmethod
    def generate(cls, common_name: str) -> ClusterTLS:
        """
        A fresh self-signed certificate for ``common_name`` (an EC P-256 key,
        made in memory in about a millisecond; never written anywhere).
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256())
        )
        pem = certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(ssl.PrivateCertificate.loadPEM(pem), None)

    def server_options(self) -> Any:
        """
        With a CA: accept only peers with a certificate it signed.  Self-signed:
        accept any peer (the cookie proof, bound to the channel, decides).
        """
        if self.authority is None:
            return ssl.CertificateOptions(
                privateKey=_modern(self.certificate.privateKey.original),
                certificate=_modern(self.certificate.original),
                raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
            )
        return ssl.CertificateOptions(
            privateKey=_modern(self.certificate.privateKey.original),
            certificate=_modern(self.certificate.original),
            trustRoot=ssl.trustRootFromCertificates([self.authority]),
            raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
        )

    def client_options(self, hostname: str) -> Any:
        """
        With a CA: verify the peer's certificate for ``hostname`` and present
        ours.  Self-signed: verify nothing (the cookie proof decides).
        """
        if self.authority is None:
            return ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_3)
        return ssl.optionsForClientTLS(
            hostname, trustRoot=self.authority, clientCertificate=self.certificate,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3},
        )


def _modern(key_or_certificate: Any) -> Any:
    """A pyOpenSSL key or certificate as cryptography's (pyOpenSSL's own are deprecated)."""
    for name in ("to_cryptography_key", "to_cryptography"):
        convert = getattr(key_or_certificate, name, None)
        if convert is not None:
            return convert()
    return key_or_certificate


def channel_binding(transport: Any) -> bytes:
    """
    The TLS channel binding of a connection (``tls-exporter``, RFC 9266: 32
    bytes from the TLS 1.3 exporter), the same at both ends of one TLS
    connection and unknowable to anyone else; empty for a plaintext
    connection.  Both ends of a relay that terminates TLS get different
    values, so a proof that covers it does not survive the relay.

    :raises ValueError: on a TLS connection whose handshake is not done.
    """
    if transport is None or not ISSLTransport.providedBy(transport):
        return b""
    handle = transport.getHandle()
    try:
        return bytes(handle.export_keying_material(BINDING_LABEL, 32))
    except Exception as e:  # OpenSSL.SSL.Error before the handshake
        raise ValueError(f"no TLS channel binding yet: {e!r}") from None
