# -*- test-case-name: tests.test_serializers -*-
"""
The values that travel between a client, its connection and its channels.

These mirror ``Phoenix.Socket.Message``, ``Phoenix.Socket.Reply`` and
``Phoenix.Socket.Broadcast``.  They are immutable named tuples: cheap to build
on the frame path, easy to compare in tests.

A payload is any JSON value, or :class:`bytes` for a binary payload (only the
V2 serializer can carry those).
"""

from __future__ import annotations

from typing import Any, NamedTuple

# The wire vocabulary, defined once.
PHX_JOIN = "phx_join"
PHX_LEAVE = "phx_leave"
PHX_REPLY = "phx_reply"
PHX_CLOSE = "phx_close"
PHX_ERROR = "phx_error"
HEARTBEAT = "heartbeat"
HEARTBEAT_TOPIC = "phoenix"
DISCONNECT = "disconnect"


class Message(NamedTuple):
    """
    A message from a client, or a push from a channel to its client.

    ``ref`` and ``join_ref`` are strings or ``None`` (the serializers
    refuse anything else, and strings over 64 bytes), and are echoed
    exactly as the client sent them.  ``topic`` and ``event`` are strings of
    at most 255 bytes.
    """

    topic: str
    event: str
    payload: Any
    ref: Any = None
    join_ref: Any = None


class Reply(NamedTuple):
    """
    A ``phx_reply`` to the client message whose ref was ``ref``.
    """

    topic: str
    status: str
    payload: Any
    ref: Any = None
    join_ref: Any = None


class Broadcast(NamedTuple):
    """
    A message for every subscriber of ``topic``.
    """

    topic: str
    event: str
    payload: Any
