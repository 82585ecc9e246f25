"""
A node of the cluster benchmark: ``benchmarks/server_phoenix.py``'s server
(the demo app's ``/socket``, topic ``ping`` → ``PingChannel``, idle timeout
1 hour) plus, with ``--name``, a :class:`twisted_phoenix.cluster.Node`
sharing the endpoint's PubSub.

``python -m benchmarks.server_cluster [--name N --cookie C --mapper-port P
[--connect OTHER]...]`` listens on a free loopback port, prints
``PORT <n>`` and takes the commands of :mod:`benchmarks._control` on stdin,
and one more:

``nodes``
    ``NODES <name>,<name>,...``: the peers this node is linked to (an empty
    list without ``--name``).
``nodelay``
    set ``TCP_NODELAY`` on this node's end of every link (an experiment: the
    library leaves Nagle's algorithm on); ``OK <links>``.

Without ``--name`` it is the one-node server: no Node, no adapter, exactly
what ``server_phoenix`` serves.  A client's push of ``broadcast`` makes its
PingChannel call ``Channel.broadcast``: dispatched here, and with a Node
sent once over every cluster link and dispatched by each peer.
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import stdio

from benchmarks._control import BACKLOG, Control, raise_nofile, start_logging


class ClusterControl(Control):
    """The harness's commands, plus ``nodes``."""

    def __init__(self, reactor: Any, node: Any) -> None:
        super().__init__(reactor)
        self.node = node

    def lineReceived(self, line: bytes) -> None:
        if line.strip() == b"nodes":
            peers = [] if self.node is None else self.node.list()
            self.reply("NODES " + ",".join(peers))
            return
        if line.strip() == b"nodelay":
            # An experiment, not what the library does: Nagle off on this
            # node's end of every link.
            links = [] if self.node is None else list(self.node.links.values())
            for link in links:
                link.remote.broker.transport.setTcpNoDelay(True)
            self.reply(f"OK {len(links)}")
            return
        super().lineReceived(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_cluster")
    parser.add_argument("--name", help="this node's name (name@127.0.0.1); none: a lone server")
    parser.add_argument("--cookie", default="benchmark-cookie")
    parser.add_argument("--mapper-port", type=int, default=0, help="the port mapper's port")
    parser.add_argument("--connect", action="append", default=[], help="a node to link to; repeatable")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.web.server import Site

    from twisted_phoenix.cluster import Node
    from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint, UserSocket
    from twisted_phoenix.pubsub import PubSub

    class BenchSocket(UserSocket):
        timeout = 3600.0

    class BenchEndpoint(HelloSocketsEndpoint):
        sockets = {**HelloSocketsEndpoint.sockets, "/socket": BenchSocket}

    raise_nofile()
    start_logging()
    name = args.name or "nonode@nohost"
    pubsub = PubSub(name)
    endpoint = BenchEndpoint(reactor, node_name=name, secret_key_base="x" * 64, pubsub=pubsub)
    node = None
    if args.name:
        if not args.mapper_port:
            parser.error("--name needs --mapper-port")
        node = Node(
            reactor,
            args.name,
            cookie=args.cookie,
            pubsub=pubsub,
            mapper_port=args.mapper_port,
            connect=args.connect,
        )

    port = reactor.listenTCP(0, Site(endpoint.resource()), backlog=BACKLOG, interface="127.0.0.1")
    control = ClusterControl(reactor, node)
    stdio.StandardIO(control, reactor=reactor)

    def listening(_: Any = None) -> None:
        control.reply(f"PORT {port.getHost().port}")

    def failed(failure: Any) -> None:
        control.reply(f"ERROR the node did not start: {failure.getErrorMessage()}")
        reactor.stop()

    if node is None:
        listening()
    else:
        # PORT once the node listens and holds its name in the port mapper,
        # so that the next node started can find it.
        node.start().addCallbacks(listening, failed)
        reactor.addSystemEventTrigger("before", "shutdown", node.stop)
    reactor.run()


if __name__ == "__main__":
    main()
