"""Real network clients in the sandbox (issues 18 and 32): pg8000, redis-py,
PyMySQL, requests, urllib, smtplib, http.client and the socket module,
against servers the tests start, over TLS where they ask for it.

Each route takes the server's address in its query string and answers JSON:
``{"ok": true, "value": ...}`` or ``{"ok": false, "error": "Type: message"}``.
The clients are imported at module level, as apps import them, so the build
proves they import in the guest.
"""

import hashlib
import json
import socket
import ssl
import time
from urllib.parse import parse_qs

import smtplib
import urllib.request

import pg8000.native
import pymysql
import redis
import requests


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
    """pg8000 with TLS (its SSLRequest, then the handshake on the connected
    socket): what PostgreSQL says of the session."""
    conn = pg8000.native.Connection(
        q["user"], host=q["host"], port=int(q["port"]), database=q["db"], password=q["password"],
        timeout=5, ssl_context=True,
    )
    try:
        [[ssl_on, version]] = conn.run("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return {"ssl": ssl_on, "version": version}
    finally:
        conn.close()


def https(q):
    """A GET of `url` with `client` (urllib or requests), or a POST of
    `post=N` bytes; `unverified=1` asks for no verification, as
    `_create_unverified_context()` and `verify=False` do. The body comes
    back as text, or as its length and SHA-256 with `digest=1`. An error
    names its cause's type first."""
    url, unverified = q["url"], q.get("unverified") == "1"
    data = bytes(i % 251 for i in range(int(q["post"]))) if "post" in q else None
    try:
        if q.get("client") == "requests":
            resp = requests.request("POST" if data else "GET", url, data=data, timeout=5, verify=not unverified)
            status, body = resp.status_code, resp.content
        else:
            context = ssl._create_unverified_context() if unverified else None
            with urllib.request.urlopen(url, data=data, timeout=5, context=context) as resp:
                status, body = resp.status, resp.read()
    except Exception as e:  # noqa: BLE001 - the test reads what it was
        raise RuntimeError(_chain(e)) from None
    if q.get("digest") == "1":
        return {"status": status, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return {"status": status, "body": body.decode()}


def _chain(e):
    """Every exception `e` wraps (urllib's `reason`, requests' and urllib3's
    causes and arguments), outermost first, as `Type: message` lines."""
    seen, out, pending = set(), [], [e]
    while pending:
        err = pending.pop(0)
        if id(err) in seen:
            continue
        seen.add(id(err))
        out.append(f"{type(err).__name__}: {err}")
        for inner in (getattr(err, "reason", None), err.__cause__, err.__context__, *err.args):
            if isinstance(inner, BaseException):
                pending.append(inner)
    return "\n".join(out)


def tls_socket(q):
    """The `ssl` module on a plain socket: wrap, exchange, and what the
    session reports."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((q["host"], int(q["port"])), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=q.get("name", q["host"])) as tls:
            tls.sendall(b"GET /raw HTTP/1.1\r\nHost: x\r\n\r\n")
            with tls.makefile("rb") as f:
                status = f.readline().decode().strip()
            cert = tls.getpeercert()
            return {
                "status": status,
                "version": tls.version(),
                "cipher": tls.cipher()[1],
                "alpn": tls.selected_alpn_protocol(),
                "subject_alt_name": [list(x) for x in cert["subjectAltName"]],
                "issuer": [list(rdn[0]) for rdn in cert["issuer"]],
                "der": len(tls.getpeercert(binary_form=True)),
            }


def smtp(q):
    """smtplib: EHLO, STARTTLS on the connected socket, then a message."""
    with smtplib.SMTP(q["host"], int(q["port"]), timeout=5) as s:
        s.ehlo()
        s.starttls(context=ssl.create_default_context())
        s.ehlo()
        s.sendmail("app@example.com", ["ops@example.com"], "Subject: from the sandbox\r\n\r\nsent over STARTTLS\r\n")
        return "sent"


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
    "/https": https,
    "/tls-socket": tls_socket,
    "/smtp": smtp,
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
