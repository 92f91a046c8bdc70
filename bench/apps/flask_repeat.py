"""Measures what a fresh instance costs Flask: the benchmark's endpoint run K times per request.

Not part of bench/run.sh. Build each variant with the Flask requirements and
``--warmup /api/items/1``, serve it, and compare the server's CPU per request
(see README, "Benchmark"): ``app0`` answers without calling Flask (the fixed
cost of an instance of the same snapshot), ``app1`` is the endpoint, and each
extra dispatch in ``app2`` and ``app5`` runs in an instance that is already
warm.
"""

from flask_json import app as flask_app


def _discard(status, headers, exc_info=None):
    return lambda data: None


def _repeat(k):
    def app(environ, start_response):
        for _ in range(k - 1):
            for _ in flask_app(dict(environ), _discard):
                pass
        return flask_app(environ, start_response)

    return app


def app0(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]


app1 = _repeat(1)
app2 = _repeat(2)
app5 = _repeat(5)
