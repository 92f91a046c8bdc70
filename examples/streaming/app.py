"""A generator that yields a line every 300 ms: each reaches the client as it is made."""

import time


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])

    def ticks():
        for i in range(1, 11):
            yield f"tick {i} at {time.monotonic():.3f}\n".encode()
            time.sleep(0.3)
        yield b"done\n"

    return ticks()
