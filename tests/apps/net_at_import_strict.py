"""An app that connects at import and does not catch the failure."""

import socket

socket.create_connection(("127.0.0.1", 9), timeout=1)


def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]
