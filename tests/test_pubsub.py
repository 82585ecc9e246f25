"""
Tests for L{twisted_phoenix.pubsub}: local dispatch with the channel fastlane
(protocol notes sections 4.2 and 5).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.message import Broadcast
from twisted_phoenix.pubsub import CallbackSubscriber, PubSub
from twisted_phoenix.serializers import Frame, Serializer, V1JSONSerializer, V2JSONSerializer
from twisted_phoenix.testing import FakeConnection


class CountingSerializer:
    """Wraps a serializer and counts its fastlane encodings."""

    def __init__(self, inner: Serializer | None = None) -> None:
        self.inner = V2JSONSerializer() if inner is None else inner
        self.calls: list[Broadcast] = []

    def fastlane(self, broadcast: Broadcast) -> Frame:
        self.calls.append(broadcast)
        return self.inner.fastlane(broadcast)


class FastlaneSubscriber:
    """A channel-like subscriber with a fastlane connection."""

    def __init__(self, serializer: Any, intercepts: frozenset[str] = frozenset()) -> None:
        self.fastlane = FakeConnection()
        self.serializer = serializer
        self.intercepts = intercepts
        self.received: list[Broadcast] = []

    def handle_broadcast(self, broadcast: Broadcast) -> None:
        self.received.append(broadcast)


class RecordingAdapter:
    """An adapter that records what it was asked to ship."""

    def __init__(self) -> None:
        self.shipped: list[Broadcast] = []

    def broadcast(self, broadcast: Broadcast) -> None:
        self.shipped.append(broadcast)


class PubSubTests(SynchronousTestCase):
    """
    Tests for L{PubSub}.
    """

    def setUp(self) -> None:
        self.pubsub = PubSub("node@host")

    def test_fanOutEncodesOncePerSerializer(self) -> None:
        """Each serializer encodes a broadcast once, and every subscriber gets the same Frame."""
        v2, v1 = CountingSerializer(), CountingSerializer(V1JSONSerializer())
        v2subs = [FastlaneSubscriber(v2) for _ in range(5)]
        v1subs = [FastlaneSubscriber(v1) for _ in range(3)]
        for s in v2subs + v1subs:
            self.pubsub.subscribe("room:1", s)
        self.pubsub.broadcast("room:1", "shout", {"x": 1})
        self.assertEqual(len(v2.calls), 1)
        self.assertEqual(len(v1.calls), 1)
        v2frames = [s.fastlane.frames for s in v2subs]
        self.assertEqual([len(f) for f in v2frames], [1] * 5)
        self.assertTrue(all(f[0] is v2frames[0][0] for f in v2frames))
        self.assertEqual(v2frames[0][0].data, b'[null,null,"room:1","shout",{"x":1}]')
        v1frames = [s.fastlane.frames[0] for s in v1subs]
        self.assertTrue(all(f is v1frames[0] for f in v1frames))
        self.assertEqual(v1frames[0].data, b'{"event":"shout","payload":{"x":1},"ref":null,"topic":"room:1"}')
        self.assertFalse(any(s.received for s in v2subs + v1subs))

    def test_encodesPerDispatch(self) -> None:
        """Each dispatch encodes anew (the cache lives for one broadcast)."""
        v2 = CountingSerializer()
        self.pubsub.subscribe("t", FastlaneSubscriber(v2))
        self.pubsub.broadcast("t", "a", {})
        self.pubsub.broadcast("t", "b", {})
        self.assertEqual([b.event for b in v2.calls], ["a", "b"])

    def test_interceptedEventsGoToHandleBroadcast(self) -> None:
        """An intercepted event skips the fastlane and reaches handle_broadcast."""
        v2 = CountingSerializer()
        sub = FastlaneSubscriber(v2, frozenset({"new_msg"}))
        self.pubsub.subscribe("t", sub)
        self.pubsub.broadcast("t", "new_msg", {"a": 1})
        self.pubsub.broadcast("t", "other", {"a": 2})
        self.assertEqual(sub.received, [Broadcast("t", "new_msg", {"a": 1})])
        self.assertEqual([f.data for f in sub.fastlane.frames], [b'[null,null,"t","other",{"a":2}]'])
        self.assertEqual([b.event for b in v2.calls], ["other"])

    def test_plainSubscriber(self) -> None:
        """A subscriber without a fastlane gets the Broadcast value."""
        got: list[Broadcast] = []
        self.pubsub.subscribe("t", CallbackSubscriber(got.append))
        self.pubsub.broadcast("t", "e", {"k": "v"})
        self.assertEqual(got, [Broadcast("t", "e", {"k": "v"})])

    def test_otherTopicsUntouched(self) -> None:
        """Only the broadcast's topic is dispatched to."""
        got: list[Broadcast] = []
        self.pubsub.subscribe("a", CallbackSubscriber(got.append))
        self.pubsub.broadcast("b", "e", {})
        self.assertEqual(got, [])

    def test_broadcastFromSkipsSender(self) -> None:
        """broadcast_from and local_broadcast_from skip the sender only."""
        a, b = FastlaneSubscriber(V2JSONSerializer()), FastlaneSubscriber(V2JSONSerializer())
        self.pubsub.subscribe("t", a)
        self.pubsub.subscribe("t", b)
        self.pubsub.broadcast_from(a, "t", "e", {})
        self.pubsub.local_broadcast_from(b, "t", "f", {})
        self.assertEqual([f.data for f in a.fastlane.frames], [b'[null,null,"t","f",{}]'])
        self.assertEqual([f.data for f in b.fastlane.frames], [b'[null,null,"t","e",{}]'])

    def test_subscribeTwiceIsOnce(self) -> None:
        """Subscribing twice delivers once; unsubscribing removes the subscription."""
        got: list[Broadcast] = []
        sub = CallbackSubscriber(got.append)
        self.pubsub.subscribe("t", sub)
        self.pubsub.subscribe("t", CallbackSubscriber(got.append))
        self.pubsub.broadcast("t", "e", {})
        self.assertEqual(len(got), 1)
        self.pubsub.unsubscribe("t", sub)
        self.pubsub.unsubscribe("t", sub)
        self.pubsub.broadcast("t", "e", {})
        self.assertEqual(len(got), 1)
        self.assertEqual(self.pubsub.subscribers("t"), ())

    def test_subscribersInOrder(self) -> None:
        """subscribers() lists subscribers in subscription order."""
        subs = [CallbackSubscriber(lambda b, i=i: i) for i in range(3)]
        for s in subs:
            self.pubsub.subscribe("t", s)
        self.assertEqual(self.pubsub.subscribers("t"), tuple(subs))

    def test_unsubscribeDuringDispatch(self) -> None:
        """A subscriber that unsubscribes others during dispatch does not break the loop."""
        order: list[str] = []
        third = CallbackSubscriber(lambda b: order.append("third"))

        def first(b: Broadcast) -> None:
            order.append("first")
            self.pubsub.unsubscribe("t", first_sub)
            self.pubsub.unsubscribe("t", third)

        first_sub = CallbackSubscriber(first)
        self.pubsub.subscribe("t", first_sub)
        self.pubsub.subscribe("t", CallbackSubscriber(lambda b: order.append("second")))
        self.pubsub.subscribe("t", third)
        self.pubsub.broadcast("t", "e", {})
        # The dispatch works on a snapshot taken when it started.
        self.assertEqual(order, ["first", "second", "third"])
        del order[:]
        self.pubsub.broadcast("t", "e", {})
        self.assertEqual(order, ["second"])

    def test_subscribeDuringDispatch(self) -> None:
        """A subscriber added during dispatch gets the next broadcast, not the current one."""
        late: list[Broadcast] = []

        def adder(b: Broadcast) -> None:
            self.pubsub.subscribe("t", CallbackSubscriber(late.append))

        self.pubsub.subscribe("t", CallbackSubscriber(adder))
        self.pubsub.broadcast("t", "one", {})
        self.assertEqual(late, [])
        self.pubsub.broadcast("t", "two", {})
        self.assertEqual([b.event for b in late], ["two"])

    def test_nestedBroadcast(self) -> None:
        """A subscriber may broadcast during dispatch."""
        got: list[str] = []

        def relay(b: Broadcast) -> None:
            got.append(b.event)
            if b.event == "ping":
                self.pubsub.broadcast("t", "pong", {})

        self.pubsub.subscribe("t", CallbackSubscriber(relay))
        self.pubsub.broadcast("t", "ping", {})
        self.assertEqual(got, ["ping", "pong"])

    def test_failingSubscriberLogged(self) -> None:
        """A subscriber that raises is logged, and the others still get the broadcast."""
        got: list[Broadcast] = []
        self.pubsub.subscribe("t", CallbackSubscriber(lambda b: 1 / 0))
        self.pubsub.subscribe("t", CallbackSubscriber(got.append))
        self.pubsub.broadcast("t", "e", {})
        self.assertEqual(len(got), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_payloadMustBeDictOrBytes(self) -> None:
        """A payload that is neither a dict nor bytes is a TypeError, before anything is sent."""
        adapter = RecordingAdapter()
        pubsub = PubSub(adapter=adapter)
        got: list[Broadcast] = []
        pubsub.subscribe("t", CallbackSubscriber(got.append))
        for payload in ([1], "text", None, 3):
            self.assertRaises(TypeError, pubsub.broadcast, "t", "e", payload)
            self.assertRaises(TypeError, pubsub.local_broadcast, "t", "e", payload)
        self.assertEqual((got, adapter.shipped), ([], []))
        pubsub.broadcast("t", "e", b"\x01")
        self.assertEqual(got, [Broadcast("t", "e", b"\x01")])

    def test_adapterGetsBroadcastOnly(self) -> None:
        """The adapter ships broadcast and broadcast_from, not the local variants."""
        adapter = RecordingAdapter()
        pubsub = PubSub("a@h", adapter)
        pubsub.broadcast("t", "one", {})
        pubsub.broadcast_from(object(), "t", "two", {})  # type: ignore[arg-type]
        pubsub.local_broadcast("t", "three", {})
        pubsub.local_broadcast_from(None, "t", "four", {})
        self.assertEqual(adapter.shipped, [Broadcast("t", "one", {}), Broadcast("t", "two", {})])

    def test_closedFastlaneDropsFrames(self) -> None:
        """A fastlane subscriber whose connection closed receives nothing more."""
        sub = FastlaneSubscriber(V2JSONSerializer())
        self.pubsub.subscribe("t", sub)
        sub.fastlane.close(1000)
        self.pubsub.broadcast("t", "e", {})
        self.assertEqual(sub.fastlane.frames, [])



class RaisingConnection(FakeConnection):
    """A connection whose send_frame raises."""

    def send_frame(self, frame: Frame) -> None:
        raise RuntimeError("broken transport")


class DispatchFailureTests(SynchronousTestCase):
    """
    Tests for broadcasts that a serializer cannot encode, and for
    subscribers that fail: the rest of the dispatch goes on.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pubsub = PubSub("node@host", clock=self.clock)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self, containing: str) -> list[str]:
        return [t for t in map(formatEvent, self.events) if containing in t]

    def test_binaryToV1Dropped(self) -> None:
        """
        A binary broadcast is dropped for V1 fastlane subscribers (V1 cannot
        carry it), with one log line, and reaches V2 and intercepting ones.
        """
        v1 = CountingSerializer(V1JSONSerializer())
        v1subs = [FastlaneSubscriber(v1) for _ in range(3)]
        v2sub = FastlaneSubscriber(V2JSONSerializer())
        intercepting = FastlaneSubscriber(v1, frozenset({"bin"}))
        got: list[Broadcast] = []
        for s in [v1subs[0], v2sub, v1subs[1], intercepting, CallbackSubscriber(got.append), v1subs[2]]:
            self.pubsub.subscribe("t", s)
        self.pubsub.broadcast("t", "bin", b"\x01")
        self.assertEqual([len(s.fastlane.frames) for s in v1subs], [0, 0, 0])
        self.assertEqual(len(v1.calls), 1)  # tried once, not once per subscriber
        self.assertEqual([f.data for f in v2sub.fastlane.frames], [b"\x02\x01\x03tbin\x01"])
        self.assertEqual(intercepting.received, [Broadcast("t", "bin", b"\x01")])
        self.assertEqual(got, [Broadcast("t", "bin", b"\x01")])
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(
            self.texts("cannot encode"),
            ["CountingSerializer cannot encode a broadcast 'bin' on 't'; dropped for its fastlane subscribers"],
        )

    def test_unencodablePayloadDropped(self) -> None:
        """A broadcast whose payload is no JSON is dropped for every fastlane subscriber; the next one goes out."""
        sub = FastlaneSubscriber(V2JSONSerializer())
        self.pubsub.subscribe("t", sub)
        self.pubsub.broadcast("t", "e", {"x": object()})
        self.pubsub.broadcast("t", "e", {"x": 1})
        self.assertEqual([f.data for f in sub.fastlane.frames], [b'[null,null,"t","e",{"x":1}]'])
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_failingConnection(self) -> None:
        """A fastlane connection that raises is logged; the subscribers after it still get the frame."""
        broken = FastlaneSubscriber(V2JSONSerializer())
        broken.fastlane = RaisingConnection()
        after = FastlaneSubscriber(V2JSONSerializer())
        self.pubsub.subscribe("t", broken)
        self.pubsub.subscribe("t", after)
        self.pubsub.broadcast("t", "e", {})
        self.assertEqual(len(after.fastlane.frames), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failureLogRateLimited(self) -> None:
        """Repeated encode failures are logged 10 times per 10 s, then counted."""
        self.pubsub.subscribe("t", FastlaneSubscriber(V1JSONSerializer()))
        for _ in range(25):
            self.pubsub.broadcast("t", "bin", b"x")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 10)
        self.clock.advance(10)
        self.pubsub.broadcast("t", "bin", b"x")
        self.flushLoggedErrors(TypeError)
        self.assertIn("(suppressed 15 similar messages)", self.texts("cannot encode")[-1])

    def test_longTopicTruncated(self) -> None:
        """The topic and event in the log line are cut to 200 characters."""
        self.pubsub.subscribe("t" * 1000, CallbackSubscriber(lambda b: 1 / 0))
        self.pubsub.broadcast("t" * 1000, "e" * 1000, {})
        self.flushLoggedErrors(ZeroDivisionError)
        [line] = self.texts("failed on")
        self.assertIn("… (1000 chars)", line)
        self.assertLess(len(line), 700)
