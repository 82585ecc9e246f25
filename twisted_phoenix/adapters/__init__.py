"""
PubSub adapters other than the Perspective Broker mesh of
:mod:`twisted_phoenix.cluster`.

* :mod:`~twisted_phoenix.adapters.redis`: nodes linked through a Redis
  server's pub/sub, each subscribed only to the topics it has subscribers
  for (``twistd phoenix --pubsub redis://...``).
* :mod:`~twisted_phoenix.adapters.interest` and
  :mod:`~twisted_phoenix.adapters.sequence`: the parts of it that do not
  depend on Redis: which topics a node wants from the others, and the
  sequence numbers that tell a receiver what it missed.

This package imports nothing heavy: the Redis client is only imported with
:mod:`twisted_phoenix.adapters.redis`.
"""
