"""An app whose dependency (ujson) is pure C: the build must refuse it by name."""

import ujson


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [ujson.dumps({"ok": True}).encode()]
