"""The WSGI app the integration tests talk to: one route per behaviour.

Deliberately imports almost nothing at module level, so that the lazy-import
route proves modules load at request time, not from the build snapshot.
"""

import os
import sys
import time

import hostile

# Requests under /raw/ bypass the guest SDK and call the host imports
# directly, as a hostile app may (see hostile.py).
hostile.install()

# Module state: if anything survived from one request to the next, /counter
# would count past 1.
COUNTER = 0
CACHE = {}


def _json(start_response, obj, status="200 OK"):
    import json

    body = json.dumps(obj, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _query(environ):
    from urllib.parse import parse_qs

    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def environ_route(environ, start_response):
    safe = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int, tuple))}
    safe["wsgi.version"] = list(environ["wsgi.version"])
    safe["wsgi.input.type"] = type(environ["wsgi.input"]).__name__
    return _json(start_response, safe)


def echo(environ, start_response):
    q = _query(environ)
    inp = environ["wsgi.input"]
    mode = q.get("mode", "read")
    if mode == "read":
        body = inp.read()
    elif mode == "chunks":
        parts = []
        while True:
            piece = inp.read(int(q.get("size", "1000")))
            if not piece:
                break
            parts.append(piece)
        body = b"".join(parts)
    elif mode == "readline":
        parts = []
        while True:
            line = inp.readline(int(q.get("size", "-1")))
            if not line:
                break
            parts.append(line)
        body = b"".join(parts)
    elif mode == "readlines":
        body = b"".join(inp.readlines())
    else:  # iterate
        body = b"".join(inp)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


def echo_digest(environ, start_response):
    """Reads the body in pieces and answers its size and SHA-256: no buffering."""
    import hashlib

    h, n = hashlib.sha256(), 0
    inp = environ["wsgi.input"]
    while True:
        piece = inp.read(65536)
        if not piece:
            break
        h.update(piece)
        n += len(piece)
    return _json(start_response, {"bytes": n, "sha256": h.hexdigest()})


def stream(environ, start_response):
    q = _query(environ)
    n, delay = int(q.get("n", "5")), float(q.get("delay", "0.3"))
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        for i in range(n):
            yield f"chunk {i} {time.monotonic():.3f}\n".encode()
            if i + 1 < n:
                time.sleep(delay)

    return gen()


def big(environ, start_response):
    size = int(_query(environ).get("size", str(10 * 1024 * 1024)))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def gen():
        block = bytes(range(256)) * 256  # 64 KiB
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece

    return gen()


def raise_before(environ, start_response):
    raise RuntimeError("boom before start_response: secret-traceback-marker")


def raise_after(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"first part\n"
        raise RuntimeError("boom after the headers")

    return gen()


def counter(environ, start_response):
    global COUNTER
    COUNTER += 1
    CACHE.setdefault("seen", []).append(environ.get("QUERY_STRING"))
    # More dirty memory than a pool slot keeps resident (4 MiB), so the
    # slot's reset has to both copy pages back and hand others to the kernel.
    CACHE.setdefault("ballast", []).append(bytearray(b"x") * (8 << 20))
    return _json(start_response, {"counter": COUNTER, "cache": len(CACHE["seen"])})


# Made at import, so in the snapshot: 8 KiB each, side by side in memory.
PAGES = [bytearray(8192) for _ in range(512)]


def scatter(environ, start_response):
    # Reports how many of the snapshot's buffers this instance found written,
    # then writes one byte into every other one: 256 separate written
    # regions, within what a pool slot keeps resident, so the slot's reset
    # has to find and copy back every one of them.
    written = sum(1 for page in PAGES if any(page))
    for page in PAGES[::2]:
        page[100] = 1
    return _json(start_response, {"written_before": written})


def immortal(environ, start_response):
    # `wsgi-wasm build` made every object of the snapshot immortal; objects
    # made by the request are counted as usual.
    fresh = object()
    return _json(
        start_response,
        {
            "snapshot_function": sys.getrefcount(immortal),
            "snapshot_module": sys.getrefcount(os),
            # Reachable only through this function's code object, which the
            # GC does not look into.
            "snapshot_constant": sys.getrefcount(b"a constant of this code only"),
            "fresh": sys.getrefcount(fresh),
        },
    )


# What a request allocates, by kind; the route makes 64 of each and keeps them.
FRESH_KINDS = {
    "object": lambda i: object(),
    "int": lambda i: 10**6 + i,
    "float": lambda i: i + 0.5,
    "str": lambda i: "s" * (i % 40 + 2),
    "bytes": lambda i: b"b" * (i * 37 % 3000 + 2),
    "tuple": lambda i: (i,) * (i % 20 + 1),
    "list": lambda i: [i],
    "dict": lambda i: {"k": i},
}


def fresh_memory(environ, start_response):
    # `wsgi-wasm build` fills the free memory of the snapshot's heap, and
    # CPython's free lists, so that what a request allocates lands above the
    # snapshot's objects instead of in holes between them (each hole a page
    # the request writes, and its reset copies back). The build's own record
    # of where its objects end:
    from wsgi_wasm.build import _SNAPSHOT_TOP as top

    kept = {kind: [make(i) for i in range(64)] for kind, make in FRESH_KINDS.items()}
    # The 4 KiB pages below that top which the objects of each kind landed on.
    pages = {kind: len({id(obj) >> 12 for obj in objs if id(obj) <= top}) for kind, objs in kept.items()}
    return _json(start_response, {"pages_below": pages, "top": top})


# hashlib is not among them: the SDK imports it at build time, to give it
# pbkdf2_hmac and scrypt (wsgi_wasm/kdf.py); csv stands in its place.
LAZY = ("decimal", "encodings.idna", "fractions", "csv", "statistics", "uuid", "xml.dom.minidom", "email.mime.text")


def lazy(environ, start_response):
    # None of these is imported at build time; each must load now.
    preloaded = [name for name in LAZY if name in sys.modules]
    import csv
    import decimal
    import encodings.idna
    import fractions
    import hashlib
    import io
    import statistics
    import uuid
    import xml.dom.minidom
    from email.mime.text import MIMEText

    return _json(
        start_response,
        {
            "decimal": str(decimal.Decimal("1.1") + decimal.Decimal("2.2")),
            "idna": "bücher.example".encode("idna").decode(),
            "fraction": str(fractions.Fraction(3, 6)),
            "sha256": hashlib.sha256(b"abc").hexdigest()[:16],
            "csv": next(csv.reader(io.StringIO('a,"b,c"'))),
            "mean": statistics.mean([1, 2, 3, 4]),
            "uuid_version": uuid.uuid4().version,
            "xml": xml.dom.minidom.parseString("<a><b/></a>").documentElement.tagName,
            "mime": MIMEText("hi")["Content-Type"],
            "preloaded": preloaded,
        },
    )


def random_route(environ, start_response):
    import random
    import secrets

    return _json(
        start_response,
        {"random": random.random(), "urandom": os.urandom(16).hex(), "secrets": secrets.token_hex(16)},
    )


def write_callable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    write(b"directly, ")
    return [b"then returned\n"]


def file_wrapper(environ, start_response):
    import io

    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](io.BytesIO(b"line\n" * 1000), 100)


def exc_info_route(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("handled")
    except ValueError:
        start_response("503 Busy Right Now", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"replaced by exc_info\n"]


def validated(environ, start_response):
    from wsgiref.validate import validator

    def inner(environ, start_response):
        # The validator insists on read(size), as PEP 3333 allows servers to.
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"validated:", body]

    return validator(inner)(environ, start_response)


def bad_header(environ, start_response):
    start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwned=1")])
    return [b"should never be seen"]


def lying_length(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"0123456789"]


def known_headers(environ, start_response):
    """The headers the adapter learned at warm-up (white box, for one test)."""
    from wsgi_wasm import adapter

    return _json(start_response, sorted(list(item) for item in adapter._KNOWN_HEADERS))


def status_route(environ, start_response):
    code = _query(environ).get("code", "204")
    reasons = {"204": "No Content", "304": "Not Modified", "418": "I'm a teapot"}
    start_response(f"{code} {reasons.get(code, 'Custom')}", [("Content-Type", "text/plain")])
    return [b"" if code in ("204", "304") else b"status body\n"]


def log_route(environ, start_response):
    print("hello from print() in request", environ.get("QUERY_STRING"))
    environ["wsgi.errors"].write("a line for wsgi.errors\n")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"logged\n"]


def print_route(environ, start_response):
    """Prints the query string, percent-decoded: whatever bytes a test
    wants on the app's stdout."""
    from urllib.parse import unquote

    print(unquote(environ.get("QUERY_STRING", "")))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"printed\n"]


def sleep_route(environ, start_response):
    print("sleep started", flush=True)
    time.sleep(float(_query(environ).get("s", "1")))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slept\n"]


def loop_forever(environ, start_response):
    print("loop-forever started", flush=True)
    while True:
        pass


def alloc_forever(environ, start_response):
    hoard = []
    while True:
        hoard.append(bytearray(1024 * 1024))


def hold(environ, start_response):
    """Takes `mib` MiB of memory, writing every page of it, and holds it
    for `s` seconds; a 507 if it cannot (the MemoryError raised, with
    `catch=0`)."""
    q = _query(environ)
    try:
        block = bytearray(b"\x01") * (int(q.get("mib", "1")) << 20)
    except MemoryError:
        if q.get("catch") == "0":
            raise
        start_response("507 Insufficient Storage", [("Content-Type", "text/plain")])
        return [b"MemoryError\n"]
    time.sleep(float(q.get("s", "0")))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"held %d MiB\n" % (len(block) >> 20)]


def recurse(environ, start_response):
    def down(n):
        return down(n + 1) + 1

    return down(0)


def deep_c_recursion(environ, start_response):
    # Lift CPython's own guard so the recursion runs into WebAssembly's stack.
    sys.setrecursionlimit(10**7)
    return recurse(environ, start_response)


def hard_exit(environ, start_response):
    os._exit(3)


def sys_exit(environ, start_response):
    sys.exit(0)


def _attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as e:  # noqa: BLE001 - the outcome is the answer
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def capabilities(environ, start_response):
    """What a hostile app could reach: files, the network, the environment."""
    import socket

    q = _query(environ)

    def read(path):
        with open(path, "rb") as f:
            return f.read(200).decode("latin-1")

    def write(path):
        with open(path, "w") as f:
            f.write("written by the guest\n")
        return path

    def connect():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(("127.0.0.1", int(q.get("port", "22"))))
        return "connected"

    return _json(
        start_response,
        {
            "etc_passwd": _attempt(lambda: read("/etc/passwd")),
            "proc_self": _attempt(lambda: read("/proc/self/environ")),
            "parent_escape": _attempt(lambda: read("/0/../../etc/passwd")),
            "list_root": _attempt(lambda: sorted(os.listdir("/"))),
            "read": _attempt(lambda: read(q["read"])) if "read" in q else None,
            "write": _attempt(lambda: write(q["write"])) if "write" in q else None,
            "socket": _attempt(connect),
            "environ": dict(os.environ),
        },
    )


def endless(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def gen():
        block = b"x" * 65536
        while True:
            yield block

    return gen()


def header_case(environ, start_response):
    # Names as an app writes them, not as HTTP/2 would (lowercase).
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("X-Forwarded-For", "foo, bar, bazz"),
            ("X-XSS-Protection", "0"),
            ("ETag", '"v1"'),
            ("x-lower", "yes"),
        ],
    )
    return [b"case\n"]


def fetch(environ, start_response):
    """An HTTP GET from inside the sandbox: `url`, or `host` and `port`."""
    import urllib.request

    q = _query(environ)
    url = q.get("url") or f"http://{q['host']}:{q['port']}/"

    def get():
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    # `times`: that many fetches, each on a connection of its own.
    results = [_attempt(get) for _ in range(int(q.get("times", "1")))]
    return _json(start_response, {"result": results[-1], "ok": sum(r["ok"] for r in results)})


def whoami(environ, start_response):
    """Which app this is (its TENANT variable) and where it is mounted."""
    import os

    return _json(
        start_response,
        {
            "tenant": os.environ.get("TENANT"),
            "script_name": environ["SCRIPT_NAME"],
            "path_info": environ["PATH_INFO"],
            "appid": environ.get("UWSGI_APPID"),
            "server_name": environ["SERVER_NAME"],
            "http_host": environ.get("HTTP_HOST"),
        },
    )


def kdf_route(environ, start_response):
    """``hashlib.pbkdf2_hmac`` and ``hashlib.scrypt``: a JSON list of calls
    (see ``kdf_calls.kdf_call``) in the body, their results out."""
    import json

    from kdf_calls import kdf_call

    specs = json.loads(environ["wsgi.input"].read())
    return _json(start_response, [kdf_call(spec) for spec in specs])


def tz_route(environ, start_response):
    """A time zone from ``zoneinfo``, which needs the bundled ``tzdata``:
    the UTC offset of ``key`` (default Europe/Paris) on two dates."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(_query(environ).get("key", "Europe/Paris"))
    offsets = [str(datetime(2026, month, 1, 12, tzinfo=zone).utcoffset()) for month in (1, 7)]
    return _json(start_response, {"key": zone.key, "offsets": offsets})


def list_of_chunks(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"a", b"b", b"", b"c\n"]


ROUTES = {
    "/": environ_route,
    "/environ": environ_route,
    "/echo": echo,
    "/echo-digest": echo_digest,
    "/stream": stream,
    "/big": big,
    "/raise-before": raise_before,
    "/raise-after": raise_after,
    "/counter": counter,
    "/immortal": immortal,
    "/fresh-memory": fresh_memory,
    "/scatter": scatter,
    "/lazy": lazy,
    "/random": random_route,
    "/write": write_callable,
    "/file-wrapper": file_wrapper,
    "/exc-info": exc_info_route,
    "/validate": validated,
    "/bad-header": bad_header,
    "/lying-length": lying_length,
    "/known-headers": known_headers,
    "/status": status_route,
    "/log": log_route,
    "/sleep": sleep_route,
    "/loop-forever": loop_forever,
    "/alloc-forever": alloc_forever,
    "/hold": hold,
    "/list": list_of_chunks,
    "/whoami": whoami,
    "/fetch": fetch,
    "/case": header_case,
    "/recurse": recurse,
    "/deep-c-recursion": deep_c_recursion,
    "/exit": hard_exit,
    "/sys-exit": sys_exit,
    "/capabilities": capabilities,
    "/endless": endless,
    "/kdf": kdf_route,
    "/tz": tz_route,
    "/print": print_route,
}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/environ/"):
        route = environ_route
    elif "whoami" in path:
        route = whoami
    else:
        route = ROUTES.get(path)
    if route is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such route\n"]
    return route(environ, start_response)


def not_an_app(environ):
    return []


NOT_CALLABLE = 42
