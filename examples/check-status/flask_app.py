"""A Flask view: `flask --app flask_app run`, then GET /check-status."""

from __future__ import annotations

from check_status import check_status
from flask import Flask, Response, jsonify

from apiauth import get_secrets

app = Flask(__name__)


@app.get("/check-status")
def check() -> tuple[Response, int]:
    status, body = check_status(get_secrets())
    return jsonify(body), status
