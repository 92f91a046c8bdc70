"""Benchmark app: a Flask JSON endpoint with a route parameter."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/api/items/<int:item_id>")
def item(item_id):
    return jsonify(id=item_id, name=f"item {item_id}", tags=["a", "b", "c"], price=9.99)
