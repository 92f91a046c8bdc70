"""The smallest WSGI app: says hello, with the path it was asked for."""


def app(environ, start_response):
    body = f"Hello from a fresh sandbox! You asked for {environ['PATH_INFO']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [body]
