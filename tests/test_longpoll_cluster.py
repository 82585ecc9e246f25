"""
Long-poll behind a load balancer without sticky sessions: two real
``twistd -n phoenix`` nodes of one cluster, and phoenix.js ``LongPoll``
clients whose requests alternate between the nodes' ports.  A request for
a session the other node holds is forwarded over the cluster's PubSub and
answered from there.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from ._cluster import free_port
from ._server import ChildFailed, ServerProcess, require_node_modules, run_node_scenario, start_server

TIMEOUT = 20.0
NODE_READY = "listening for cluster links"


def node(name: str) -> str:
    return f"{name}@127.0.0.1"


class LongPollClusterTests(TestCase):
    """phoenix.js LongPoll clients alternating between two nodes of a cluster."""

    timeout = 120

    def setUp(self) -> None:
        try:
            require_node_modules("phoenix", "ws")
        except ChildFailed as e:
            self.fail(str(e))
        self.epmd_port = str(free_port())
        self.cookie = f"longpoll-cluster-{secrets.token_hex(8)}"

    def start(self, name: str, *connect: str) -> defer.Deferred[ServerProcess]:
        args = ["--name", node(name), "--epmd-port", self.epmd_port, "--cookie", self.cookie]
        for other in connect:
            args += ["--connect", node(other)]
        return start_server(self, *args, ready=NODE_READY, name=name, timeout=TIMEOUT)

    @defer.inlineCallbacks
    def test_alternatingRequests(self) -> Any:
        """Polls and posts alternate between the nodes; every reply and broadcast arrives, no session is lost."""
        a = yield self.start("a")
        b = yield self.start("b", "a")
        yield defer.gatherResults([
            a.child.wait_for_output(lambda out: f"Node {node('b')} connected to {node('a')}" in out, TIMEOUT, "b's link"),
            b.child.wait_for_output(lambda out: f"Node {node('a')} connected to {node('b')}" in out, TIMEOUT, "a's link"),
        ])
        run = yield run_node_scenario(
            self, "cluster", a.url(),
            {"vsn": "2.0.0", "transport": "longpoll", "ports": [a.port, b.port]},
            timeout=60.0,
        )
        events = run.events
        ends = [i for i, e in enumerate(events) if e["ev"] == "scenario_end"]
        during = events[: ends[0]]

        def of(ev: str, **fields: Any) -> list[dict[str, Any]]:
            return [e for e in during if e["ev"] == ev and all(e.get(k) == v for k, v in fields.items())]

        # Each client opened once and never lost its session.
        for sock in ("a", "b"):
            self.assertEqual(len(of("open", sock=sock)), 1, sock)
            self.assertEqual(of("error", sock=sock), [], sock)
            self.assertEqual(of("close", sock=sock), [], sock)
        # Both nodes served both kinds of request of client a.
        for method in ("GET", "POST"):
            ports = {e["port"] for e in of("request", sock="a", method=method)}
            self.assertEqual(ports, {a.port, b.port}, method)
        for i in range(6):
            (reply,) = of("reply", label=f"ping{i}")
            self.assertEqual((reply["status"], reply["response"]), ("ok", {"ping": "pong"}))
        for sock in ("a", "b"):
            self.assertEqual(
                [e["payload"] for e in of("push", sock=sock, topic="ping", event="broadcast")], [{"body": "hi"}], sock
            )
        (reply,) = of("reply", label="b_ping")
        self.assertEqual(reply["status"], "ok")
        # One session per client, held by the node that started it.
        started = a.output().count("Transport: longpoll Serializer") + b.output().count("Transport: longpoll Serializer")
        self.assertEqual(started, 2)
