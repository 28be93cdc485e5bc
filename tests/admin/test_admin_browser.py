"""The operator's page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium against the real web process (gunicorn, as the
Procfile starts it), the test Redis and the Sotion sandbox; jobs run in this process.

A screenshot of each page, desktop and phone sized, is saved under ``ARTIFACTS``.
Without a browser these tests are skipped, saying so; ``BRIDGE_REQUIRE_BROWSER=1`` (what
``.ci/run`` sets) makes a missing browser a failure instead.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from rq import Queue

from bridge.sandbox import SandboxServer
from bridge.sotion import SotionClient
from tests import commands
from tests.admin.pages import ADMIN_TOKEN
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET, drain
from tests.stripe_events import encode, event, sign
from tests.test_stripe_flow import T0, checkout_payment, member_of
from workers import runtime as worker_runtime

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("BRIDGE_TEST_ARTIFACTS") or ROOT / ".artifacts") / "admin"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = "no chromium/chromedriver: apt-get install chromium chromium-driver"

if not (CHROMIUM and CHROMEDRIVER) and os.environ.get("BRIDGE_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"BRIDGE_REQUIRE_BROWSER=1 but {MISSING}")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=MISSING)

DESKTOP = (1280, 900)
PHONE = (390, 844)
PAID = "paid@example.com"
BROKEN = "broken@example.com"


@pytest.fixture
def web(redis_url: str, sotion: SandboxServer, tmp_path: Path) -> Iterator[commands.Web]:
    env = commands.environment(
        REDIS_URL=redis_url,
        SOTION_API_KEY=SANDBOX_KEY,
        SOTION_API_URL=sotion.url,
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        BRIDGE_ACCEPT_TEST_EVENTS="true",
        BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
        BRIDGE_RETRY_ATTEMPTS="2",
        BRIDGE_RETRY_BASE_SECONDS="0",
    )
    with commands.web(env, tmp_path) as process:
        process.wait_ready()
        yield process


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def shoot(driver: object, name: str) -> None:
    """Save the page as it is, desktop and phone sized (full height)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        driver.set_window_size(width, height)  # type: ignore[attr-defined]
        full = driver.execute_script("return document.documentElement.scrollHeight")  # type: ignore[attr-defined]
        driver.set_window_size(width, max(height, int(full)))  # type: ignore[attr-defined]
        assert driver.save_screenshot(str(ARTIFACTS / f"{name}-{label}.png"))  # type: ignore[attr-defined]
    driver.set_window_size(*DESKTOP)  # type: ignore[attr-defined]


def click(driver: object, by: str, value: str) -> None:
    """Click what leads to another page, and wait until the browser has left this one
    (reading the new page before it is there finds the old page's elements)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element("tag name", "html")  # type: ignore[attr-defined]
    driver.find_element(by, value).click()  # type: ignore[attr-defined]
    WebDriverWait(driver, 10).until(expected_conditions.staleness_of(page))  # type: ignore[arg-type]


def purchase(web: commands.Web, email: str, session_id: str) -> None:
    obj = checkout_payment(email)
    obj.update(id=session_id, payment_intent=f"pi_{session_id}")
    body = encode(event("checkout.session.completed", obj, created=T0))
    response = requests.post(
        f"{web.base}/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": sign(body, STRIPE_SECRET), "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200 and response.json()["queued"] == 1, response.text


def test_an_operator_logs_in_finds_a_buyer_replays_a_failure_and_logs_out(
    web: commands.Web,
    browser: object,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    find = driver.find_element  # type: ignore[attr-defined]
    purchase(web, PAID, "cs_paid")
    drain(queue)
    sotion.faults.inject("503", count=50)
    purchase(web, BROKEN, "cs_broken")
    drain(queue)
    sotion.faults.clear()
    assert member_of(sotion_api, PAID).paid and sotion_api.find_member_by_email(BROKEN) is None

    # The login: every page sends the browser there first.
    driver.get(f"{web.base}/admin/")  # type: ignore[attr-defined]
    assert "/admin/login" in driver.current_url  # type: ignore[attr-defined]
    shoot(driver, "login")
    find(By.ID, "token").send_keys(ADMIN_TOKEN)
    click(driver, By.ID, "login")
    assert find(By.TAG_NAME, "h1").text == "Overview"
    assert find(By.ID, "failed-count").text == "1"
    assert "Needs attention" in find(By.ID, "verdict").text
    shoot(driver, "overview")

    # The buyer who paid: the whole story.
    driver.get(f"{web.base}/admin/member")  # type: ignore[attr-defined]
    find(By.ID, "email").send_keys(PAID)
    click(driver, By.ID, "find")
    assert find(By.ID, "verdict").text.startswith("Has access")
    assert "Paid\nyes" in find(By.ID, "sotion").text
    shoot(driver, "member")

    # The failed job: replayed from the page, applied by the worker.
    click(driver, By.LINK_TEXT, "Failed jobs")
    assert "b***@example.com" in find(By.ID, "failed").text
    shoot(driver, "failed")
    click(driver, By.CSS_SELECTOR, "button.replay-one")
    assert "1 job(s) put back on the queue." in find(By.CSS_SELECTOR, ".notice").text
    drain(queue)
    assert member_of(sotion_api, BROKEN).paid is True
    click(driver, By.LINK_TEXT, "Member")
    find(By.ID, "email").send_keys(BROKEN)
    click(driver, By.ID, "find")
    assert find(By.ID, "verdict").text.startswith("Has access")
    assert BROKEN not in driver.current_url  # type: ignore[attr-defined]

    click(driver, By.LINK_TEXT, "Events")
    assert PAID in find(By.ID, "deliveries").text and BROKEN in find(By.ID, "deliveries").text
    shoot(driver, "events")

    # What the browser holds is refused without its CSRF token, and nothing without it.
    cookies = {c["name"]: c["value"] for c in driver.get_cookies()}  # type: ignore[attr-defined]
    assert set(cookies) == {"bridge_admin"}
    forged = requests.post(
        f"{web.base}/admin/failed/purge",
        data={"all": "1", "csrf_token": "forged"},
        cookies=cookies,
        allow_redirects=False,
        timeout=10,
    )
    assert forged.status_code == 400
    bare = requests.get(f"{web.base}/admin/failed", allow_redirects=False, timeout=10)
    assert bare.status_code == 302 and "/admin/login" in bare.headers["Location"]
    page = requests.get(f"{web.base}/admin/failed", cookies=cookies, timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None  # the same cookie with the page's own token is accepted
    done = requests.post(
        f"{web.base}/admin/failed/purge",
        data={"all": "1", "csrf_token": token.group(1)},
        cookies=cookies,
        allow_redirects=False,
        timeout=10,
    )
    assert done.status_code == 302

    click(driver, By.ID, "logout")
    assert "/admin/login" in driver.current_url  # type: ignore[attr-defined]
    driver.get(f"{web.base}/admin/")  # type: ignore[attr-defined]
    assert "/admin/login" in driver.current_url  # type: ignore[attr-defined]
