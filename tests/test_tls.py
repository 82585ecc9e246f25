"""
TLS: the real ``twistd -n phoenix`` serving ``wss://`` from an ``ssl:``
endpoint description, reached by the real phoenix.js under Node.

A throwaway CA and a server certificate for ``127.0.0.1``/``localhost`` are
made at test time; Node trusts the CA through ``NODE_EXTRA_CA_CERTS``.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from ._cluster import ClusterPKI
from ._server import ChildFailed, require_node_modules, run_node_scenario, start_server


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
        pki = ClusterPKI(directory, "twisted_phoenix test CA")
        cert, key = pki.issue("localhost")  # valid for 127.0.0.1 and localhost
        self.paths = {"ca": pki.ca_path, "cert": cert, "key": key}

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
