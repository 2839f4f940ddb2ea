"""Ceilings for the benchmark: what the WSGI server and Flask cost before any work of ours.

``bare`` is a WSGI callable that returns a constant; ``flask_app`` is a minimal Flask route returning the same bytes.
"""
from flask import Flask, Response

BODY = b'{"hello":"world"}'


def bare(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
    return [BODY]


flask_app = Flask(__name__)


@flask_app.get("/")
def hello():
    return Response(BODY, mimetype="application/json")
