"""The pages: overview, member, failed jobs, events; and the buttons that act.

Views are thin: they read through ``bridge.status`` and ``bridge.inspect`` (what the
``bridge status`` and ``bridge member`` commands print) and act through ``bridge.admin``
(what ``bridge jobs replay|purge`` do), then render a template.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from rq import Queue
from rq.utils import as_text

from bridge import activity, admin, inspect, startup, status
from bridge.app import current_bridge
from bridge.dashboard import auth, chart
from bridge.queues import FAILURE_TTL, enqueue_resync
from bridge.redact import mask_email
from bridge.settings import retry_policy

bp = Blueprint(
    "admin", __name__, url_prefix="/admin", template_folder="templates", static_folder="static"
)
bp.before_request(auth.guard)

FAILED_LIMIT = 200
EVENTS_LIMIT = 200
# What a page may do and load: its own stylesheet, inline SVG, forms posting to itself.
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@bp.app_template_filter("when")
def _when(moment: datetime | None) -> str:
    """A time as the page shows it: UTC to the minute, and how long ago or ahead."""
    if moment is None:
        return "-"
    seconds = (moment - datetime.now(UTC)).total_seconds()
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({_ago(seconds)})"


def _ago(seconds: float) -> str:
    span = abs(seconds)
    amount = (
        f"{span:.0f} s"
        if span < 90
        else f"{span / 60:.0f} min"
        if span < 5400
        else f"{span / 3600:.0f} h"
        if span < 172_800
        else f"{span / 86400:.0f} days"
    )
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(CSRFError)
def _csrf_refused(error: CSRFError) -> ResponseReturnValue:
    return render_template("admin/error.html", message=f"Refused: {error.description}"), 400


# -- logging in ----------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    wrong = False
    if request.method == "POST":
        if auth.log_in(request.form.get("token", "")):
            return redirect(auth.safe_next(request.args.get("next")))
        wrong = True
    return render_template("admin/login.html", wrong=wrong), 401 if wrong else 200


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    auth.log_out()
    return redirect(url_for("admin.login"))


# -- pages ---------------------------------------------------------------------------------


@bp.get("/")
def overview() -> ResponseReturnValue:
    bridge = current_bridge()
    now = datetime.now(UTC)
    report = status.status_report(bridge.redis, bridge.settings, now)
    hours = activity.last_hours(bridge.redis, now)
    charts = [
        (p.name, chart.hours_svg(hours, p.name), _totals(hours, p.name))
        for p in report.providers
        if p.enabled
    ]
    return render_template("admin/overview.html", report=report, charts=charts, bands=chart.BANDS)


@bp.route("/member", methods=["GET", "POST"])
def member() -> ResponseReturnValue:
    """The search, and (POST) one buyer's story: the email travels in the form, never in
    a URL, so no proxy's or platform's access log records it."""
    email = request.form.get("email", "").strip() if request.method == "POST" else ""
    return _member_page(email)


@bp.get("/failed")
def failed() -> ResponseReturnValue:
    queue = current_bridge().queue
    jobs = admin.failed_jobs(queue, limit=FAILED_LIMIT)
    total = queue.failed_job_registry.count
    return render_template(
        "admin/failed.html", jobs=jobs, total=total, before=time.time(), mask=mask_email
    )


@bp.get("/events")
def events() -> ResponseReturnValue:
    provider = request.args.get("provider") or ""
    outcome = request.args.get("status") or ""
    queue = current_bridge().queue
    found = admin.jobs_info(queue, activity.recent_job_ids(queue.connection, EVENTS_LIMIT))
    shown = [job for job in found if provider in ("", job.provider) and outcome in ("", job.status)]
    statuses = sorted({job.status for job in found})
    return render_template(
        "admin/events.html",
        jobs=shown,
        provider=provider,
        status=outcome,
        statuses=statuses,
        providers=[p.name for p in startup.providers(current_bridge().settings)],
    )


# -- acting --------------------------------------------------------------------------------


@bp.post("/member/resync")
def member_resync() -> ResponseReturnValue:
    email = request.form.get("email", "").strip()
    if email:
        retry = retry_policy(current_bridge().settings).rq_retry()
        job = enqueue_resync(
            current_bridge().queue,
            email,
            retry=retry,
            reason="asked for on the admin page",
            fresh=True,
        )
        flash(f"Re-sync queued (job {job.id}).")
    return _member_page(email)


@bp.post("/member/replay")
def member_replay() -> ResponseReturnValue:
    email = request.form.get("email", "").strip()
    queue = current_bridge().queue
    ids = [job.id for job in admin.failed_jobs(queue, limit=FAILED_LIMIT, email=email)]
    replayed, _ = admin.replay(queue, ids)
    flash(f"{len(replayed)} failed job(s) put back on the queue.")
    return _member_page(email)


@bp.post("/failed/replay")
def failed_replay() -> ResponseReturnValue:
    queue = current_bridge().queue
    replayed, missing = admin.replay(queue, _chosen(queue))
    flash(f"{len(replayed)} job(s) put back on the queue" + _missing(missing))
    return redirect(url_for("admin.failed"))


@bp.post("/failed/purge")
def failed_purge() -> ResponseReturnValue:
    queue = current_bridge().queue
    deleted, missing = admin.purge(queue, _chosen(queue))
    flash(f"{len(deleted)} job(s) deleted" + _missing(missing))
    return redirect(url_for("admin.failed"))


# -- helpers -------------------------------------------------------------------------------


def _member_page(email: str) -> ResponseReturnValue:
    report = _member_report(email) if email else None
    return render_template("admin/member.html", email=email, report=report)


def _member_report(email: str) -> inspect.MemberReport:
    settings = current_bridge().settings
    sotion = inspect.sotion_reader(settings)
    try:
        return inspect.member_report(
            current_bridge().redis, sotion, settings, email, now=time.time()
        )
    finally:
        if sotion is not None:
            sotion.close()


def _chosen(queue: Queue) -> list[str]:
    """The job ids a button names: one (``job_id``) or every failed job (``all``)."""
    if request.form.get("all") == "1":
        # What had failed when the page was shown, no later one: RQ scores a failed job
        # by when it expires, FAILURE_TTL after it failed.
        try:
            shown = float(request.form.get("before") or "inf")
        except ValueError:
            shown = math.inf
        registry = queue.failed_job_registry
        found: list[bytes] = queue.connection.zrangebyscore(  # type: ignore[assignment]
            registry.key, "-inf", shown + FAILURE_TTL
        )
        return [as_text(job_id) for job_id in found]
    return [job_id for job_id in request.form.getlist("job_id") if job_id]


def _missing(missing: list[str]) -> str:
    return f"; {len(missing)} no longer failed." if missing else "."


def _totals(hours: list[activity.Hour], provider: str) -> dict[str, int]:
    totals = dict.fromkeys((band for band, _ in chart.BANDS), 0)
    for hour in hours:
        for band, count in chart.band_counts(hour, provider).items():
            totals[band] += count
    return totals
