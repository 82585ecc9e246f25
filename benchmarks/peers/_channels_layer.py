"""
The Redis channel layer of the Channels peer, with a blocking connection pool.

redis-py 6 and later give ``channels_redis``' plain ``ConnectionPool`` a
limit of 100 connections and raise ``MaxConnectionsError`` past it, so 5,000
clients joining at once (5,000 concurrent ``group_add`` calls) fail by the
hundreds.  A deployment would make callers wait for a free connection
instead: ``BlockingConnectionPool`` with the same 100 connections and no
timeout.

redis-py 8 also gives every connection a 5 s socket timeout (none before):
with 5,000 consumers on one event loop, a busy loop reads a reply later
than that, the read raises ``TimeoutError`` inside a consumer, and a fan-out
to 5,000 clients stalls (no delivery at all in one run).  The pool's
connections have no socket timeout, as before redis-py 6.

Nothing else differs from ``channels_redis.core.RedisChannelLayer``.
"""

from __future__ import annotations

from typing import Any

from channels_redis.core import RedisChannelLayer
from redis.asyncio import BlockingConnectionPool

POOL_SIZE = 100


class BlockingPoolLayer(RedisChannelLayer):
    def create_pool(self, index: int) -> Any:
        host = {"socket_timeout": None, **self.hosts[index]}
        return BlockingConnectionPool(max_connections=POOL_SIZE, timeout=None, **host)
