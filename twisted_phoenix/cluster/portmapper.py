# -*- test-case-name: tests.test_cluster_portmapper -*-
"""
A port mapper, like Erlang's ``epmd``: on each host, node names to the ports
their cluster links listen on, so ``Node.connect("server@127.0.0.1")`` works
with a bare name.

There is no separate daemon to start: the first node on a host listens on
the mapper port (127.0.0.1 only) and serves the others.  Every node keeps a
connection to the mapper open while it is registered; when the serving node
goes away, the others race to serve in its place and register again.

Every local user can connect to 127.0.0.1, and any of them can listen on
the mapper port once it is free, so both sides prove the cluster cookie
before anything else, each over both sides' nonces (the mapper first):

.. code-block:: none

    client: HELLO <client nonce>
    mapper: HELLO <mapper nonce> <mapper proof>
    client: PROOF <client proof>           (a wrong one: DENIED, and closed)

(:func:`~twisted_phoenix.cluster.auth.mapper_proof`).  A mapper that cannot
prove the cookie (another cluster's, or an impostor's) is refused: the node
does not register with it nor believe its answers.  Then one request per
line, each request and each answer followed by its MAC
(:func:`~twisted_phoenix.cluster.auth.line_mac`, keyed by the session key of
both nonces): ``REGISTER name port`` (``OK``; ``TAKEN`` when a live
connection holds the name; ``REFUSED`` for a second name on one
connection: a name is bound to the connection that registered it, and freed
when it closes), ``LOOKUP name`` (``PORT n`` or ``NONE``) and ``NAMES``
(``NAMES name=port ...``).

A connection has ``login_timeout`` seconds to prove the cookie, and the
mapper takes at most ``max_pending`` connections that have not yet at once
(the link port's limits, :mod:`~twisted_phoenix.cluster.broker`).
"""

from __future__ import annotations

import errno
import os
import random
import re
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import LineOnlyReceiver

from .auth import line_mac, mapper_proof, mapper_session_key, new_nonce, same
from .broker import LOGIN_TIMEOUT, MAX_PENDING, Refused, Throttled

__all__ = ["DEFAULT_PORT", "MapperClient", "MapperError", "PortMapper", "mapper_port"]

#: Erlang's epmd uses 4369; one above, so both can run on one machine.
DEFAULT_PORT = 4370

log = Logger()

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_NONCE = re.compile(r"[0-9A-Za-z]{16,64}")
_PORT = re.compile(r"[0-9]{1,5}")


def mapper_port(environ: Any = os.environ) -> int:
    """The mapper port: ``PHOENIX_EPMD_PORT``, else :data:`DEFAULT_PORT`."""
    return int(environ.get("PHOENIX_EPMD_PORT") or DEFAULT_PORT)


class MapperError(RuntimeError):
    """Whatever listens on the mapper port did not prove the cluster cookie (or broke the protocol)."""


class _Untrusted(Exception):
    """The mapper's proof, or an answer's MAC, is wrong (MapperClient words the error)."""


class _MapperServerProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1024

    def __init__(self, mapper: PortMapper, address: str) -> None:
        self.mapper = mapper
        self.address = address
        self.registered: str | None = None
        self.state = "hello"
        self._client_nonce = ""
        self._server_nonce = ""
        self._key = b""
        self._requests = 0
        self._answers = 0
        self._deadline: Any = None

    def connectionMade(self) -> None:
        self.mapper.connections.add(self)
        self.mapper.pending.add(self)
        self._deadline = self.mapper.reactor.callLater(self.mapper.login_timeout, self._expired)

    def _expired(self) -> None:
        self.mapper.throttle.emit(
            LogLevel.warn, "deadline",
            "Port mapper: dropped a connection from {address}: it did not prove the cookie within {timeout:g} s",
            address=self.address, timeout=self.mapper.login_timeout,
        )
        self.transport.abortConnection()

    def _authenticated(self) -> None:
        self.state = "ready"
        self.mapper.pending.discard(self)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if self.state == "hello":
            words = text.split(" ")
            if len(words) != 2 or words[0] != "HELLO" or not _NONCE.fullmatch(words[1]):
                return self._bad(line)
            self._client_nonce, self._server_nonce = words[1], new_nonce()
            cookie = self.mapper.cookie
            self.state = "proof"
            self.sendLine(
                f"HELLO {self._server_nonce} "
                f"{mapper_proof(cookie, 'server', self._client_nonce, self._server_nonce)}".encode()
            )
        elif self.state == "proof":
            words = text.split(" ")
            cookie = self.mapper.cookie
            if len(words) != 2 or words[0] != "PROOF" or not same(
                words[1], mapper_proof(cookie, "client", self._client_nonce, self._server_nonce)
            ):
                self.mapper.throttle.emit(
                    LogLevel.warn, "proof",
                    "Port mapper: refused a client from {address}: it does not know the cookie",
                    address=self.address,
                )
                self.state = "denied"
                self.sendLine(b"DENIED")
                self.transport.loseConnection()
                return
            self._key = mapper_session_key(cookie, self._client_nonce, self._server_nonce)
            self._authenticated()
        elif self.state == "ready":
            request, _, mac = text.rpartition(" ")
            if not same(mac, line_mac(self._key, "request", self._requests, request)):
                log.warn("Port mapper: a request from {address} with a wrong MAC: closing", address=self.address)
                self.transport.abortConnection()
                return
            self._requests += 1
            answer = self._answer(request)
            if answer is None:
                log.warn("Port mapper: bad request {line!r}", line=request[:80])
                self.transport.loseConnection()
                return
            self.sendLine(f"{answer} {line_mac(self._key, 'answer', self._answers, answer)}".encode())
            self._answers += 1

    def _answer(self, request: str) -> str | None:
        words = request.split(" ")
        mapper = self.mapper
        if len(words) == 3 and words[0] == "REGISTER" and _NAME.fullmatch(words[1]) and _PORT.fullmatch(words[2]) \
                and 0 < int(words[2]) < 65536:
            return mapper._register(words[1], int(words[2]), self)
        if len(words) == 2 and words[0] == "LOOKUP" and _NAME.fullmatch(words[1]):
            port = mapper.ports.get(words[1])
            return "NONE" if port is None else f"PORT {port}"
        if words == ["NAMES"]:
            return " ".join(["NAMES", *(f"{n}={p}" for n, p in sorted(mapper.ports.items()))])
        return None

    def _bad(self, line: bytes) -> None:
        self.state = "closed"
        self.mapper.throttle.emit(
            LogLevel.warn, "bad", "Port mapper: bad request {line!r} from {address}: closing",
            line=line[:80], address=self.address,
        )
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        mapper = self.mapper
        mapper.connections.discard(self)
        mapper.pending.discard(self)
        if self.state == "proof":
            mapper.throttle.emit(
                LogLevel.info, "left",
                "Port mapper: a client from {address} left before proving the cookie "
                "(a node of another cluster, with another cookie, on this port?)",
                address=self.address,
            )
        if self.registered is not None:
            mapper._unregister(self.registered, self)
        if not mapper.connections:
            waiters, mapper._idle = mapper._idle, []
            for d in waiters:
                d.callback(None)


class PortMapper(Factory):
    """
    The mapper's server side: who is registered, on which port.

    :param cookie: the cluster cookie its clients must prove, as it does.
    :param reactor: for the deadlines.
    :param login_timeout: seconds a connection has to prove the cookie.
    :param max_pending: connections that have not proved it yet, at once;
        more are closed at once.
    """

    noisy = False

    def __init__(
        self, cookie: str, reactor: Any, *, login_timeout: float = LOGIN_TIMEOUT, max_pending: int = MAX_PENDING
    ) -> None:
        self.cookie = cookie
        self.reactor = reactor
        self.login_timeout = login_timeout
        self.max_pending = max_pending
        self.ports: dict[str, int] = {}
        self._owners: dict[str, Any] = {}
        self.connections: set[_MapperServerProtocol] = set()
        self.pending: set[_MapperServerProtocol] = set()
        self.throttle = Throttled(reactor)
        self._idle: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        address = f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}"
        if len(self.pending) >= self.max_pending:
            self.throttle.emit(
                LogLevel.warn, "pending",
                "Port mapper: refused a connection from {address}: {n} connections are already waiting "
                "to prove the cookie (--dist-max-pending)", address=address, n=len(self.pending),
            )
            return Refused()
        return _MapperServerProtocol(self, address)

    def disconnect_all(self) -> defer.Deferred[None]:
        """Drop every connection, so their nodes find the next mapper; fires once all are gone."""
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        for connection in list(self.connections):
            connection.transport.abortConnection()
        return d

    def _register(self, name: str, port: int, owner: Any) -> str:
        if owner.registered is not None:
            return "REFUSED"
        if name in self._owners:
            return "TAKEN"
        self.ports[name] = port
        self._owners[name] = owner
        owner.registered = name
        return "OK"

    def _unregister(self, name: str, owner: Any) -> None:
        if self._owners.get(name) is owner:
            del self._owners[name], self.ports[name]


class _MapperClientProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 256 * 1024

    def __init__(self) -> None:
        #: What each line we are waiting for answers: ("hello" or "request", Deferred).
        self.answers: list[tuple[str, defer.Deferred[str]]] = []
        self.lost: defer.Deferred[None] = defer.Deferred()
        self._key = b""
        self._requests = 0
        self._answers = 0

    def handshake(self, cookie: str) -> defer.Deferred[None]:
        """Prove the cookie both ways; fails with :class:`_Untrusted` if the mapper cannot."""
        client_nonce = new_nonce()
        d: defer.Deferred[str] = defer.Deferred()
        self.answers.append(("hello", d))
        self.sendLine(f"HELLO {client_nonce}".encode())

        def answered(line: str) -> None:
            words = line.split(" ")
            if len(words) != 3 or words[0] != "HELLO" or not _NONCE.fullmatch(words[1]) or not same(
                words[2], mapper_proof(cookie, "server", client_nonce, words[1])
            ):
                raise _Untrusted("no proof of the cookie")
            server_nonce = words[1]
            self.sendLine(f"PROOF {mapper_proof(cookie, 'client', client_nonce, server_nonce)}".encode())
            self._key = mapper_session_key(cookie, client_nonce, server_nonce)

        return d.addCallback(answered)

    def request(self, line: str) -> defer.Deferred[str]:
        """
        Send one request (after :meth:`handshake`); fires with its answer,
        MAC checked.  Requests may overlap: answers come in order.
        """
        d: defer.Deferred[str] = defer.Deferred()
        self.answers.append(("request", d))
        self.sendLine(f"{line} {line_mac(self._key, 'request', self._requests, line)}".encode())
        self._requests += 1
        return d

    def lineReceived(self, line: bytes) -> None:
        if not self.answers:
            self.transport.abortConnection()  # nobody asked
            return
        kind, d = self.answers.pop(0)
        text = line.decode("utf-8", "replace")
        if kind == "request":
            # Checked here, not in d's callbacks: d may have timed out, and
            # the count of answers must stay right for the next ones.
            answer, _, mac = text.rpartition(" ")
            if text == "DENIED" or not same(mac, line_mac(self._key, "answer", self._answers, answer)):
                why = "the mapper refused our proof of the cookie" if text == "DENIED" else "an answer with a wrong MAC"
                if not d.called:
                    d.errback(_Untrusted(why))
                self.transport.abortConnection()
                return
            self._answers += 1
            text = answer
        if not d.called:
            d.callback(text)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        answers, self.answers = self.answers, []
        for _, d in answers:
            if not d.called:
                d.errback(error.ConnectionLost("port mapper went away"))
        self.lost.callback(None)


class MapperClient:
    """
    A node's view of its host's port mapper: registers the node (serving
    the mapper itself when nobody does) and looks names up, each time
    proving the cookie and checking that the mapper proves it too.

    :param reactor: the reactor.
    :param port: the mapper port on 127.0.0.1.
    :param cookie: the cluster cookie.
    :param timeout: seconds to wait for the mapper's answer to a request.
    :param login_timeout: for the mapper this client serves (:class:`PortMapper`).
    :param max_pending: for the mapper this client serves.
    """

    #: Seconds between attempts to register again once the mapper is lost
    #: and the next one cannot be registered with (after the first, at once).
    RETRY = (0.5, 1.0, 2.0, 5.0)

    def __init__(
        self,
        reactor: Any,
        port: int,
        cookie: str,
        timeout: float = 5.0,
        *,
        login_timeout: float = LOGIN_TIMEOUT,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.cookie = cookie
        self.timeout = timeout
        self.login_timeout = login_timeout
        self.max_pending = max_pending
        self.serving: PortMapper | None = None
        self._listening: Any = None
        self._connection: _MapperClientProtocol | None = None
        self._registration: tuple[str, int] | None = None
        self._stopped = False
        self._sleeping: set[defer.Deferred[None]] = set()
        self._lookups: set[_MapperClientProtocol] = set()

    def _untrusted(self, why: Any) -> MapperError:
        return MapperError(
            f"what listens on the port mapper's port 127.0.0.1:{self.port} does not prove this cluster's "
            f"cookie ({why}): a node of another cluster, with another cookie, serves it, or another program "
            "holds the port. Give this cluster its own port mapper port with --epmd-port or PHOENIX_EPMD_PORT"
        )

    def _sleep(self, seconds: float) -> defer.Deferred[None]:
        """A pause that :meth:`stop` cancels (it then fails with CancelledError)."""
        d = _sleep(self.reactor, seconds)
        self._sleeping.add(d)
        return d.addBoth(lambda r: self._sleeping.discard(d) or r)

    def _connect(self) -> defer.Deferred[_MapperClientProtocol]:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5)
        factory = Factory.forProtocol(_MapperClientProtocol)
        factory.noisy = False
        return endpoint.connect(factory)

    @defer.inlineCallbacks
    def _ask(self, connection: _MapperClientProtocol, request: str) -> Any:
        """Prove the cookie both ways on a new connection, then ``request``; fires with the answer."""
        try:
            yield connection.handshake(self.cookie).addTimeout(self.timeout, self.reactor)
            answer = yield connection.request(request).addTimeout(self.timeout, self.reactor)
        except _Untrusted as e:
            connection.transport.abortConnection()
            raise self._untrusted(e) from None
        return answer

    @defer.inlineCallbacks
    def register(self, name: str, port: int) -> Any:
        """
        Register ``name`` → ``port`` for as long as this client runs, serving
        the mapper here if no other node does.  Fires when registered.

        :raises ValueError: when a live node already holds ``name``.
        :raises MapperError: when what serves the mapper port does not prove the cookie.
        :raises RuntimeError: when what listens there does not speak as a mapper.
        """
        self._registration = (name, port)
        lost = 0
        while not self._stopped:
            try:
                connection = yield self._connect()
            except error.ConnectError:
                try:
                    yield self._serve()
                except error.CannotListenError:
                    # Another node won the race to serve; try it.
                    try:
                        yield self._sleep(random.uniform(0.01, 0.1))
                    except defer.CancelledError:
                        return None
                continue
            self._lookups.add(connection)
            try:
                answer = yield self._ask(connection, f"REGISTER {name} {port}")
            except (error.ConnectionLost, error.ConnectionDone):
                # That mapper was on its way out (stopping, or we were
                # accepted by its backlog just before it closed); find the
                # next, unless whatever is there keeps hanging up on us.
                lost += 1
                if lost > 20:
                    raise RuntimeError(
                        f"something listens on the port mapper's port 127.0.0.1:{self.port} "
                        "but hangs up on us (choose another with --epmd-port or PHOENIX_EPMD_PORT)"
                    ) from None
                try:
                    yield self._sleep(random.uniform(0.01, 0.1))
                except defer.CancelledError:
                    return None
                continue
            except defer.TimeoutError:
                connection.transport.abortConnection()
                raise RuntimeError(
                    f"something listens on the port mapper's port 127.0.0.1:{self.port} "
                    "but does not answer as one (choose another with --epmd-port or PHOENIX_EPMD_PORT)"
                ) from None
            finally:
                self._lookups.discard(connection)
            if self._stopped:
                connection.transport.loseConnection()
                return None
            if answer != "OK":
                connection.transport.loseConnection()
                raise ValueError(f"the node name {name!r} is already registered on this host")
            self._connection = connection
            connection.lost.addCallback(self._mapper_lost)
            return None

    def _mapper_lost(self, _: Any) -> None:
        self._connection = None
        if self._stopped or self._registration is None:
            return
        log.info("The port mapper went away; registering again")
        self._register_again(0)

    def _register_again(self, attempt: int) -> None:
        """Register anew, and keep trying (with backoff) until it works or this client stops."""
        delay = random.uniform(0.0, 0.2) if attempt == 0 else self.RETRY[min(attempt, len(self.RETRY)) - 1]
        d = self._sleep(delay)
        d.addCallback(lambda _: self.register(*self._registration))  # type: ignore[misc]

        def registered(_: Any) -> None:
            if attempt and not self._stopped:
                log.info("Registered with the port mapper again")

        def failed(failure: Any) -> None:
            if failure.check(defer.CancelledError) or self._stopped:
                return
            if attempt == 0:
                log.error("Could not register with the port mapper again: {error}; trying again every few "
                          "seconds", error=failure.getErrorMessage())
            else:
                log.debug("Could not register with the port mapper again: {error}", error=failure.getErrorMessage())
            self._register_again(attempt + 1)

        d.addCallbacks(registered, failed)

    @defer.inlineCallbacks
    def _serve(self) -> Any:
        endpoint = TCP4ServerEndpoint(self.reactor, self.port, interface="127.0.0.1")
        self.serving = PortMapper(
            self.cookie, self.reactor, login_timeout=self.login_timeout, max_pending=self.max_pending
        )
        try:
            self._listening = yield endpoint.listen(self.serving)
        except error.CannotListenError:
            self.serving = None
            raise
        except OSError as e:
            self.serving = None
            if e.errno != errno.EADDRINUSE:
                raise
            # Twisted wraps a failed bind() in CannotListenError, not a
            # failed listen(): with SO_REUSEADDR two nodes racing to serve
            # can both bind the port, and the loser's listen() fails.
            raise error.CannotListenError("127.0.0.1", self.port, e) from None
        log.info("Serving the port mapper on 127.0.0.1:{port}", port=self.port)

    @defer.inlineCallbacks
    def _query(self, request: str) -> Any:
        """
        ``request`` on our registration's connection (proven already), else
        on a new one: its answer, or ``None`` when no mapper answers.
        """
        registered = self._connection
        if registered is not None:
            try:
                answer = yield registered.request(request).addTimeout(self.timeout, self.reactor)
            except (error.ConnectionLost, error.ConnectionDone):
                return None  # the mapper went away meanwhile: as good as not found
            except defer.TimeoutError:
                registered.transport.abortConnection()  # not answering: find the next mapper
                return None
            except _Untrusted as e:
                raise self._untrusted(e) from None
            return answer
        try:
            connection = yield self._connect()
        except error.ConnectError:
            return None
        self._lookups.add(connection)
        try:
            answer = yield self._ask(connection, request)
        except (error.ConnectionLost, error.ConnectionDone, defer.TimeoutError):
            return None  # the mapper went away meanwhile, or is not one: as good as not found
        finally:
            self._lookups.discard(connection)
            connection.transport.loseConnection()
        return answer

    @defer.inlineCallbacks
    def lookup(self, name: str) -> Any:
        """
        The port ``name`` listens on, or ``None``; a Deferred.

        :raises MapperError: when what serves the mapper port does not prove the cookie.
        """
        answer = yield self._query(f"LOOKUP {name}")
        if answer is not None and answer.startswith("PORT ") and _PORT.fullmatch(answer[5:]):
            return int(answer[5:])
        return None

    @defer.inlineCallbacks
    def names(self) -> Any:
        """Every registered name and its port (``{}`` when no mapper answers); a Deferred."""
        answer = yield self._query("NAMES")
        found: dict[str, int] = {}
        for word in (answer or "").split(" ")[1:]:
            name, _, port = word.partition("=")
            if _PORT.fullmatch(port):
                found[name] = int(port)
        return found

    def stop(self) -> defer.Deferred[Any]:
        """Unregister and stop serving the mapper; fires when closed."""
        self._stopped = True
        for sleep in list(self._sleeping):
            sleep.cancel()
        waits = []
        connections = list(self._lookups)
        if self._connection is not None:
            connections.append(self._connection)
        for connection in connections:
            waits.append(_lost(connection))
            connection.transport.abortConnection()
        if self._listening is not None:
            waits.append(defer.maybeDeferred(self._listening.stopListening))
            self._listening = None
        if self.serving is not None:
            waits.append(self.serving.disconnect_all())
            self.serving = None
        return defer.gatherResults(waits)


def _lost(connection: _MapperClientProtocol) -> defer.Deferred[None]:
    """A Deferred that fires when ``connection`` is gone."""
    if connection.lost.called:
        return defer.succeed(None)
    d: defer.Deferred[None] = defer.Deferred()

    def fire(result: Any) -> Any:
        d.callback(None)
        return result

    connection.lost.addBoth(fire)
    return d


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
