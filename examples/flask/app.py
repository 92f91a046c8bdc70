"""A small Flask site: a JSON API, a Jinja template, and a form with a session.

Every request runs in a fresh sandbox, so nothing in this module's globals
survives between requests; the session lives in a signed cookie on the client.
"""

import sys

from flask import Flask, jsonify, redirect, render_template, request, session, url_for

app = Flask(__name__)
# A demo key: it signs the session cookie. A real deployment passes its own
# through configuration, never through source code.
app.secret_key = b"wsgi-wasm demo key: replace me"

BOOKS = [
    {"id": 1, "title": "Structure and Interpretation of Computer Programs", "year": 1985},
    {"id": 2, "title": "The Art of Computer Programming", "year": 1968},
    {"id": 3, "title": "Crafting Interpreters", "year": 2021},
]


@app.get("/")
def index():
    return render_template("index.html", name=session.get("name"), books=BOOKS)


@app.post("/hello")
def hello():
    name = request.form.get("name", "").strip()[:40]
    if name:
        session["name"] = name
    return redirect(url_for("index"))


@app.get("/api/books")
def books():
    return jsonify(books=BOOKS, python=sys.version.split()[0], platform=sys.platform)


@app.get("/api/books/<int:book_id>")
def book(book_id):
    for b in BOOKS:
        if b["id"] == book_id:
            return jsonify(b)
    return jsonify(error="no such book"), 404


@app.post("/api/echo")
def echo():
    return jsonify(received=request.get_json(force=True, silent=True))
