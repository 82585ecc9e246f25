# -*- test-case-name: tests.test_static -*-
"""
Static files next to the sockets: a page, its scripts and styles, and the
phoenix.js client shipped with this package.

An endpoint serves directories at URL prefixes::

    class Endpoint(twisted_phoenix.Endpoint):
        sockets = {"/socket": UserSocket}
        static = {"/": "static"}  # next to this module: static/index.html at /

or ``twistd phoenix --static DIR`` serves ``DIR`` at ``/``.  Whenever an
endpoint serves static files it also serves the phoenix.js client this
package ships (:data:`PHOENIX_JS_DIR`) at ``/phoenix/``: ``phoenix.js`` (a
classic script, the global ``Phoenix``), ``phoenix.min.js``,
``phoenix.mjs`` (an ES module) and its source map, and the client's
``LICENSE.md``.

What is served, and how:

* files only: a directory is its ``index.html`` (``/docs`` redirects to
  ``/docs/``), never a listing; ``GET`` and ``HEAD`` only (405 otherwise);
* nothing outside the directory: no ``..``, no encoded ``/``, no symbolic
  link that leads out of it, and no name starting with a dot (``.git``,
  ``.env``), all 404;
* the content type from the extension (:data:`CONTENT_TYPES` first: text is
  UTF-8), ``application/octet-stream`` for an unknown one, with
  ``X-Content-Type-Options: nosniff``;
* caching: an ``ETag`` (size and modification time) and ``Last-Modified``
  on every response, ``304 Not Modified`` for a conditional ``GET`` whose
  ``If-None-Match`` (or else ``If-Modified-Since``) still holds, and
  ``Cache-Control`` from the endpoint's ``static_cache_control``
  (``no-cache`` by default: browsers keep the file but ask each time, and a
  304 costs no body).  A request with a ``vsn`` query parameter (Phoenix's
  ``?vsn=d`` for digested assets) gets ``public, max-age=31536000,
  immutable``, as with ``Plug.Static``.

The sockets' paths win: ``<mount>/websocket`` (and every path the mount
tree serves) is never looked up among the files.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from twisted.web import http
from twisted.web.resource import IResource, Resource

with warnings.catch_warnings():
    # Importing it makes Twisted's own deprecated error pages (Twisted
    # 22.10+): nothing of ours, and no reason to fail under -W error.
    warnings.filterwarnings("ignore", r"twisted\.web\.resource\._Unsafe", DeprecationWarning)
    from twisted.web.static import File

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_CACHE_CONTROL",
    "PHOENIX_JS_DIR",
    "PHOENIX_JS_PREFIX",
    "StaticDirectory",
    "StaticFiles",
    "defining_module_directory",
    "resolve_mounts",
]

#: The directory of the phoenix.js client shipped with this package (npm
#: ``phoenix`` 1.8.16, MIT licence: ``LICENSE.md`` there).
PHOENIX_JS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "phoenix_js")

#: Where an endpoint that serves static files serves :data:`PHOENIX_JS_DIR`.
PHOENIX_JS_PREFIX = "/phoenix"

#: ``Cache-Control`` of a static file: keep it, but ask whether it changed
#: before each use (a conditional GET, answered 304 while it has not).
DEFAULT_CACHE_CONTROL = "no-cache"

#: ``Cache-Control`` of a request with a ``vsn`` parameter (digested assets).
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"

_UTF8 = "; charset=utf-8"

#: Content types by extension, before the system's ``mime.types``: the ones
#: a page needs, the same on every machine.  Text is served as UTF-8.
CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html" + _UTF8,
    ".htm": "text/html" + _UTF8,
    ".css": "text/css" + _UTF8,
    ".js": "text/javascript" + _UTF8,
    ".mjs": "text/javascript" + _UTF8,
    ".map": "application/json",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain" + _UTF8,
    ".md": "text/markdown" + _UTF8,
    ".csv": "text/csv" + _UTF8,
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
    ".pdf": "application/pdf",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
}


def content_type(name: str) -> str:
    """The ``Content-Type`` of a file named ``name``."""
    extension = os.path.splitext(name)[1].lower()
    found = CONTENT_TYPES.get(extension) or File.contentTypes.get(extension)
    return found or "application/octet-stream"


def _etag_matches(header: bytes, etag: bytes) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison) or is ``*``."""
    wanted = etag.removeprefix(b"W/")
    for tag in header.split(b","):
        tag = tag.strip()
        if tag == b"*" or tag.removeprefix(b"W/") == wanted:
            return True
    return False


class _NotFound(Resource):
    """404, with a short text body (none for ``HEAD``), whatever the path below."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(http.NOT_FOUND)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"" if request.method == b"HEAD" else b"Not found\n"


class StaticDirectory(File):
    """
    The files of a directory, served as the module docstring says (a
    :class:`twisted.web.static.File` without listings, processors,
    content encodings or hidden files, with ETags and ``Cache-Control``).

    :param path: the file or directory this resource stands for.
    :param root: the directory it is served from (nothing outside it is
        served); ``path`` itself by default.
    :param cache_control: the ``Cache-Control`` of its responses.
    """

    contentEncodings: dict[str, str] = {}
    processors: dict[str, Any] = {}
    indexNames = ["index.html"]
    childNotFound = _NotFound()

    def __init__(
        self,
        path: str,
        defaultType: str = "application/octet-stream",
        ignoredExts: Sequence[str] = (),
        registry: Any = None,
        *,
        root: str | None = None,
        cache_control: str = DEFAULT_CACHE_CONTROL,
    ) -> None:
        super().__init__(path, defaultType, ignoredExts, registry)
        self.root = os.path.realpath(root if root is not None else path)
        self.cache_control = cache_control

    def createSimilarFile(self, path: str) -> StaticDirectory:
        """The resource of ``path``, a file or directory below this one (same root and caching)."""
        f = StaticDirectory(path, self.defaultType, self.ignoredExts, self.registry,
                            root=self.root, cache_control=self.cache_control)
        f.childNotFound = self.childNotFound
        return f

    def directoryListing(self) -> Resource:
        """Not found: a directory without ``index.html`` shows nothing."""
        # A directory without index.html is not found; its names stay private.
        return self.childNotFound

    def getChild(self, path: bytes, request: Any) -> Any:
        """The file or directory ``path`` below this one, or not found (see the module docstring)."""
        if path.startswith(b".") or b"\x00" in path:
            # ".", "..", hidden files such as .git or .env; no NUL in a file name.
            return self.childNotFound
        child = super().getChild(path, request)
        if isinstance(child, StaticDirectory) and not child._inside_root():
            return self.childNotFound
        return child

    def _inside_root(self) -> bool:
        real = os.path.realpath(self.path)
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def redirect(self, request: Any) -> bytes:
        """301 from a directory's path to the same path with a slash."""
        # /dir to /dir/, as a path: never to the host the request named.
        path = "".join("/" + quote(s, safe="") for s in request.prepath if s) + "/"
        location = path.encode("ascii")
        query = request.uri.partition(b"?")[2]
        if query:
            location += b"?" + query
        request.setResponseCode(http.MOVED_PERMANENTLY)
        request.setHeader(b"location", location)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"moved to " + location + b"\n"

    def render(self, request: Any) -> Any:
        """``GET`` and ``HEAD``; anything else gets 405."""
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Method not allowed\n"
        return super().render(request)

    def render_GET(self, request: Any) -> Any:
        """The file, with its headers, or 304 for a conditional request that still holds."""
        self.restat(False)
        if self.isdir() and not self.child(self.indexNames[0]).isfile():
            return self.childNotFound.render(request)  # nothing to show there
        if not self.exists() or self.isdir():
            return super().render_GET(request)  # 404, or the redirect to add a slash
        self.type = content_type(self.basename())
        self.encoding = None
        mtime_us = int(self.getModificationTime() * 1_000_000)
        etag = f'"{mtime_us:x}-{self.getsize():x}"'.encode("ascii")
        request.setHeader(b"etag", etag)
        immutable = b"vsn" in (request.args or {})
        request.setHeader(b"cache-control", IMMUTABLE_CACHE_CONTROL if immutable else self.cache_control)
        request.setHeader(b"x-content-type-options", b"nosniff")
        wanted = request.getHeader(b"if-none-match")
        if wanted is not None:
            # If-None-Match decides alone (RFC 9110 13.2.2): a file changed
            # within the same second as a cached copy is not "unmodified".
            request.requestHeaders.removeHeader(b"if-modified-since")
            if _etag_matches(wanted.encode("latin-1") if isinstance(wanted, str) else wanted, etag):
                request.setLastModified(self.getModificationTime())
                request.setResponseCode(http.NOT_MODIFIED)
                return b""
        return super().render_GET(request)

    render_HEAD = render_GET


def resolve_mounts(static: Mapping[str, str], base: str) -> dict[str, str]:
    """
    ``static`` (URL prefix → directory) with every prefix normalised
    (``"/assets/"`` → ``"/assets"``, ``""`` → ``"/"``) and every directory
    made absolute against ``base``.

    :raises ValueError: for a prefix not starting with ``/`` or a
        directory that does not exist.
    """
    mounts: dict[str, str] = {}
    for prefix, directory in static.items():
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"a static URL prefix starts with '/', not {prefix!r}")
        normal = "/" + "/".join(s for s in prefix.split("/") if s)
        path = os.path.join(base, os.fspath(directory))
        if not os.path.isdir(path):
            raise ValueError(f"static files for {prefix!r}: {path!r} is not a directory")
        mounts[normal] = os.path.abspath(path)
    return mounts


def defining_module_directory(cls: type, attribute: str | None = None) -> str:
    """
    The directory of the module of ``cls``, or of the first class of its
    MRO that defines ``attribute``; the current directory if that module
    has no file.
    """
    owner = cls if attribute is None else next((c for c in cls.__mro__ if attribute in vars(c)), cls)
    module = sys.modules.get(owner.__module__)
    filename = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(filename)) if filename else os.getcwd()


class StaticFiles:
    """
    Directories served at URL prefixes (absolute, as
    :func:`resolve_mounts` gives them): a request goes to the longest prefix
    that matches its path.

    :param mounts: URL prefix → absolute directory.
    :param cache_control: ``Cache-Control`` of the files.
    """

    def __init__(self, mounts: Mapping[str, str], cache_control: str = DEFAULT_CACHE_CONTROL) -> None:
        self.mounts = dict(mounts)
        self._by_length = sorted(
            (
                (tuple(s.encode("utf-8") for s in prefix.split("/") if s),
                 StaticDirectory(directory, cache_control=cache_control))
                for prefix, directory in self.mounts.items()
            ),
            key=lambda mount: -len(mount[0]),
        )

    def resource(self, segments: Sequence[bytes], request: Any) -> IResource:
        """
        The resource for the path ``segments`` (as ``request.prepath`` holds
        them, relative to where the files are mounted).
        """
        segments = tuple(segments)
        for prefix, directory in self._by_length:
            if segments[: len(prefix)] == prefix:
                resource: Any = directory
                for segment in segments[len(prefix):]:
                    resource = resource.getChildWithDefault(segment, request)
                return resource
        return _NotFound()
