"""The bare Flask app row 3 compares intake with: every POST answered 200, nothing done.

Served by the same gunicorn command as the bridge: ``bench.bare_app:create_app()``.
"""

from __future__ import annotations

from flask import Flask


def create_app() -> Flask:
    """A Flask app answering 200 to the bridge's routes without looking at the body."""
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        return "ok", 200

    @app.post("/webhooks/stripe")
    def stripe() -> tuple[dict[str, int], int]:
        return {"queued": 0}, 200

    return app
