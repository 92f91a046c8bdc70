"""An app whose unknown paths raise instead of answering 404: the automatic
warm-up of `wsgi-wasm build` must warn about it and go on."""


def app(environ, start_response):
    if environ["PATH_INFO"] == "/ok":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]
    raise LookupError(f"no route for {environ['PATH_INFO']}")
