"""
Presence across a real cluster, as phoenix.js sees it: ``twistd -n phoenix``
nodes on loopback (``tests._presence_apps:PresenceClusterEndpoint``: short
presence periods, an ``update`` event, a ``/control`` socket) and
long-running phoenix.js clients (``tests/js/presence_client.js``) that print
every Presence ``onJoin``/``onLeave``/``onSync``.

Each test has its own cluster: its own port mapper port and cookie.  Every
wait is for an event (a line a child prints, a child's exit), bounded.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Callable, Iterable

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from ._client import connect
from ._cluster import free_port
from ._presence_apps import PRESENCE_OPTIONS
from ._server import (
    ChildFailed,
    ChildProcess,
    ServerProcess,
    require_node_modules,
    spawn_node,
    start_server,
    wait_ended,
)

#: Bound on a wait for something that needs no failure detection.
TIMEOUT = 15.0

DOWN_PERIOD = PRESENCE_OPTIONS["down_period"]

#: How late after ``down_period`` a silent node's presences may still show:
#: the down check runs every gossip round, then the diff reaches the
#: clients.  Generous, for a loaded machine.
DOWN_SLACK = 3.0

ENDPOINT = "tests._presence_apps:PresenceClusterEndpoint"

#: Logged by a node once it listens for links (and is registered).
NODE_READY = "listening for cluster links"


def node(name: str) -> str:
    return f"{name}@127.0.0.1"


def counts(sync: dict[str, Any]) -> dict[str, int]:
    """``{key: number of metas}`` of a sync line."""
    return {item["id"]: item["count"] for item in sync["list"]}


def refs(sync: dict[str, Any], key: str | None = None) -> set[str]:
    """The phx_refs of a sync line (of one key, if given)."""
    return {ref for item in sync["list"] if key in (None, item["id"]) for ref in item["refs"]}


def changed(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The ``join`` and ``leave`` lines that change something.  A channel's
    own join arrives twice, as in Phoenix: in ``presence_state`` and then in
    a ``presence_diff``, for which phoenix.js calls ``onJoin`` again with
    refs it already has.
    """
    return [
        e for e in events
        if e["ev"] == "leave" or (e["ev"] == "join" and not set(e["joined"]) <= set(e["current"] or ()))
    ]


class PresenceClient:
    """
    A running ``presence_client.js``: what it printed so far, and waits on it.

    :ivar events: the JSON lines printed so far, in order.
    """

    def __init__(self, testcase: PresenceClusterTestCase, server: ServerProcess, user: str, name: str) -> None:
        self.testcase = testcase
        self.name = name
        self.user = user
        options = {"lifetimeMs": 90_000}
        self.child: ChildProcess = spawn_node(
            testcase, ["presence_client.js", server.url("/socket"), user, json.dumps(options)], name=name
        )
        self.events: list[dict[str, Any]] = []
        self._parsed = 0

    def _parse(self) -> list[dict[str, Any]]:
        data = bytes(self.child.stdout)
        end = data.rfind(b"\n") + 1
        if end > self._parsed:
            for line in data[self._parsed:end].decode("utf-8", "replace").splitlines():
                if line.startswith("{"):
                    self.events.append(json.loads(line))
            self._parsed = end
        return self.events

    def mark(self) -> int:
        """A position in :attr:`events`: a wait ``since`` it sees only the lines after it."""
        return len(self._parse())

    def since(self, mark: int, ev: str | None = None) -> list[dict[str, Any]]:
        """The lines printed after ``mark`` (only those of kind ``ev``, if given)."""
        return [e for e in self._parse()[mark:] if ev is None or e["ev"] == ev]

    def send(self, command: str) -> None:
        """Write one command line to the client's stdin."""
        self.child.transport.write(command.encode() + b"\n")

    def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, since: int = 0, timeout: float = TIMEOUT
    ) -> defer.Deferred[dict[str, Any]]:
        """Fire with the first line after ``since`` that satisfies ``predicate``."""

        def found(_: str) -> Any:
            for event in self._parse()[since:]:
                if predicate(event):
                    return event
            return None

        return self.testcase.explained(self.child.wait_for_output(found, timeout, f"{what} from {self.name}"))

    def wait_list(
        self, expected: dict[str, int], since: int = 0, timeout: float = TIMEOUT
    ) -> defer.Deferred[dict[str, Any]]:
        """
        Fire with the sync line (after ``since``) that makes this client's
        Presence list ``{key: metas count}`` equal ``expected``.
        """

        def current(_: str) -> Any:
            syncs = [e for e in self._parse()[since:] if e["ev"] == "sync"]
            if syncs and counts(syncs[-1]) == expected:
                return syncs[-1]
            return None

        return self.testcase.explained(
            self.child.wait_for_output(current, timeout, f"Presence list {expected} on {self.name}")
        )

    def last_sync(self) -> dict[str, Any]:
        return [e for e in self._parse() if e["ev"] == "sync"][-1]


class PresenceClusterTestCase(TestCase):
    """A cluster of its own (port mapper port, cookie) and phoenix.js clients."""

    def setUp(self) -> None:
        require_node_modules("phoenix", "ws")
        self.epmd_port = str(free_port())
        self.cookie = f"presence-cluster-{secrets.token_hex(8)}"
        self.servers: dict[str, ServerProcess] = {}
        self.clients: list[PresenceClient] = []

    def explained(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """On failure, add the end of every node's log to the message."""

        def add_logs(failure: Any) -> Any:
            if failure.check(ChildFailed):
                logs = "\n".join(
                    f"--- node {name} (last lines) ---\n" + "\n".join(s.output().splitlines()[-40:])
                    for name, s in self.servers.items()
                )
                raise ChildFailed(f"{failure.value}\n{logs}")
            return failure

        return d.addErrback(add_logs)

    def start(self, name: str, *, connect: Iterable[str] = (), port: int = 0) -> defer.Deferred[ServerProcess]:
        """Start node ``name@127.0.0.1`` serving the test app on ``port`` (0: any)."""
        args = [
            "--name", node(name), "--endpoint", ENDPOINT,
            "--epmd-port", self.epmd_port, "--cookie", self.cookie,
        ]
        for other in connect:
            args += ["--connect", node(other)]
        d = start_server(
            self, *args, ready=NODE_READY, name=name, timeout=TIMEOUT,
            listen=(f"tcp:{port}:interface=127.0.0.1",),
        )

        def started(server: ServerProcess) -> ServerProcess:
            self.servers[name] = server
            return server

        return d.addCallback(started)

    def wait_log(self, name: str, *texts: str, since: int = 0, timeout: float = TIMEOUT) -> defer.Deferred[Any]:
        """Fire once node ``name`` has logged every one of ``texts`` (after offset ``since``)."""
        child = self.servers[name].child
        return self.explained(child.wait_for_output(
            lambda out: all(t in out[since:] for t in texts), timeout, f"{texts} in the log of {name}"
        ))

    def wait_log_match(self, name: str, pattern: str, since: int = 0, timeout: float = TIMEOUT) -> defer.Deferred[Any]:
        """Fire once node ``name`` has logged a line matching the regular expression ``pattern``."""
        child = self.servers[name].child
        return self.explained(child.wait_for_output(
            lambda out: re.search(pattern, out[since:]), timeout, f"/{pattern}/ in the log of {name}"
        ))

    def log_size(self, name: str) -> int:
        return len(self.servers[name].child.stdout.decode("utf-8", "replace"))

    @defer.inlineCallbacks
    def start_cluster(self, *names: str) -> Any:
        """Start the nodes (each connects to the first) and wait for the full mesh."""
        first = names[0]
        yield defer.gatherResults([self.start(n, connect=[first] if n != first else []) for n in names])
        yield defer.gatherResults([
            self.wait_log(n, *(f"Node {node(o)} connected to {node(n)}" for o in names if o != n))
            for n in names
        ])

    def client(self, server: str, user: str, name: str) -> PresenceClient:
        """A phoenix.js Presence client of node ``server``, tracked as ``user``."""
        client = PresenceClient(self, self.servers[server], user, name)
        self.clients.append(client)
        return client

    def wait_lists(
        self,
        clients: Iterable[PresenceClient],
        expected: dict[str, int],
        marks: dict[PresenceClient, int] | None = None,
        timeout: float = TIMEOUT,
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """Every client's list becomes ``expected``; fires with their sync lines, in order."""
        marks = marks or {}
        return defer.gatherResults(
            [c.wait_list(expected, since=marks.get(c, 0), timeout=timeout) for c in clients], consumeErrors=True
        ).addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)

    def assertNoDuplicateRefs(self, client: PresenceClient) -> None:
        """No sync of ``client`` ever listed a phx_ref twice."""
        for sync in client.since(0, "sync"):
            all_refs = [ref for item in sync["list"] for ref in item["refs"]]
            self.assertEqual(len(all_refs), len(set(all_refs)), f"{client.name}: {sync}")

    def tearDown(self) -> None:
        # A refused join or a command the client did not understand is a bug in the test.
        for client in self.clients:
            for event in client.since(0):
                self.assertNotIn(event["ev"], ("join_error", "bad_command"), f"{client.name}: {event}")


class PresenceClusterTests(PresenceClusterTestCase):
    """phoenix.js Presence clients on two nodes of one cluster."""

    @defer.inlineCallbacks
    def test_joinsUpdatesLeaves(self) -> None:
        """Clients on two nodes see each other join, a second tab, an update and leaves, with no flapping."""
        yield self.start_cluster("a", "b")
        alice = self.client("a", "alice", "alice@a")
        bob = self.client("b", "bob", "bob@b")
        yield self.wait_lists([alice, bob], {"alice": 1, "bob": 1})
        alice_ref = refs(alice.last_sync(), "alice").pop()

        # A second tab of alice, on the other node: two metas under one key, everywhere.
        marks = {c: c.mark() for c in (alice, bob)}
        tab = self.client("b", "alice", "alice-tab@b")
        synced = yield self.wait_lists([alice, bob, tab], {"alice": 2, "bob": 1}, marks)
        self.assertEqual(len({frozenset(refs(s)) for s in synced}), 1, synced)
        tab_ref = (refs(synced[0], "alice") - {alice_ref}).pop()
        joins = [e for e in changed(bob.since(marks[bob], "join")) if e["key"] == "alice"]
        self.assertEqual(joins, [{"ev": "join", "key": "alice", "current": [alice_ref], "joined": [tab_ref]}])

        # An update on node a: one diff (leave + join) that phoenix.js applies at once.
        marks = {c: c.mark() for c in (alice, bob, tab)}
        alice.send('push update {"status": "away"}')
        reply = yield alice.wait_event(lambda e: e["ev"] == "reply", "the update's reply", since=marks[alice])
        self.assertEqual(reply["status"], "ok", reply)
        new_ref = reply["response"]["phx_ref"]

        def updated(sync: dict[str, Any]) -> bool:
            return any(m.get("status") == "away" for item in sync["list"] for m in item["metas"])

        for client in (alice, bob, tab):
            sync = yield client.wait_event(
                lambda e: e["ev"] == "sync" and updated(e), "the updated meta", since=marks[client]
            )
            self.assertEqual(counts(sync), {"alice": 2, "bob": 1})
            self.assertEqual(refs(sync, "alice"), {new_ref, tab_ref})
            metas = {m["phx_ref"]: m for item in sync["list"] for m in item["metas"]}
            self.assertEqual(metas[new_ref]["status"], "away")
            self.assertEqual(metas[new_ref]["phx_ref_prev"], alice_ref)
            self.assertNotIn("status", metas[tab_ref])
            # Never three metas (join first) nor one (leave first): one diff, one sync.
            for earlier in client.since(marks[client], "sync"):
                self.assertEqual(counts(earlier), {"alice": 2, "bob": 1}, client.name)
            changes = [(e["ev"], e.get("joined") or e.get("left")) for e in changed(client.since(marks[client]))]
            self.assertEqual(changes, [("join", [new_ref]), ("leave", [alice_ref])], client.name)

        # The tab leaves its channel: its meta disappears from the others' lists.
        marks = {c: c.mark() for c in (alice, bob, tab)}
        tab.send("leave")
        yield tab.wait_event(lambda e: e["ev"] == "left", "the leave", since=marks[tab])
        synced = yield self.wait_lists([alice, bob], {"alice": 1, "bob": 1}, marks)
        for sync in synced:
            self.assertEqual(refs(sync, "alice"), {new_ref})
        leaves = [e for e in bob.since(marks[bob], "leave")]
        self.assertEqual(leaves, [{"ev": "leave", "key": "alice", "current": [new_ref], "left": [tab_ref]}])

        # The tab joins again: a new meta, under a new phx_ref.
        marks = {c: c.mark() for c in (alice, bob, tab)}
        tab.send("join")
        synced = yield self.wait_lists([alice, bob, tab], {"alice": 2, "bob": 1}, marks)
        self.assertEqual(len({frozenset(refs(s)) for s in synced}), 1, synced)
        tab_ref_2 = (refs(synced[0], "alice") - {new_ref}).pop()
        self.assertNotEqual(tab_ref_2, tab_ref)

        # alice closes her connection: she is gone from node b's clients.
        marks = {c: c.mark() for c in (bob, tab)}
        alice.send("exit")
        ended = yield wait_ended(alice.child, TIMEOUT)
        self.assertEqual(ended.exit_code, 0, ended.output())
        synced = yield self.wait_lists([bob, tab], {"alice": 1, "bob": 1}, marks)
        for sync in synced:
            self.assertEqual(refs(sync, "alice"), {tab_ref_2})

        # No replica was ever taken for down (the gossip kept both alive):
        # bob never left anyone's list, and no node logged a presence down.
        for client in (alice, bob, tab):
            self.assertEqual([e for e in client.since(0, "leave") if e["key"] == "bob"], [], client.name)
            self.assertNoDuplicateRefs(client)
        for name in ("a", "b"):
            self.assertIsNone(re.search(r"Presence replica \S+ is down", self.servers[name].output()))


class NodeKilledTests(PresenceClusterTestCase):
    """A node killed with SIGKILL, then restarted under the same name."""

    @defer.inlineCallbacks
    def test_killAndRestart(self) -> None:
        """A killed node's users leave the others' lists within down_period; restarted, only its new entries show."""
        yield self.start_cluster("a", "b", "c")
        c_port = self.servers["c"].port
        alice = self.client("a", "alice", "alice@a")
        bob = self.client("b", "bob", "bob@b")
        carol = self.client("c", "carol", "carol@c")
        tab = self.client("c", "alice", "alice-tab@c")
        everyone = {"alice": 2, "bob": 1, "carol": 1}
        synced = yield self.wait_lists([alice, bob, carol, tab], everyone)
        before = refs(synced[0])
        self.assertEqual(len({frozenset(refs(s)) for s in synced}), 1, synced)

        # kill -9 c: its users go from a's and b's lists once it has been
        # silent for down_period (the link itself is gone at once).
        marks = {c: c.mark() for c in (alice, bob, carol, tab)}
        log_marks = {n: self.log_size(n) for n in ("a", "b")}
        killed_at = reactor.seconds()
        self.servers["c"].child.transport.signalProcess("KILL")
        yield self.servers["c"].child.wait_ended()
        synced = yield self.wait_lists(
            [alice, bob], {"alice": 1, "bob": 1}, marks, timeout=DOWN_PERIOD + DOWN_SLACK
        )
        self.assertLessEqual(reactor.seconds() - killed_at, DOWN_PERIOD + DOWN_SLACK)
        yield defer.gatherResults([
            self.wait_log_match(n, rf"Presence replica {re.escape(node('c'))}/\S+ is down", since=log_marks[n])
            for n in ("a", "b")
        ])
        old_refs = before - refs(synced[0])
        self.assertEqual(len(old_refs), 2, (before, synced))
        self.assertEqual(refs(synced[0]), refs(synced[1]))
        down_marks = {c: c.mark() for c in (alice, bob)}

        # c restarts (same name, same HTTP port): its phoenix.js clients
        # reconnect and rejoin by themselves, and are tracked anew.
        yield self.start("c", connect=["a"], port=c_port)
        rejoined = yield defer.gatherResults([
            c.wait_event(lambda e: e["ev"] == "joined", "a rejoin", since=marks[c]) for c in (carol, tab)
        ])
        rejoin_marks = {c: c.since(0).index(e) for c, e in zip((carol, tab), rejoined)}
        synced = yield self.wait_lists([alice, bob, carol, tab], everyone, {**down_marks, **rejoin_marks})
        self.assertEqual(len({frozenset(refs(s)) for s in synced}), 1, synced)
        new_refs = refs(synced[0]) - refs(synced[0], "bob") - (before - old_refs)
        self.assertEqual(len(new_refs), 2, synced)
        self.assertFalse(new_refs & old_refs)

        # A barrier: a new user shows up everywhere, so every diff sent
        # before has arrived; the lists are still right.
        marks = {c: c.mark() for c in (alice, bob, carol, tab)}
        dave = self.client("c", "dave", "dave@c")
        synced = yield self.wait_lists([alice, bob, carol, tab, dave], {**everyone, "dave": 1}, marks)
        self.assertEqual(len({frozenset(refs(s)) for s in synced}), 1, synced)

        # No phx_ref of before the kill ever came back, on any client.
        for client, mark in [*down_marks.items(), *rejoin_marks.items(), (dave, 0)]:
            for event in client.since(mark):
                shown = refs(event) if event["ev"] == "sync" else set(event.get("joined") or ())
                self.assertFalse(shown & old_refs, f"{client.name}: {event}")
        for client in (alice, bob, carol, tab, dave):
            self.assertNoDuplicateRefs(client)


class PartitionTests(PresenceClusterTestCase):
    """A partition that drops the cluster link while both processes keep running."""

    @defer.inlineCallbacks
    def control(self, name: str) -> Any:
        """A WebSocket client of node ``name``'s ``/control`` channel."""
        client = yield connect(reactor, self.servers[name].port, path="/control/websocket", test=self)
        joined = yield client.request(["1", "1", "control", "phx_join", {}])
        self.assertEqual(joined, ["1", "1", "control", "phx_reply", {"response": {}, "status": "ok"}])
        return client

    @defer.inlineCallbacks
    def command(self, control: Any, ref: str, event: str, payload: dict[str, Any]) -> Any:
        reply = yield control.request(["1", ref, "control", event, payload])
        self.assertEqual(reply[:4], ["1", ref, "control", "phx_reply"], reply)
        self.assertEqual(reply[4]["status"], "ok", reply)
        return reply[4]["response"]

    @defer.inlineCallbacks
    def test_partitionHeals(self) -> None:
        """Changes on both sides of a partition reconcile after it heals: no presence lost or duplicated."""
        yield self.start_cluster("a", "b")
        control = yield self.control("a")
        alice = self.client("a", "alice", "alice@a")
        bob = self.client("b", "bob", "bob@b")
        tab = self.client("b", "alice", "alice-tab@b")
        synced = yield self.wait_lists([alice, bob, tab], {"alice": 2, "bob": 1})
        alice_refs = refs(synced[0], "alice")

        # Cut the link: each side takes the other for down after down_period.
        marks = {c: c.mark() for c in (alice, bob, tab)}
        log_mark = self.log_size("a")
        yield self.command(control, "2", "partition", {"peer": node("b")})
        yield self.wait_lists([alice], {"alice": 1}, marks, timeout=DOWN_PERIOD + DOWN_SLACK)
        yield self.wait_lists([bob, tab], {"alice": 1, "bob": 1}, marks, timeout=DOWN_PERIOD + DOWN_SLACK)
        self.assertNotIn(f"Node {node('b')} connected to", self.servers["a"].output()[log_mark:])

        # Changes on both sides while partitioned: carol joins on a, bob leaves on b.
        marks = {c: c.mark() for c in (alice, bob, tab)}
        carol = self.client("a", "carol", "carol@a")
        bob.send("leave")
        yield bob.wait_event(lambda e: e["ev"] == "left", "the leave", since=marks[bob])
        yield self.wait_lists([alice, carol], {"alice": 1, "carol": 1}, marks)
        yield self.wait_lists([tab], {"alice": 1}, marks)
        carol_ref = refs(carol.last_sync(), "carol").pop()
        # Still partitioned: a kept refusing b (b keeps retrying, a too).
        self.assertNotIn(f"Node {node('b')} connected to", self.servers["a"].output()[log_mark:])

        # Heal: the nodes relink by themselves (retries with backoff, at most
        # 5 s apart), and every list converges to the truth.
        marks = {c: c.mark() for c in (alice, carol, tab)}
        log_mark = self.log_size("a")
        yield self.command(control, "3", "heal", {"peer": node("b")})
        yield self.wait_log("a", f"Node {node('b')} connected to {node('a')}", since=log_mark, timeout=TIMEOUT)
        truth = {"alice": 2, "carol": 1}
        synced = yield self.wait_lists([alice, carol, tab], truth, marks)
        for sync in synced:
            self.assertEqual(refs(sync, "alice"), alice_refs)
            self.assertEqual(refs(sync, "carol"), {carol_ref})

        # A barrier: a new user on b shows up everywhere; by then no stale
        # diff is left to arrive, and every list is still exactly the truth.
        marks = {c: c.mark() for c in (alice, carol, tab)}
        dave = self.client("b", "dave", "dave@b")
        yield self.wait_lists([alice, carol, tab, dave], {**truth, "dave": 1}, marks)
        for client in (alice, carol, tab, dave):
            sync = client.last_sync()
            self.assertEqual(refs(sync, "alice"), alice_refs, client.name)
            self.assertEqual(refs(sync, "carol"), {carol_ref}, client.name)
            self.assertNoDuplicateRefs(client)
        self.assertEqual((yield self.command(control, "4", "links", {}))["links"], [node("b")])
