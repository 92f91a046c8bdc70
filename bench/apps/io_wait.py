"""Benchmark app: a request that waits 50 ms, as on a database or API call,
then answers; most real apps are bound like this, not by their CPU."""

import time


def app(environ, start_response):
    time.sleep(0.05)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"waited 50 ms\n"]
