"""The Flask application factory (gunicorn serves ``bridge.app:create_app()``)."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import Flask, current_app
from rq import Queue

from bridge import logs
from bridge.intake import Intake
from bridge.products import load_catalog
from bridge.queues import bridge_queue, connect
from bridge.settings import Settings, load_env_file, retry_policy


@dataclass
class Bridge:
    """The per-app objects of the web side (``app.extensions["bridge"]``)."""

    settings: Settings
    redis: redis.Redis
    queue: Queue
    intake: Intake


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; nothing is read or connected at import time.

    Without ``settings``, they come from the environment and ``.env`` (under gunicorn,
    ``bridge/gunicorn_conf.py`` has validated them already, in the master).
    """
    if settings is None:
        load_env_file()
        settings = Settings.from_env()
    logs.configure(settings.log_level, settings.secret_values())
    app = Flask("bridge")
    # One byte over the limit, so web._raw_body can tell a truncated chunked body.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    if settings.products_file is not None:
        # Only validated here, so a broken file stops the web at start-up; workers apply it.
        load_catalog(settings.products_file)
    connection = connect(settings)
    queue = bridge_queue(connection)
    app.extensions["bridge"] = Bridge(
        settings=settings,
        redis=connection,
        queue=queue,
        intake=Intake(queue, retry_policy(settings)),
    )
    from bridge.dashboard import init_admin
    from bridge.web import bp

    app.register_blueprint(bp)
    init_admin(app, settings)
    return app


def current_bridge() -> Bridge:
    """The Bridge of the app handling the current request."""
    bridge: Bridge = current_app.extensions["bridge"]
    return bridge
