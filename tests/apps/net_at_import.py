"""An app that tries the network at import, and catches the failure: it
must build, and its requests must still reach what they are granted."""

import json
import socket
import urllib.parse
import urllib.request

# Making a socket touches no network: allowed while the app is built.
socket.socket().close()

try:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
    AT_IMPORT = "connected"
except OSError as e:
    AT_IMPORT = str(e)


def app(environ, start_response):
    q = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{q['port']}/", timeout=5) as resp:
            fetched = resp.read().decode()
    except Exception as e:  # noqa: BLE001 - the outcome is the answer
        fetched = f"{type(e).__name__}: {e}"
    body = json.dumps({"at_import": AT_IMPORT, "fetched": fetched}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
