"""A guest that ignores the guest SDK: it calls the host imports itself.

An app is untrusted, and nothing stops it from importing
``wit_world.imports`` and calling ``start-response``, ``write-body`` and
``log-error`` with whatever it likes. ``install()`` wraps the adapter's entry
point so that a request under ``/raw/`` goes straight to one of the routes
below, which talk to the host directly, ignore every refusal the host
returns, and then return normally, as a hostile guest would. The host alone
must keep each of these off the wire (and out of its memory and log).

Every other path goes to the adapter as usual.
"""

import os
import sys
from urllib.parse import parse_qs

from componentize_py_types import Err
from wit_world.imports import host, log

from wsgi_wasm import adapter

# A complete second response, to be smuggled after a short body.
SMUGGLED = b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\nContent-Length: 2\r\n\r\nhi"


def _query(environ):
    # Values as bytes: the query string is a latin-1 native string.
    pairs = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True, encoding="latin-1")
    return {k: v[-1].encode("latin-1") for k, v in pairs.items()}


def _ignore(call, *args):
    try:
        call(*args)
    except Err:
        pass  # a hostile guest carries on regardless


def status(q):
    _ignore(host.start_response, q.get("s", b"999 WAT"), [], b"status body\n", False)
    # More body after a refused head: nothing may wait on it.
    for _ in range(10):
        _ignore(host.write_body, b"more body\n")


def header(q):
    name, value = q.get("name", b"X-A"), q.get("value", b"v")
    _ignore(host.start_response, b"200 OK", [host.Header(name, value)], b"header body\n", True)


def length(q):
    """Declares a Content-Length, then sends ``head`` with the head and each
    ``more`` piece with ``write-body``; ``smuggle`` appends a second response."""
    declared = q.get("declared", b"5")
    body = q.get("head", b"")
    more = [q["more"]] * int(q.get("times", b"1")) if "more" in q else []
    if "smuggle" in q:
        if more:
            more[-1] += SMUGGLED
        else:
            body += SMUGGLED
    headers = [host.Header(b"Content-Type", b"text/plain"), host.Header(b"Content-Length", declared)]
    _ignore(host.start_response, b"200 OK", headers, body, q.get("complete") == b"1")
    for piece in more:
        _ignore(host.write_body, piece)


def write_first(q):
    _ignore(host.write_body, b"body before any head\n")
    _ignore(host.start_response, b"200 OK", [], b"late head\n", True)


def twice(q):
    _ignore(host.start_response, b"200 OK", [host.Header(b"Content-Length", b"6")], b"first\n", False)
    _ignore(host.start_response, b"500 Oops", [], b"second\n", True)


def many_headers(q):
    n = int(q.get("n", b"10000"))
    headers = [host.Header(b"X-H%d" % i, b"v") for i in range(n)]
    _ignore(host.start_response, b"200 OK", headers, b"many\n", True)


def huge_header(q):
    size = int(q.get("size", b"1048576"))
    _ignore(host.start_response, b"200 OK", [host.Header(b"X-Huge", b"h" * size)], b"huge\n", True)


def log_flood(q):
    """One huge ``log-error`` message, one huge write to stdout, or many
    small lines: ``kind`` is ``message``, ``stdout`` or ``lines``."""
    kind, size = q.get("kind", b"message"), int(q.get("size", b"104857600"))
    if kind == b"message":
        log.log_error("m" * size)
    elif kind == b"stdout":
        data = memoryview(b"o" * size)
        while data:  # each write takes what the host's stream has room for
            data = data[os.write(1, data) :]
    else:
        for i in range(size):
            log.log_error(f"line {i}")
    _ignore(host.start_response, b"200 OK", [], b"flooded\n", True)


def open_files(q):
    """Opens one of the app's own files again and again without closing it;
    reports how far it got (the host should stop it long before it ends)."""
    print("open-files started", flush=True)
    fds, error = [], None
    try:
        for _ in range(int(q.get("n", b"100000"))):
            fds.append(os.open(__file__, os.O_RDONLY))
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    body = f"opened {len(fds)}; {error}\n".encode()
    _ignore(host.start_response, b"200 OK", [], body, True)


ROUTES = {
    "/raw/status": status,
    "/raw/header": header,
    "/raw/length": length,
    "/raw/write-first": write_first,
    "/raw/twice": twice,
    "/raw/many-headers": many_headers,
    "/raw/huge-header": huge_header,
    "/raw/log": log_flood,
    "/raw/open": open_files,
}


def install():
    """Routes ``/raw/`` requests around the adapter (see the module docs)."""
    real = adapter.handle

    def handle(app, url_scheme, pairs, env):
        environ = dict(pairs)
        route = ROUTES.get(environ.get("PATH_INFO", ""))
        if route is None:
            return real(app, url_scheme, pairs, env)
        route(_query(environ))
        sys.stdout.flush()

    adapter.handle = handle
