"""
Phoenix Channels for Python, on Twisted and Autobahn.

The public surface: :class:`Endpoint` mounts :class:`Socket` classes, which
route topics to :class:`Channel` classes.  See the documentation in ``docs/``.
"""

from .channel import Channel, Result, SocketRef, Stop, error, ok
from .endpoint import Endpoint
from .message import Broadcast, Message, Reply
from .pubsub import PubSub
from .socket import ConnectRefused, Socket

__all__ = [
    "Broadcast",
    "Channel",
    "ConnectRefused",
    "Endpoint",
    "Message",
    "PubSub",
    "Reply",
    "Result",
    "Socket",
    "SocketRef",
    "Stop",
    "error",
    "ok",
]

__version__ = "0.1.0"
