# -*- test-case-name: tests.test_client -*-
"""
phoenix.js's ``Push``: one message to the server and the hooks waiting for
its reply, plus the :class:`~twisted.internet.defer.Deferred` view of it
that :class:`~twisted_phoenix.client.channel.Channel` returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..message import Message

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["Push", "PushTimeout", "ReplyError"]

log = Logger()

OK, ERROR, TIMEOUT = "ok", "error", "timeout"


class ReplyError(Exception):
    """
    The server replied with status ``error``.

    :ivar response: the reply's response (for Phoenix's ``{:error, %{reason: r}}``,
        ``{"reason": r}``).
    :ivar topic: the channel's topic.
    :ivar event: the event that was pushed (``phx_join`` for a join).
    """

    def __init__(self, response: Any, topic: str, event: str) -> None:
        super().__init__(response, topic, event)
        self.response = response
        self.topic = topic
        self.event = event

    def __str__(self) -> str:
        return f"{self.event} on {self.topic} failed: {self.response!r}"


class PushTimeout(defer.TimeoutError):
    """
    No reply came within the push's timeout.

    :ivar topic: the channel's topic.
    :ivar event: the event that was pushed.
    :ivar timeout: the timeout, in seconds.
    """

    def __init__(self, topic: str, event: str, timeout: float) -> None:
        super().__init__(topic, event, timeout)
        self.topic = topic
        self.event = event
        self.timeout = timeout

    def __str__(self) -> str:
        return f"no reply to {self.event} on {self.topic} within {self.timeout} s"


class Push:
    """
    A message for the server and its reply hooks.

    :meth:`receive` registers a callback for a status (``"ok"``, ``"error"``
    or ``"timeout"``), called with the reply's response; a hook registered
    after that status was received is called at once.  A channel's join push
    is sent again on every rejoin, and its hooks run again each time.

    :ivar ref: the ref of the last send (``None`` before the first).
    """

    def __init__(self, channel: Channel, event: str, payload: Callable[[], Any], timeout: float) -> None:
        self.channel = channel
        self.event = event
        self.payload = payload
        self.timeout = timeout
        self.received_resp: Any = None
        self.ref: str | None = None
        self.ref_event: str | None = None
        self.rec_hooks: list[tuple[str, Callable[[Any], Any]]] = []
        self.sent = False
        self._timeout_call: IDelayedCall | None = None
        self._failure_hooks: list[Callable[[Failure], Any]] = []

    def resend(self, timeout: float) -> None:
        """Send again, with a new ref, forgetting the previous reply."""
        self.timeout = timeout
        self.reset()
        self.send()

    def send(self) -> None:
        """Send (or buffer until the socket is open) and start the timeout."""
        if self.has_received(TIMEOUT):
            return
        self.start_timeout()
        self.sent = True
        channel = self.channel
        message = Message(channel.topic, self.event, self.payload(), self.ref, channel.join_ref())
        try:
            channel.socket.push(message, channel)
        except Exception:
            # The payload cannot be encoded: no reply will ever come.
            self.cancel_ref_event()
            self.cancel_timeout()
            self._fail(Failure())

    def receive(self, status: str, callback: Callable[[Any], Any]) -> Push:
        """Call ``callback(response)`` when a reply with ``status`` arrives."""
        if self.has_received(status):
            callback(self.received_resp.get("response"))
        self.rec_hooks.append((status, callback))
        return self

    def deferred(self) -> defer.Deferred[Any]:
        """
        A Deferred for the next outcome: it fires with the response of an
        ``ok`` reply, or fails with :class:`ReplyError`, :class:`PushTimeout`
        or the exception that kept the message from being encoded.
        """
        d: defer.Deferred[Any] = defer.Deferred()
        topic = self.channel.topic

        def ok(response: Any) -> None:
            if not d.called:
                d.callback(response)

        def error(response: Any) -> None:
            if not d.called:
                d.errback(ReplyError(response, topic, self.event))

        def timeout(_: Any) -> None:
            if not d.called:
                d.errback(PushTimeout(topic, self.event, self.timeout))

        def failed(failure: Failure) -> None:
            if not d.called:
                d.errback(failure)

        self.receive(OK, ok).receive(ERROR, error).receive(TIMEOUT, timeout)
        self._failure_hooks.append(failed)
        return d

    # -- private ----------------------------------------------------------------------------

    def reset(self) -> None:
        self.cancel_ref_event()
        self.ref = None
        self.ref_event = None
        self.received_resp = None
        self.sent = False

    def _match_receive(self, payload: Any) -> None:
        status = payload.get("status")
        response = payload.get("response")
        for hook_status, callback in [h for h in self.rec_hooks if h[0] == status]:
            self.channel._call(callback, response)

    def cancel_ref_event(self) -> None:
        if self.ref_event is not None:
            self.channel.off(self.ref_event)

    def cancel_timeout(self) -> None:
        call, self._timeout_call = self._timeout_call, None
        if call is not None and call.active():
            call.cancel()

    def start_timeout(self) -> None:
        self.cancel_timeout()
        self.cancel_ref_event()
        self.ref = self.channel.socket.make_ref()
        self.ref_event = self.channel.reply_event_name(self.ref)

        def replied(payload: Any, ref: Any = None, join_ref: Any = None) -> None:
            self.cancel_ref_event()
            self.cancel_timeout()
            if not isinstance(payload, dict):
                payload = {"status": None, "response": payload}
            self.received_resp = payload
            self._match_receive(payload)

        self.channel._on(self.ref_event, replied, raw=True)
        self._timeout_call = self.channel.socket.reactor.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timeout_call = None
        self.trigger(TIMEOUT, {})

    def has_received(self, status: str) -> bool:
        return self.received_resp is not None and self.received_resp.get("status") == status

    def trigger(self, status: str, response: Any) -> None:
        """Act as if a reply with ``status`` and ``response`` arrived."""
        if self.ref_event is not None:
            self.channel.trigger(self.ref_event, {"status": status, "response": response})

    def _fail(self, failure: Failure) -> None:
        hooks, self._failure_hooks = self._failure_hooks, []
        if not hooks:
            log.failure("Could not send {event} on {topic}", failure, event=self.event, topic=self.channel.topic)
        for hook in hooks:
            hook(failure)
