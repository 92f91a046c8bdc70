"""Real network clients in the sandbox (issue 18): pg8000, redis-py, PyMySQL,
http.client and the socket module, against servers the tests start.

Each route takes the server's address in its query string and answers JSON:
``{"ok": true, "value": ...}`` or ``{"ok": false, "error": "Type: message"}``.
The clients are imported at module level, as apps import them, so the build
proves they import in the guest.
"""

import json
import socket
import ssl
import time
from urllib.parse import parse_qs

import pg8000.native
import pymysql
import redis


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as e:  # the test reads the type and the message
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def pg(q):
    """`op=write&body=...` inserts a row; `op=read` lists every row."""
    # pg8000 tries TLS by default when the server offers it: ask for none.
    conn = pg8000.native.Connection(
        q["user"], host=q["host"], port=int(q["port"]), database=q["db"], password=q["password"],
        timeout=5, ssl_context=False,
    )
    try:
        conn.run("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text NOT NULL)")
        if q["op"] == "write":
            conn.run("INSERT INTO notes (body) VALUES (:body)", body=q["body"])
        return [row[0] for row in conn.run("SELECT body FROM notes ORDER BY id")]
    finally:
        conn.close()


def pg_tls(q):
    """pg8000 asked for TLS: the sandbox has none, and says so."""
    pg8000.native.Connection(
        q["user"], host=q["host"], port=int(q["port"]), database=q["db"], password=q["password"],
        timeout=5, ssl_context=True,
    )


def redis_incr(q):
    r = redis.Redis(host=q["host"], port=int(q["port"]), socket_timeout=5, socket_connect_timeout=5)
    try:
        return r.incr(q.get("key", "hits"))
    finally:
        r.close()


def mysql(q):
    """`op=write&body=...` inserts a row; `op=read` lists every row."""
    conn = pymysql.connect(
        host=q["host"], port=int(q["port"]), user=q["user"], password=q["password"], database=q["db"],
        connect_timeout=5, read_timeout=5, write_timeout=5,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS notes (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT NOT NULL)")
            if q["op"] == "write":
                cur.execute("INSERT INTO notes (body) VALUES (%s)", (q["body"],))
                conn.commit()
            cur.execute("SELECT body FROM notes ORDER BY id")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def tls(q):
    """A TLS handshake through the standard `ssl` module."""
    ctx = ssl.create_default_context()
    with socket.create_connection((q["host"], int(q["port"])), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=q["host"]):
            return "handshake done"


def sockets(q):
    """What of the socket module works, against a plain HTTP server at
    `host`/`port` and a server at `silent` that accepts and never answers."""
    host, port = q["host"], int(q["port"])
    out = {}
    out["getaddrinfo"] = _attempt(
        lambda: sorted({a[4][0] for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    )

    def exchange():
        with socket.create_connection((host, port), timeout=5) as s:
            # sendall of more than one write's worth: 40 headers of 5 kB.
            pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 5000) for i in range(40))
            s.sendall(b"GET / HTTP/1.0\r\n" + pad + b"\r\n")
            first = s.recv(1)  # a partial read: one byte of the reply
            f = s.makefile("rb")
            status = first + f.readline()
            rest = f.read()
            f.close()
            return {"status": status.decode().strip(), "rest_bytes": len(rest), "timeout": s.gettimeout()}

    out["exchange"] = _attempt(exchange)

    def timeout():
        with socket.create_connection((host, int(q["silent"])), timeout=0.5) as s:
            started = time.monotonic()
            try:
                s.recv(1)
            except TimeoutError:
                return round(time.monotonic() - started, 1)
            return "no timeout"

    out["timeout"] = _attempt(timeout)
    out["udp"] = _attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (host, port)))

    def listen(addr):
        s = socket.socket()
        s.bind(addr)
        s.listen()

    out["listen"] = _attempt(lambda: listen(("127.0.0.1", 0)))
    # Binding any address's any port is what a connect does implicitly: it
    # is allowed, but not listening on it.
    out["listen_any"] = _attempt(lambda: listen(("0.0.0.0", 0)))
    return out


def binds(q):
    """Binds `n` sockets to ports the kernel picks and keeps them: how many
    got one."""
    held = []
    for _ in range(int(q["n"])):
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", 0))
        except OSError:
            break
        held.append(s)
    return len(held)


ROUTES = {
    "/binds": binds,
    "/mysql": mysql,
    "/pg": pg,
    "/pg-tls": pg_tls,
    "/redis": redis_incr,
    "/socket": sockets,
    "/tls": tls,
}


def app(environ, start_response):
    route = ROUTES.get(environ["PATH_INFO"])
    if route is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such route\n"]
    result = _attempt(lambda: route(_query(environ)))
    body = json.dumps(result, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
