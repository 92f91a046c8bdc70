"""A TLS peer for the tests, run natively (not in the sandbox): HTTPS on
127.0.0.1, with the certificate and key it is given.

    python3 tls_peer.py CERT KEY

`GET /big/N` answers N bytes (`0123456789` over and over), a request with a
body answers its length and SHA-256, anything else `hello over tls`.

It prints `listening PORT` once it listens, then one line per connection:
`handshake ok TLSv1.3` and the request line it answered, or `handshake
failed: REASON` (the alert the client sent, such as `TLSV1_ALERT_UNKNOWN_CA`)
or `no tls: ...`. So a test can tell a client that refused the certificate
from one that never got to the handshake.
"""

import hashlib
import socket
import ssl
import sys


def main():
    cert, key = sys.argv[1:3]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    server = socket.create_server(("127.0.0.1", 0))
    print("listening", server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        conn.settimeout(10)
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
        except ssl.SSLError as e:
            print("handshake failed:", e.reason, flush=True)
            conn.close()
            continue
        except OSError as e:
            print("no tls:", e, flush=True)
            conn.close()
            continue
        print("handshake ok", tls.version(), tls.selected_alpn_protocol(), flush=True)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                head += chunk
            head, _, body = head.partition(b"\r\n\r\n")
            line, *fields = head.decode().split("\r\n")
            print("request", line, flush=True)
            length = next((int(v) for k, _, v in (f.partition(":") for f in fields) if k.lower() == "content-length"), 0)
            while len(body) < length:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                body += chunk
            path = line.split()[1]
            if length:
                body = b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
            elif path.startswith("/big/"):
                body = (b"0123456789" * (int(path[5:]) // 10 + 1))[: int(path[5:])]
            else:
                body = b"hello over tls\n"
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            tls.unwrap()
        except OSError as e:
            print("connection failed:", e, flush=True)
        finally:
            conn.close()


if __name__ == "__main__":
    main()
