"""
Tests for :mod:`twisted_phoenix.static`: static files and the shipped
phoenix.js next to the sockets, over real loopback HTTP through
``Endpoint.site()`` (and ``Endpoint.resource()`` in a site of one's own).
"""

from __future__ import annotations

import email.utils
import os
import shutil
import tempfile
from typing import Any, NamedTuple

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_phoenix import Endpoint
from twisted_phoenix.examples import chat
from twisted_phoenix.examples.hello_sockets import UserSocket
from twisted_phoenix.static import (
    PHOENIX_JS_DIR,
    StaticDirectory,
    StaticFiles,
    _etag_matches,
    content_type,
    defining_module_directory,
    resolve_mounts,
)

from ._client import connect, raw_connect, serve
from ._server import JS_DIR, require_node_modules

HERE = os.path.dirname(os.path.abspath(__file__))

#: The files of the vendored client, as npm's phoenix 1.8.16 ships them.
PHOENIX_FILES = {
    "phoenix.js": "text/javascript; charset=utf-8",
    "phoenix.min.js": "text/javascript; charset=utf-8",
    "phoenix.mjs": "text/javascript; charset=utf-8",
    "phoenix.mjs.map": "application/json",
    "LICENSE.md": "text/markdown; charset=utf-8",
}


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(data: bytes) -> Response:
    """An HTTP/1.1 response (Content-Length or chunked body)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        chunks = b""
        while True:
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            chunks, body = chunks + body[:size], body[size + 2:]
        body = chunks
    return Response(status, headers, body)


@defer.inlineCallbacks
def request(test: TestCase, port: int, target: str, method: str = "GET", **headers: str) -> Any:
    """Send one request (``Connection: close``) and fire with its :class:`Response`."""
    raw = yield raw_connect(reactor, port, test=test)
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    raw.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    data = yield raw.connection_lost()
    return parse_response(data)


def write(path: str, content: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)


def site_tree(test: SynchronousTestCase) -> str:
    """
    A temporary directory: ``site/`` (served) with pages, assets, a
    directory without index, hidden files, a socket-shaped path and
    symbolic links in and out; ``secret.txt`` beside it (never served).
    """
    base = tempfile.mkdtemp(prefix="twisted_phoenix-static-")
    test.addCleanup(shutil.rmtree, base, ignore_errors=True)
    root = os.path.join(base, "site")
    write(os.path.join(base, "secret.txt"), "the secret")
    files = {
        "index.html": "<!doctype html><title>home</title>",
        "app.js": "console.log('app');",
        "mod.mjs": "export const x = 1;",
        "style.css": "body { color: red }",
        "data.json": '{"a": 1}',
        "app.js.map": "{}",
        "pic.png": b"\x89PNG\r\n\x1a\nfake",
        "font.woff2": b"wOF2",
        "blob.unknownext": b"\x00\x01",
        "sub/index.html": "<p>sub</p>",
        "sub/page.txt": "plain text",
        "empty/file.txt": "not an index",
        ".env": "SECRET=1",
        ".git/config": "[core]",
        "socket/websocket": "a file where the socket is",
        "socket/other.txt": "beside the socket",
        "phoenix/mine.js": "shadowed by the shipped client",
    }
    for name, content in files.items():
        write(os.path.join(root, name), content)
    os.symlink(os.path.join(base, "secret.txt"), os.path.join(root, "out.txt"))
    os.symlink(base, os.path.join(root, "outdir"))
    os.symlink(os.path.join(root, "sub", "page.txt"), os.path.join(root, "in.txt"))
    return root


def endpoint_class(static: dict[str, str], **attributes: Any) -> type[Endpoint]:
    return type("StaticEndpoint", (Endpoint,), {"sockets": {"/socket": UserSocket}, "static": static, **attributes})


class StaticServingTests(TestCase):
    """An endpoint with ``static = {"/": DIR}``, served by ``site()`` on loopback."""

    def setUp(self) -> None:
        self.root = site_tree(self)
        self.endpoint = endpoint_class({"/": self.root})(reactor)
        self.port = serve(self, self.endpoint).port

    def get(self, target: str, method: str = "GET", **headers: str) -> defer.Deferred[Response]:
        return request(self, self.port, target, method, **headers)

    @defer.inlineCallbacks
    def test_contentTypes(self) -> None:
        """Each file has the content type of its extension (text in UTF-8), and nosniff."""
        expected = {
            "/index.html": "text/html; charset=utf-8",
            "/app.js": "text/javascript; charset=utf-8",
            "/mod.mjs": "text/javascript; charset=utf-8",
            "/style.css": "text/css; charset=utf-8",
            "/data.json": "application/json",
            "/app.js.map": "application/json",
            "/pic.png": "image/png",
            "/font.woff2": "font/woff2",
            "/blob.unknownext": "application/octet-stream",
            "/sub/page.txt": "text/plain; charset=utf-8",
        }
        for target, content_type in expected.items():
            response = yield self.get(target)
            self.assertEqual(response.status, 200, target)
            self.assertEqual(response.headers["content-type"], content_type, target)
            self.assertEqual(response.headers["x-content-type-options"], "nosniff", target)
            with open(os.path.join(self.root, target.lstrip("/")), "rb") as f:
                self.assertEqual(response.body, f.read(), target)
            self.assertEqual(int(response.headers["content-length"]), len(response.body))

    @defer.inlineCallbacks
    def test_indexAndDirectories(self) -> None:
        """A directory is its index.html; without the slash it redirects (to a path); never a listing."""
        response = yield self.get("/")
        self.assertEqual((response.status, response.body), (200, b"<!doctype html><title>home</title>"))
        response = yield self.get("/sub/")
        self.assertEqual((response.status, response.body), (200, b"<p>sub</p>"))
        response = yield self.get("/sub?x=1")
        self.assertEqual(response.status, 301)
        self.assertEqual(response.headers["location"], "/sub/?x=1")
        for target in ("/empty/", "/empty", "/missing.html", "/sub/missing", "/index.html/more"):
            response = yield self.get(target)
            self.assertEqual(response.status, 404, target)
            self.assertNotIn(b"file.txt", response.body)

    @defer.inlineCallbacks
    def test_cachingHeaders(self) -> None:
        """A file has an ETag, its Last-Modified and Cache-Control: no-cache (vsn: immutable)."""
        response = yield self.get("/app.js")
        path = os.path.join(self.root, "app.js")
        self.assertRegex(response.headers["etag"], r'^"[0-9a-f]+-[0-9a-f]+"$')
        modified = email.utils.parsedate_to_datetime(response.headers["last-modified"]).timestamp()
        self.assertLessEqual(abs(modified - os.path.getmtime(path)), 1.0)
        self.assertEqual(response.headers["cache-control"], "no-cache")
        response = yield self.get("/app.js?vsn=d")
        self.assertEqual(response.headers["cache-control"], "public, max-age=31536000, immutable")

    @defer.inlineCallbacks
    def test_conditionalGet(self) -> None:
        """If-None-Match with the ETag (or If-Modified-Since) gets 304 and no body; a changed file 200."""
        first = yield self.get("/app.js")
        etag = first.headers["etag"]
        for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            response = yield self.get("/app.js", If_None_Match=header)
            self.assertEqual((response.status, response.body), (304, b""), header)
            self.assertEqual(response.headers["etag"], etag)
            self.assertEqual(response.headers["cache-control"], "no-cache")
        response = yield self.get("/app.js", If_Modified_Since=first.headers["last-modified"])
        self.assertEqual((response.status, response.body), (304, b""))
        # An ETag that does not match decides alone, whatever the date says.
        response = yield self.get(
            "/app.js", If_None_Match='"stale"', If_Modified_Since="Fri, 01 Jan 2100 00:00:00 GMT"
        )
        self.assertEqual((response.status, response.body), (200, b"console.log('app');"))
        # The file changes: a new ETag, and the old one no longer matches.
        path = os.path.join(self.root, "app.js")
        write(path, "console.log('changed');")
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
        response = yield self.get("/app.js", If_None_Match=etag)
        self.assertEqual((response.status, response.body), (200, b"console.log('changed');"))
        self.assertNotEqual(response.headers["etag"], etag)

    @defer.inlineCallbacks
    def test_noTraversal(self) -> None:
        """Nothing outside the directory is served, nor hidden files; links inside it are."""
        for target in (
            "/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt", "/sub/%2e%2e%2f%2e%2e%2fsecret.txt",
            "/..%2fsecret.txt", "/%2fetc%2fpasswd", "/out.txt", "/outdir/secret.txt", "/.env", "/.git/config",
            "/sub/%00", "/./index.html",
        ):
            response = yield self.get(target)
            self.assertEqual(response.status, 404, target)
            self.assertNotIn(b"secret", response.body.lower(), target)
            self.assertNotIn(b"SECRET", response.body, target)
        response = yield self.get("/in.txt")
        self.assertEqual((response.status, response.body), (200, b"plain text"))

    @defer.inlineCallbacks
    def test_methods(self) -> None:
        """HEAD gives the headers without the body; other methods than GET and HEAD get 405."""
        response = yield self.get("/style.css", "HEAD")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-length"], str(len("body { color: red }")))
        self.assertEqual(response.body, b"")
        response = yield self.get("/missing", "HEAD")
        self.assertEqual((response.status, response.body), (404, b""))
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            response = yield self.get("/style.css", method, Content_Length="0")
            self.assertEqual(response.status, 405, method)
            self.assertEqual(response.headers["allow"], "GET, HEAD", method)

    @defer.inlineCallbacks
    def test_socketMountsWin(self) -> None:
        """``<mount>/websocket`` is the socket's, even with a file there; other paths under the mount are files."""
        response = yield self.get("/socket/websocket")
        self.assertEqual(response.status, 400)
        self.assertNotIn(b"a file where the socket is", response.body)
        client = yield connect(reactor, self.port, test=self)
        reply = yield client.request(["1", "1", "ping", "phx_join", {}])
        self.assertEqual(reply[4], {"response": {}, "status": "ok"})
        response = yield self.get("/socket/other.txt")
        self.assertEqual((response.status, response.body), (200, b"beside the socket"))
        response = yield self.get("/socket")
        self.assertEqual(response.status, 404)

    @defer.inlineCallbacks
    def test_phoenixJs(self) -> None:
        """The shipped phoenix.js is served at /phoenix/ (it wins over a phoenix/ of one's own)."""
        for name, content_type in PHOENIX_FILES.items():
            response = yield self.get(f"/phoenix/{name}")
            self.assertEqual(response.status, 200, name)
            self.assertEqual(response.headers["content-type"], content_type, name)
            with open(os.path.join(PHOENIX_JS_DIR, name), "rb") as f:
                self.assertEqual(response.body, f.read(), name)
        self.assertIn(b"sourceMappingURL=phoenix.mjs.map", (yield self.get("/phoenix/phoenix.mjs")).body)
        for target in ("/phoenix/", "/phoenix/mine.js"):
            self.assertEqual((yield self.get(target)).status, 404, target)


class StaticMountsTests(TestCase):
    """Which endpoints serve what, and where."""

    def setUp(self) -> None:
        self.root = site_tree(self)

    @defer.inlineCallbacks
    def test_noStaticNoFiles(self) -> None:
        """An endpoint without static files serves neither pages nor phoenix.js."""
        port = serve(self, endpoint_class({})(reactor)).port
        for target in ("/", "/phoenix/phoenix.js", "/index.html"):
            self.assertEqual((yield request(self, port, target)).status, 404, target)

    @defer.inlineCallbacks
    def test_prefixes(self) -> None:
        """Several prefixes: the longest that matches serves; a "/phoenix" of one's own replaces the shipped client."""
        endpoint = endpoint_class({"/": os.path.join(self.root, "sub"), "/assets/": self.root,
                                   "/phoenix": os.path.join(self.root, "phoenix")})(reactor)
        port = serve(self, endpoint).port
        self.assertEqual((yield request(self, port, "/")).body, b"<p>sub</p>")
        self.assertEqual((yield request(self, port, "/assets/app.js")).body, b"console.log('app');")
        self.assertEqual((yield request(self, port, "/assets/sub/page.txt")).body, b"plain text")
        self.assertEqual((yield request(self, port, "/phoenix/mine.js")).body, b"shadowed by the shipped client")
        self.assertEqual((yield request(self, port, "/phoenix/phoenix.js")).status, 404)

    @defer.inlineCallbacks
    def test_resourceInOwnSite(self) -> None:
        """``resource()`` mounted under /rt of one's own site serves the files there, redirects included."""
        endpoint = endpoint_class({"/": self.root})(reactor)
        root = Resource()
        root.putChild(b"rt", endpoint.resource())
        listening = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        self.assertEqual((yield request(self, port, "/rt/")).body, b"<!doctype html><title>home</title>")
        self.assertEqual((yield request(self, port, "/rt/sub/page.txt")).body, b"plain text")
        response = yield request(self, port, "/rt/sub")
        self.assertEqual((response.status, response.headers["location"]), (301, "/rt/sub/"))
        response = yield request(self, port, "/rt/phoenix/phoenix.js")
        self.assertEqual(response.status, 200)
        self.assertEqual((yield request(self, port, "/rt/../secret.txt")).status, 404)

    @defer.inlineCallbacks
    def test_pathParamMount(self) -> None:
        """Under a ``:param`` mount the socket wins at ``<mount>/websocket``, files elsewhere."""
        endpoint = endpoint_class({"/": self.root}, sockets={"/rooms/:room": UserSocket})(reactor)
        port = serve(self, endpoint).port
        client = yield connect(reactor, port, path="/rooms/lobby/websocket", test=self)
        reply = yield client.request(["1", "1", "ping", "phx_join", {}])
        self.assertEqual(reply[4]["status"], "ok")
        self.assertEqual((yield request(self, port, "/app.js")).status, 200)


class StaticConfigurationTests(SynchronousTestCase):
    """``Endpoint.static``: where relative directories are, and what is refused."""

    def test_relativeToDefiningModule(self) -> None:
        """A relative directory is relative to the module of the class that sets ``static``."""
        chat_static = os.path.join(os.path.dirname(os.path.abspath(chat.__file__)), "static")
        self.assertEqual(chat.Endpoint(reactor).static_directories(), {"/": chat_static, "/phoenix": PHOENIX_JS_DIR})

        class Inherits(chat.Endpoint):
            pass

        class Own(chat.Endpoint):
            static = {"/": "js"}

        self.assertEqual(Inherits(reactor).static_directories()["/"], chat_static)
        self.assertEqual(Own(reactor).static_directories()["/"], os.path.join(HERE, "js"))
        self.assertEqual(defining_module_directory(Inherits, "static"), os.path.dirname(chat_static))
        self.assertEqual(defining_module_directory(Inherits), HERE)

    def test_instanceAttribute(self) -> None:
        """Set on an instance, a relative directory is relative to the endpoint class's module."""
        endpoint = chat.Endpoint(reactor)
        endpoint.static = {"/": "static/.."}
        self.assertEqual(endpoint.static_directories()["/"], os.path.dirname(os.path.abspath(chat.__file__)))

    def test_refused(self) -> None:
        """A prefix without its "/" or a directory that does not exist is refused when the site is made."""
        for static in ({"assets": HERE}, {"/": os.path.join(HERE, "no such directory")}, {"/": __file__}):
            endpoint = endpoint_class(static)(reactor)
            self.assertRaises(ValueError, endpoint.site)
            self.assertRaises(ValueError, endpoint.resource)

    def test_resolveMounts(self) -> None:
        """Prefixes are normalised and directories made absolute against the base."""
        self.assertEqual(resolve_mounts({"/a//b/": "js", "/": "."}, HERE),
                         {"/a/b": os.path.join(HERE, "js"), "/": HERE})

    def test_contentType(self) -> None:
        """Web types are fixed here; other extensions come from the system, else octet-stream."""
        self.assertEqual(content_type("A.JS"), "text/javascript; charset=utf-8")
        self.assertEqual(content_type("x.wasm"), "application/wasm")
        self.assertEqual(content_type("x.pdf"), "application/pdf")
        self.assertEqual(content_type("noextension"), "application/octet-stream")

    def test_etagMatches(self) -> None:
        """If-None-Match lists, weak tags and * match; other tags do not."""
        etag = b'"1-2"'
        for header in (b'"1-2"', b'W/"1-2"', b'"x", "1-2"', b"*", b' "1-2" '):
            self.assertTrue(_etag_matches(header, etag), header)
        for header in (b'"1-3"', b"1-2", b'"1-2-"', b""):
            self.assertFalse(_etag_matches(header, etag), header)

    def test_staticFilesLookup(self) -> None:
        """A path outside every prefix is not found."""
        files = StaticFiles({"/assets": HERE})
        self.assertIsInstance(files.resource([b"assets"], None), StaticDirectory)
        self.assertEqual(files.resource([b"other"], None).isLeaf, True)


class VendoredPhoenixTests(SynchronousTestCase):
    """The phoenix.js shipped in the package."""

    def test_files(self) -> None:
        """The client files and the licence are in the package."""
        self.assertEqual(sorted(os.listdir(PHOENIX_JS_DIR)), sorted([*PHOENIX_FILES, "README.rst"]))
        with open(os.path.join(PHOENIX_JS_DIR, "LICENSE.md"), encoding="utf-8") as f:
            self.assertIn("Copyright (c) 2014 Chris McCord", f.read())

    def test_sameAsNpm(self) -> None:
        """The files are byte for byte those of the npm package tests/js pins (phoenix 1.8.16)."""
        require_node_modules("phoenix")
        npm = os.path.join(JS_DIR, "node_modules", "phoenix")
        with open(os.path.join(npm, "package.json"), encoding="utf-8") as f:
            self.assertIn('"version": "1.8.16"', f.read())
        for name in PHOENIX_FILES:
            source = os.path.join(npm, name if name == "LICENSE.md" else os.path.join("priv", "static", name))
            with open(source, "rb") as a, open(os.path.join(PHOENIX_JS_DIR, name), "rb") as b:
                self.assertEqual(a.read(), b.read(), name)
