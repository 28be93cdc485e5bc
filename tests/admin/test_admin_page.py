"""The operator's page in-process (Flask's test client) against the real Redis, queue,
worker code and Sotion sandbox: off without a token, the login, the cookie, CSRF, and
each page and button doing what the CLI does. The browser tests drive the same page in
Chromium (tests/admin/test_admin_browser.py)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import redis
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue

from bridge.app import create_app
from bridge.cli import main
from bridge.dashboard import auth
from bridge.dashboard.auth import FAILURES_PREFIX, MAX_FAILURES, MAX_FAILURES_IN_ALL, SESSION_HOURS
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import SotionClient
from tests.admin.pages import ADMIN_TOKEN, csrf_of, log_in, member_page, press
from tests.conftest import drain
from tests.reconcile.scripted import ScriptedSource, observed
from tests.test_stripe_flow import EMAIL, T0, checkout_payment, deliver, member_of
from workers import runtime as worker_runtime


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, admin_token=ADMIN_TOKEN)


@pytest.fixture
def operator(client: FlaskClient) -> FlaskClient:
    """A client logged in as the operator."""
    assert log_in(client).status_code == 302
    return client


def failed_purchase(client: FlaskClient, queue: Queue, sotion: SandboxServer) -> str:
    """A purchase whose job fails for good (Sotion answers 503 to every try)."""
    sotion.faults.inject("503", count=50)
    event_id = deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)
    sotion.faults.clear()
    failed = queue.failed_job_registry.get_job_ids()
    assert len(failed) == 1, failed
    assert event_id
    return failed[0]


# -- off, login, cookie --------------------------------------------------------------------


def test_without_a_token_there_is_no_admin_page(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    off = create_app(dataclasses.replace(settings, admin_token=None)).test_client()
    for path in ("/admin/", "/admin/login", "/admin/member", "/admin/static/admin.css"):
        assert off.get(path).status_code == 404, path
    assert off.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 404


def test_every_page_asks_for_the_login_first(client: FlaskClient) -> None:
    for path in ("/admin/", "/admin/member", "/admin/failed", "/admin/events"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/admin/login?next=/admin/")


def test_logging_in_sets_a_strict_httponly_cookie_for_the_admin_path_only(
    client: FlaskClient,
) -> None:
    response = log_in(client)

    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("bridge_admin=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/admin"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain HTTP (a local run): the browser would drop it
    assert ADMIN_TOKEN not in cookie
    assert client.get("/admin/").status_code == 200


def test_behind_a_tls_proxy_the_cookie_is_secure(client: FlaskClient) -> None:
    response = log_in(client, **{"X-Forwarded-Proto": "https"})
    assert "; Secure" in response.headers["Set-Cookie"]


def test_a_wrong_token_is_refused_and_repeated_failures_lock_the_login(
    client: FlaskClient,
) -> None:
    wrong = log_in(client, token="adm_not_the_right_token_at_all_000000")
    assert wrong.status_code == 401
    assert "That is not the token." in wrong.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302
    for _ in range(MAX_FAILURES - 1):
        log_in(client, token="adm_still_not_it_0000000000000000000")
    # Locked for a while: even the right token waits.
    assert log_in(client).status_code == 429
    assert client.get("/admin/").status_code == 302


def test_a_next_address_elsewhere_is_not_followed(client: FlaskClient) -> None:
    form = client.get("/admin/login")
    response = client.post(
        "/admin/login?next=//evil.example/admin",
        data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form)},
    )
    assert response.headers["Location"] == "/admin/"


def test_logging_out_ends_the_session(operator: FlaskClient) -> None:
    response = press(operator, "/admin/", "/admin/logout")
    assert response.status_code == 302 and response.headers["Location"] == "/admin/login"
    assert operator.get("/admin/").status_code == 302


# -- CSRF ----------------------------------------------------------------------------------


def test_a_post_without_or_with_a_bad_csrf_token_is_refused_and_changes_nothing(
    operator: FlaskClient, client: FlaskClient, queue: Queue, sotion: SandboxServer
) -> None:
    job_id = failed_purchase(client, queue, sotion)
    missing = operator.post("/admin/failed/purge", data={"job_id": job_id})
    forged = operator.post("/admin/failed/purge", data={"job_id": job_id, "csrf_token": "x.y"})

    for response in (missing, forged):
        assert response.status_code == 400
        assert "Refused" in response.get_data(as_text=True)
    assert queue.failed_job_registry.get_job_ids() == [job_id]


def test_a_post_without_a_session_is_refused(client: FlaskClient) -> None:
    token = csrf_of(client.get("/admin/login"))  # a valid token, but nobody logged in
    response = client.post("/admin/failed/replay", data={"all": "1", "csrf_token": token})
    assert response.status_code == 403


# -- pages ---------------------------------------------------------------------------------


def test_the_member_page_tells_the_story_of_a_purchase(
    operator: FlaskClient, queue: Queue, runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    deliver(operator, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)
    member = member_of(sotion_api)

    html = member_page(operator, EMAIL).get_data(as_text=True)

    assert "Has access" in html
    assert EMAIL in html  # in full, to the logged-in operator
    assert member.id in html
    assert "stripe" in html and "pi_flow_1" in html
    assert "applied" in html


def test_failed_jobs_show_masked_emails_and_a_replay_applies_them(
    operator: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    job_id = failed_purchase(operator, queue, sotion)

    page = operator.get("/admin/failed").get_data(as_text=True)
    assert job_id in page and "b***@example.com" in page and EMAIL not in page

    response = press(operator, "/admin/failed", "/admin/failed/replay", job_id=job_id)
    assert response.status_code == 302
    assert "1 job(s) put back on the queue." in operator.get("/admin/failed").get_data(True)
    drain(queue)
    assert member_of(sotion_api).paid is True
    assert "No failed jobs." in operator.get("/admin/failed").get_data(as_text=True)


def test_purge_deletes_a_failed_job(
    operator: FlaskClient, queue: Queue, runtime: worker_runtime.Runtime, sotion: SandboxServer
) -> None:
    job_id = failed_purchase(operator, queue, sotion)
    press(operator, "/admin/failed", "/admin/failed/purge", job_id=job_id)
    assert queue.failed_job_registry.get_job_ids() == []
    assert queue.fetch_job(job_id) is None


def test_the_member_buttons_resync_and_replay(
    operator: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    job_id = failed_purchase(operator, queue, sotion)
    page = "/admin/member"
    assert job_id in member_page(operator, EMAIL).get_data(as_text=True)

    press(operator, page, "/admin/member/replay", email=EMAIL)
    drain(queue)
    member = member_of(sotion_api)
    assert member.paid is True
    sotion_api.update_member(member.id, paid=False)  # drift made by hand

    press(operator, page, "/admin/member/resync", email=EMAIL)
    drain(queue)
    assert sotion_api.get_member(member.id).paid is True


def test_the_events_page_lists_deliveries_and_filters_them(
    operator: FlaskClient, queue: Queue, runtime: worker_runtime.Runtime
) -> None:
    deliver(operator, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)

    everything = operator.get("/admin/events").get_data(as_text=True)
    assert "checkout.session.completed" in everything and EMAIL in everything
    other = operator.get("/admin/events?provider=gumroad").get_data(as_text=True)
    assert "checkout.session.completed" not in other
    assert "No delivery matches." in other


def test_the_overview_and_bridge_status_agree(
    operator: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    env: dict[str, str],
) -> None:
    failed_purchase(operator, queue, sotion)
    cli = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).output)

    html = operator.get("/admin/").get_data(as_text=True)
    assert cli["queue"]["failed"] == 1
    assert f'<span class="value" id="failed-count">{cli["queue"]["failed"]}</span>' in html
    assert "Needs attention" in html
    assert 'id="chart-stripe"' in html and "1 trouble" in html


def test_no_secret_is_ever_on_a_page(
    operator: FlaskClient, queue: Queue, runtime: worker_runtime.Runtime, settings: Settings
) -> None:
    deliver(operator, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)
    pages = {path: operator.get(path) for path in ("/admin/", "/admin/failed", "/admin/events")}
    pages["member"] = member_page(operator, EMAIL)
    for path, response in pages.items():
        html = response.get_data(as_text=True)
        for secret in settings.secret_values():
            assert secret not in html, path
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"


# -- what a hostile client tries -----------------------------------------------------------


def test_a_forwarded_header_that_is_no_address_does_not_lift_the_limit(
    client: FlaskClient,
) -> None:
    for attempt in range(MAX_FAILURES):
        spoofed = {"X-Forwarded-For": f"not-an-address-{attempt}"}
        assert (
            log_in(client, token="adm_wrong_0000000000000000000000000", **spoofed).status_code
            == 401
        )
    assert log_in(client, **{"X-Forwarded-For": "still-not-one"}).status_code == 429


def test_a_flood_from_many_addresses_is_stopped_in_all_and_makes_few_keys(
    client: FlaskClient, redis_conn: redis.Redis
) -> None:
    wrong = "adm_wrong_0000000000000000000000000"
    for n in range(MAX_FAILURES_IN_ALL + 20):
        log_in(client, token=wrong, **{"X-Forwarded-For": f"10.0.{n // 250}.{n % 250 + 1}"})
    assert log_in(client, **{"X-Forwarded-For": "192.0.2.7"}).status_code == 429
    assert len(redis_conn.keys(FAILURES_PREFIX + "*")) <= MAX_FAILURES_IN_ALL + 1


def test_logging_in_again_and_again_is_no_failure(client: FlaskClient) -> None:
    for _ in range(MAX_FAILURES + 2):
        assert log_in(client).status_code == 302


def test_a_next_address_with_a_line_break_is_not_followed(client: FlaskClient) -> None:
    form = client.get("/admin/login")
    response = client.post(
        "/admin/login?next=/admin/%0d%0aX-Injected:1",
        data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form)},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/"
    assert "X-Injected" not in response.headers


def test_logging_out_ends_every_copy_of_the_session(operator: FlaskClient, app: Flask) -> None:
    copy = app.test_client()
    cookie = operator.get_cookie("bridge_admin", path="/admin")
    assert cookie is not None
    copy.set_cookie("bridge_admin", cookie.value, path="/admin")
    assert copy.get("/admin/").status_code == 200

    press(operator, "/admin/", "/admin/logout")

    assert copy.get("/admin/").status_code == 302


def test_a_session_ends_after_its_hours_however_busy(
    operator: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    later = time.time() + SESSION_HOURS * 3600 + 1
    monkeypatch.setattr(auth.time, "time", lambda: later)
    assert operator.get("/admin/").status_code == 302


@pytest.mark.parametrize("job_id", ["\x00", "a.b", "x" * 300])
def test_a_job_id_rq_cannot_read_is_reported_not_a_500(operator: FlaskClient, job_id: str) -> None:
    for action in ("/admin/failed/replay", "/admin/failed/purge"):
        response = press(operator, "/admin/failed", action, job_id=job_id)
        assert response.status_code == 302, action
        assert "1 no longer failed." in operator.get("/admin/failed").get_data(as_text=True)


def test_a_buyers_email_is_never_in_a_url(
    operator: FlaskClient, queue: Queue, runtime: worker_runtime.Runtime
) -> None:
    # Proxies and platforms (Heroku's router) log every URL in full.
    deliver(operator, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)
    events = operator.get("/admin/events").get_data(as_text=True)
    assert EMAIL in events  # shown, to the operator...
    assert "email=" not in events and "%40example.com" not in events  # ...in no link
    for response in (
        member_page(operator, EMAIL),
        press(operator, "/admin/member", "/admin/member/resync", email=EMAIL),
    ):
        assert response.status_code == 200  # the page itself, not a redirect to a URL
        assert EMAIL in response.get_data(as_text=True)


def test_the_overview_says_what_the_last_reconcile_changed(
    operator: FlaskClient, runtime: worker_runtime.Runtime
) -> None:
    assert "No backfill or reconcile has run yet." in operator.get("/admin/").get_data(True)
    runtime.reconciler.sources["stripe"] = ScriptedSource([[observed(EMAIL, "sub_admin")]])
    runtime.reconciler.reconcile(["stripe"])

    html = operator.get("/admin/").get_data(as_text=True)
    assert "Last run: reconcile" in html
    assert "1 of 1 member(s) changed, 0 failure(s)." in html


def test_the_member_page_without_a_sotion_key_says_so_instead_of_failing(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    keyless = create_app(dataclasses.replace(settings, sotion_api_key=None)).test_client()
    assert log_in(keyless).status_code == 302

    response = member_page(keyless, EMAIL)

    assert response.status_code == 200
    assert "Sotion not read: SOTION_API_KEY is not set." in response.get_data(as_text=True)
