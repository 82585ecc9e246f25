# -*- test-case-name: tests.test_client -*-
"""
phoenix.js's ``Connection``: one transport of a
:class:`~twisted_phoenix.client.socket.Socket` and what the socket knows
about it.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable

from ._transport import CLOSED, CONNECTING, OPEN, CloseEvent, Transport

if TYPE_CHECKING:
    from .channel import Channel
    from .socket import Socket

__all__ = ["CLOSE_WAIT", "Connection"]

#: phoenix.js polls a closing transport at 150, 300, 450 and 600 ms before
#: giving up on it; the wait here ends on the close event, or after as long.
CLOSE_WAIT = 0.15 + 0.30 + 0.45 + 0.60


class Connection:
    """
    phoenix.js's ``Connection``: one transport and what the socket knows
    about it; events of a replaced connection no longer reach the socket.
    """

    def __init__(self, socket: Socket) -> None:
        self.socket = socket
        self.transport: Transport = None  # type: ignore[assignment]
        #: channel → the join_ref of the join sent over this connection.
        self.joins: weakref.WeakKeyDictionary[Channel, Any] = weakref.WeakKeyDictionary()
        self.pings: dict[str, Callable[[], Any]] = {}
        self.closing = False
        self.ended = False
        self.channels_errored = False
        self.close_handled = False
        self._errors_muted = False
        self._closed = False
        self._close_waiters: list[Callable[[], Any]] = []

    # -- TransportHandler -------------------------------------------------------------------

    def transport_open(self) -> None:
        if self.is_current():
            self.socket._on_conn_open()

    def transport_error(self, error: BaseException) -> None:
        if self.is_current() and not self._errors_muted:
            self.socket._on_conn_error(error)

    def transport_message(self, data: bytes, binary: bool) -> None:
        if self.is_current():
            self.socket._on_conn_message(data, binary)

    def transport_close(self, event: CloseEvent) -> None:
        self._closed = True
        try:
            if self.is_current() and not self.close_handled:
                self.close_handled = True
                self.socket._on_conn_close(event)
        finally:
            waiters, self._close_waiters = self._close_waiters, []
            for waiter in waiters:
                waiter()

    # -- state ------------------------------------------------------------------------------

    def is_current(self) -> bool:
        return self.socket.connection is self

    def is_open(self) -> bool:
        return self.transport.ready_state == OPEN

    def is_connecting(self) -> bool:
        return self.transport.ready_state == CONNECTING

    def carried(self, channel: Channel, join_ref: Any = None) -> bool:
        """Whether ``channel``'s current join was sent over this connection."""
        if join_ref is None:
            join_ref = channel.join_ref()
        return channel in self.joins and self.joins[channel] == join_ref

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the transport; its close event then only confirms our close."""
        self.closing = True
        self._errors_muted = True
        self.transport.close(code, reason or "")

    def wait_closed(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` once the transport closed, or after :data:`CLOSE_WAIT` seconds."""
        if self._closed or self.transport.ready_state == CLOSED:
            callback()
            return
        done = []

        def once() -> None:
            if not done:
                done.append(True)
                if call.active():
                    call.cancel()
                callback()

        call = self.socket.reactor.callLater(CLOSE_WAIT, once)
        self._close_waiters.append(once)
