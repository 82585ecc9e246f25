"""
The server under test: twisted_phoenix serving the demo app.

``python -m benchmarks.server_phoenix`` serves ``/socket`` of
:mod:`twisted_phoenix.examples.hello_sockets` (topic ``ping`` →
``PingChannel``) through ``Site(endpoint.resource())`` on a free loopback
port and prints ``PORT <n>``; see :mod:`benchmarks._control` for the
commands it takes on stdin.

A client's push of event ``broadcast`` makes its PingChannel call
``Channel.broadcast``, which goes through ``PubSub.dispatch`` and the
fastlane to every joined client: the full channel stack.

The one change to the demo app: the socket's idle timeout is raised from
60 s to 1 hour.  phoenix.js heartbeats every 30 s; the load generator does
not, and a long run must not lose its clients.
"""

from __future__ import annotations

from benchmarks._control import serve


def main() -> None:
    from twisted.internet import reactor
    from twisted.web.server import Site

    from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint, UserSocket

    class BenchSocket(UserSocket):
        timeout = 3600.0

    class BenchEndpoint(HelloSocketsEndpoint):
        sockets = {**HelloSocketsEndpoint.sockets, "/socket": BenchSocket}

    endpoint = BenchEndpoint(reactor, secret_key_base="x" * 64)
    serve(reactor, Site(endpoint.resource()))


if __name__ == "__main__":
    main()
