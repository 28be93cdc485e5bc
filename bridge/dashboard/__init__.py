"""The operator's page, ``/admin``: the bridge's state at a glance, served by the web.

Off unless ``BRIDGE_ADMIN_TOKEN`` is set: then nothing under ``/admin`` exists (404).
On, it reads what the ``bridge status`` and ``bridge member`` commands read
(``bridge/status.py``, ``bridge/inspect.py``), so the page and the commands never disagree,
and its buttons do what ``bridge jobs replay|purge`` do. ``auth`` keeps it to the operator;
``views`` renders it.
"""

from __future__ import annotations

from flask import Flask

from bridge.settings import Settings


def init_admin(app: Flask, settings: Settings) -> None:
    """Mount the page on ``app`` when a token is configured."""
    if settings.admin_token is None:
        return
    from bridge.dashboard import auth, views

    auth.protect(app, settings.admin_token)
    app.register_blueprint(views.bp)
