"""Shared by the admin page's tests: the token, a logged-in client, forms' CSRF tokens."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

ADMIN_TOKEN = "adm_Q2v8LrT5xW1nZ7cK4pB9sD3fG6hJ0mYe"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: TestResponse) -> str:
    """The CSRF token of the first form of a page."""
    found = _CSRF.search(page.get_data(as_text=True))
    assert found is not None, "no form with a CSRF token on the page"
    return found.group(1)


def log_in(client: FlaskClient, token: str = ADMIN_TOKEN, **headers: str) -> TestResponse:
    """Fill in and send the login form."""
    form = client.get("/admin/login")
    return client.post(
        "/admin/login", data={"token": token, "csrf_token": csrf_of(form)}, headers=headers
    )


def press(client: FlaskClient, page: str, action: str, **fields: str) -> TestResponse:
    """Send one of ``page``'s forms to ``action`` with its CSRF token, as the button does."""
    token = csrf_of(client.get(page))
    return client.post(action, data={"csrf_token": token, **fields})


def member_page(client: FlaskClient, email: str) -> TestResponse:
    """Search for a buyer as the member page's form does (a POST: no email in a URL)."""
    return press(client, "/admin/member", "/admin/member", email=email)
