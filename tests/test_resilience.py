"""
Traffic shapes production brings, over real loopback connections: a burst
of disconnects in the middle of a fan-out.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint

from ._client import capture_logs, connect, serve

SECRET = "r" * 64
CLIENTS = 60


class DisconnectBurstTests(TestCase):
    """
    Half the subscribers of a presence topic reset at once while broadcasts
    stream to it: the presence diffs for their leaves and the broadcasts go
    out in the same turns as their connections are lost.
    """

    timeout = 60

    @inlineCallbacks
    def test_survivorsKeepEverything(self) -> Any:
        """Every survivor gets every broadcast after the burst, in order, and its heartbeat reply."""
        logs = capture_logs(self)
        endpoint = HelloSocketsEndpoint(reactor, secret_key_base=SECRET)
        server = serve(self, endpoint)
        clients = yield gatherResults(
            [
                connect(reactor, server.port, query=f"user_id=u{n}&vsn=2.0.0", test=self)
                for n in range(CLIENTS)
            ]
        )
        for n, client in enumerate(clients):
            client.send_json(["1", "1", "tracked", "phx_join", {"user_id": f"u{n}"}])
        for client in clients:
            reply = yield client.next_json()
            self.assertEqual(reply[3:], ["phx_reply", {"response": {}, "status": "ok"}])
        doomed, survivors = clients[: CLIENTS // 2], clients[CLIENTS // 2 :]
        broadcasts = 40
        for n in range(broadcasts):
            endpoint.broadcast("tracked", "tick", {"n": n})
            if n == broadcasts // 2:
                # The resets reach the server while this broadcast's frames
                # wait to be flushed, and the presence diffs for the leaves
                # fan out to the survivors in the turns that follow.
                for client in doomed:
                    client.abort()
            yield deferLater(reactor, 0, lambda: None)
        for client in survivors:
            client.send_json([None, "hb", "phoenix", "heartbeat", {}])
        gone = {f"u{n}" for n in range(CLIENTS // 2)}
        for client in survivors:
            ticks = []
            left: set[str] = set()
            replied = False
            while not (replied and left >= gone):
                frame = yield client.next_json(timeout=10)
                if frame[3] == "tick":
                    ticks.append(frame[4]["n"])
                elif frame[3] == "presence_diff":
                    left.update(frame[4]["leaves"])
                elif frame[1] == "hb":
                    self.assertEqual(frame[3:], ["phx_reply", {"response": {}, "status": "ok"}])
                    replied = True
            self.assertEqual(ticks, list(range(broadcasts)))
        # Every survivor saw every doomed user leave: the server has handled
        # all the resets.
        self.assertEqual(server.site.connections, len(survivors))
        self.assertEqual(sorted(endpoint.presence.list("tracked")), sorted(f"u{n}" for n in range(CLIENTS // 2, CLIENTS)))
        self.assertEqual([e for e in logs.events if "log_failure" in e], [])
