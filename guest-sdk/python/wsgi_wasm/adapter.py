"""The server side of PEP 3333, inside the sandbox.

The host calls the component's ``handle`` export once per fresh instance with
the CGI variables it built. This module finishes the environ with the Python
objects only the guest can make (``wsgi.input``, ``wsgi.errors``, ...), calls
the app, and streams what the app produces back through the host imports.

The contract is enforced here first (the app gets a Python exception at the
call that broke it, as with waitress or wsgiref), and the host checks
everything again, because this code runs inside the untrusted guest.
"""

import os
import re
import sys
import traceback

from componentize_py_types import Err
from wit_world.imports import host

from .errors import ErrorStream
from .input import ClientDisconnected, Input

# RFC 9110 token characters, for header names.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# "200 OK": three digits, a space, and a reason phrase without control bytes.
_STATUS = re.compile(r"[1-9][0-9]{2} [^\x00-\x08\x0a-\x1f\x7f]*\Z")
_BAD_VALUE = re.compile(r"[\x00\r\n]")
# RFC 9110 section 7.6.1: connection-specific headers are the server's business.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file-like object in blocks."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        read = self.filelike.read
        while True:
            block = read(self.blksize)
            if not block:
                return
            yield block


# The statuses and headers the warm-up requests sent, checked and encoded at
# build time (see ``learn``): a request that sends one of them again skips the
# checks. Read-only in a request, so these stay on shared snapshot pages.
_KNOWN_STATUS = {}  # status -> its latin-1 bytes
_KNOWN_HEADERS = {}  # (name, value) -> (host.Header, Content-Length or None)


def _check_status(status):
    """PEP 3333's status line, checked; returns it encoded."""
    if type(status) is not str:
        raise TypeError(f"status must be str, not {type(status).__name__}")
    if not _STATUS.match(status):
        raise ValueError(f"invalid status line {status!r}: want e.g. '200 OK'")
    return status.encode("latin-1")


def _check_header(item):
    """One response header, checked; returns it encoded, and its value if it
    is a Content-Length."""
    if type(item) is not tuple or len(item) != 2:
        raise TypeError(f"each header must be a (name, value) tuple, not {item!r}")
    name, value = item
    if type(name) is not str or type(value) is not str:
        raise TypeError(f"header name and value must be str: {item!r}")
    if not _TOKEN.match(name):
        raise ValueError(f"invalid header name {name!r}")
    if _BAD_VALUE.search(value):
        raise ValueError(f"header {name!r} has a CR, LF or NUL in its value")
    lower = name.lower()
    if lower in HOP_BY_HOP:
        raise AssertionError(f"hop-by-hop header {name!r} is not allowed in WSGI")
    length = None
    if lower == "content-length":
        if not value.strip().isdigit():
            raise ValueError(f"invalid Content-Length {value!r}")
        length = int(value)
    return host.Header(name.encode("latin-1"), value.encode("latin-1")), length


def learn(status, headers):
    """Checks what a warm-up request passed to ``start_response`` and keeps
    the result, for requests that send the same again. Build time only."""
    _KNOWN_STATUS[status] = _check_status(status)
    for item in headers:
        _KNOWN_HEADERS[item] = _check_header(item)


class _Response:
    """State of one response: what ``start_response`` said and what was sent."""

    def __init__(self, method):
        self.status = None  # latin-1 bytes, once start_response was called
        self.headers = None  # list of host.Header
        self.head_sent = False
        self.content_length = None  # what the app promised, if it did
        self.sent = 0  # body bytes handed to the host
        self.discard_body = method == "HEAD"

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.head_sent:
                    # Too late to change the status: PEP 3333 says re-raise.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")

        wire_status = _KNOWN_STATUS.get(status) if type(status) is str else None
        if wire_status is None:
            wire_status = _check_status(status)
        if type(headers) is not list:
            raise TypeError(f"headers must be a list, not {type(headers).__name__}")
        wire = []
        content_length = None
        for item in headers:
            known = None
            if type(item) is tuple and len(item) == 2 and type(item[0]) is str and type(item[1]) is str:
                known = _KNOWN_HEADERS.get(item)
            header, length = known or _check_header(item)
            if length is not None:
                content_length = length
            wire.append(header)
        self.status = wire_status
        self.headers = wire
        self.content_length = content_length
        return self.write

    def _clip(self, data):
        """Keeps the body within a Content-Length the app declared."""
        if self.content_length is not None:
            room = self.content_length - self.sent
            if len(data) > room:
                sys.stderr.write(
                    f"wsgi-wasm: app wrote more than its Content-Length "
                    f"({self.content_length}); the rest was dropped\n"
                )
                data = data[:max(room, 0)]
        self.sent += len(data)
        return b"" if self.discard_body else data

    def send(self, data, complete=False):
        """Sends one piece of body, with the head if it has not gone yet."""
        if self.status is None:
            raise AssertionError("the app produced body before calling start_response()")
        data = self._clip(data)
        try:
            if not self.head_sent:
                self.head_sent = True
                host.start_response(self.status, self.headers, data, complete)
            elif data:
                host.write_body(data)
        except Err as e:
            raise ClientDisconnected(f"response: {e.value}") from None

    def write(self, data):
        """The ``write()`` callable that ``start_response`` returns."""
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if data:
            self.send(data)


# ``wsgi.errors``: one stream, made at build time. An instance serves one
# request and starts from the snapshot, where nothing is pending.
_ERRORS = ErrorStream()

# The environ entries that are the same in every request.
_WSGI_FIXED = {
    "wsgi.version": (1, 0),
    # Our input ends exactly at the end of the body, chunked or not.
    "wsgi.input_terminated": True,
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": True,
    "wsgi.file_wrapper": FileWrapper,
}


def _environ(url_scheme, pairs):
    # The host sends the values as native strings already (latin-1).
    environ = dict(pairs)
    length = environ.get("CONTENT_LENGTH", "")
    environ.update(_WSGI_FIXED)
    environ["wsgi.url_scheme"] = url_scheme
    environ["wsgi.input"] = Input(int(length) if length.isdigit() else None)
    environ["wsgi.errors"] = _ERRORS
    return environ


def _run(app, environ, response):
    result = app(environ, response.start_response)
    try:
        if isinstance(result, (list, tuple)) and all(type(c) is bytes for c in result):
            # The whole body is already here: let the host frame it with a length.
            if not response.head_sent:
                response.send(b"".join(result), complete=True)
                return
            for chunk in result:
                response.write(chunk)
            return
        for chunk in result:
            if type(chunk) is not bytes:
                raise TypeError(f"the app yielded {type(chunk).__name__}, not bytes")
            if chunk:
                response.send(chunk)
        if not response.head_sent:
            response.send(b"", complete=True)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def handle(app, url_scheme, pairs, env):
    """Runs one request through ``app``; raises ``Err(traceback)`` on failure."""
    # No random.seed() here: componentize-py's runtime reseeds the module-level
    # generator on an instance's first call (test: randomness_differs_per_request).
    # os.environ was emptied before the snapshot; the operator's grant is all
    # the app sees.
    if env:
        os.environ.update(env)
    environ = _environ(url_scheme, pairs)
    response = _Response(environ.get("REQUEST_METHOD", "GET"))
    try:
        _run(app, environ, response)
    except BaseException as e:  # noqa: BLE001 - the host decides what the client sees
        environ["wsgi.errors"].flush()
        if isinstance(e, ClientDisconnected):
            raise Err(f"client went away: {e}") from None
        raise Err("".join(traceback.format_exception(e))) from None
    environ["wsgi.errors"].flush()
