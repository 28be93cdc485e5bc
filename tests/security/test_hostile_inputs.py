"""Hostile input (issue 8): fuzzed requests against every route and method, with and
without valid auth, then raw HTTP through gunicorn on a real socket.

The properties: never a 5xx (a 503 only when Redis is down, which nothing here
simulates), no job and no dedupe key without valid auth, an answer within MAX_SECONDS,
and neither a traceback nor the Gumroad token in the log. The fuzzing is derandomized
and bounded (``FUZZ``, a fixed seed for the raw socket), so every run sends the same
requests and takes about the same time.

The WSGI half builds each request's environ the way a WSGI server would (the path
already percent-decoded to any bytes, duplicate headers joined, ``wsgi.input_terminated``
for a chunked body), which the Flask test client would normalize away; only a real
socket exercises gunicorn's HTTP parsing, so framing is tested there.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import redis
from flask import Flask
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from rq import Queue
from werkzeug.test import EnvironBuilder, run_wsgi_app

from bridge.embedded import free_port
from bridge.intake import DEDUPE_PREFIX
from bridge.settings import Settings
from tests import gumroad_events, lemonsqueezy_events, stripe_events
from tests.conftest import SANDBOX_KEY
from tests.test_processes import procfile

ROOT = Path(__file__).resolve().parents[2]
# Secrets of a plausible shape, so start-up checks of their format keep accepting them.
STRIPE_SECRET = "whsec_" + "Ho5tileInputSuite" * 2
LS_SECRET = "ls_" + "Ho5tileInputSuite" * 2
GUMROAD_TOKEN = "gr_" + "Ho5tileInputSuite" * 2
FORM = "application/x-www-form-urlencoded"
# A bound against hangs, not a benchmark: requests here take milliseconds.
MAX_SECONDS = 10.0
# The default body limit: fuzzed bodies straddle it.
LIMIT = Settings.max_body_bytes
TRACEBACK = "Traceback (most recent call last)"
# Every route of bridge/web.py, plus paths that match none.
ROUTES = ("stripe", "lemonsqueezy", "gumroad", "healthz", "readyz", "metrics", "unknown")

# Derandomized and replay-free: the same examples every run, in bounded time.
FUZZ = hypothesis.settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=250,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=(
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ),
    print_blob=False,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with all three providers on; only warnings are logged."""
    return dataclasses.replace(
        settings,
        stripe_webhook_secrets=(STRIPE_SECRET,),
        lemonsqueezy_webhook_secrets=(LS_SECRET,),
        gumroad_webhook_token=GUMROAD_TOKEN,
        log_level="WARNING",
    )


# -- requests as a WSGI server hands them to the app ----------------------------------------


@dataclasses.dataclass
class Hostile:
    """One request, as the environ a WSGI server would build for it."""

    method: str
    path: bytes  # PATH_INFO: percent-decoded already, so any bytes at all
    query: bytes
    headers: list[tuple[str, str]]  # latin-1 text as WSGI carries it; duplicates allowed
    body: bytes
    content_length: str | None
    terminated: bool  # wsgi.input_terminated: the server ends the body (chunked)
    authentic: bool  # False only when no part of the request can be valid auth

    def __repr__(self) -> str:
        body = repr(self.body[:300]) + (
            f"...({len(self.body)} bytes)" if len(self.body) > 300 else ""
        )
        headers = [
            (k, v if len(v) <= 200 else f"{v[:50]}...({len(v)} chars)") for k, v in self.headers
        ]
        return (
            f"Hostile(method={self.method!r}, path={self.path[:300]!r}, "
            f"query={self.query[:200]!r}, "
            f"headers={headers!r}, body={body}, content_length={self.content_length!r}, "
            f"terminated={self.terminated}, authentic={self.authentic})"
        )


def _environ(hostile: Hostile) -> dict[str, Any]:
    """The WSGI environ for ``hostile``: gunicorn's mapping of headers, last Content-Type wins."""
    builder = EnvironBuilder(method="GET", path="/")
    environ = builder.get_environ()
    builder.close()
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH", "wsgi.input_terminated"):
        environ.pop(key, None)
    uri = urllib.parse.quote(hostile.path, safe="/") + (
        "?" + hostile.query.decode("latin-1") if hostile.query else ""
    )
    environ.update(
        REQUEST_METHOD=hostile.method,
        PATH_INFO=hostile.path.decode("latin-1"),
        QUERY_STRING=hostile.query.decode("latin-1"),
        REQUEST_URI=uri,
        RAW_URI=uri,
    )
    environ["wsgi.input"] = io.BytesIO(hostile.body)
    if hostile.terminated:
        environ["wsgi.input_terminated"] = True
    if hostile.content_length is not None:
        environ["CONTENT_LENGTH"] = hostile.content_length
    for name, value in hostile.headers:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
            continue
        key = f"HTTP_{key}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _send(app: Flask, hostile: Hostile) -> tuple[int, bytes, float]:
    """Run ``hostile`` through the app: status, body, seconds taken."""
    environ = _environ(hostile)
    started = time.monotonic()
    chunks, status, _ = run_wsgi_app(app, environ, buffered=True)
    answer = b"".join(chunks)
    return int(status.split()[0]), answer, time.monotonic() - started


def _assert_nothing_stored(queue: Queue, redis_conn: redis.Redis) -> None:
    """No job anywhere in RQ and no dedupe key: the request changed nothing that counts."""
    assert queue.count == 0
    for registry in (
        queue.scheduled_job_registry,
        queue.failed_job_registry,
        queue.deferred_job_registry,
        queue.started_job_registry,
        queue.finished_job_registry,
    ):
        assert registry.count == 0, registry.key
    assert redis_conn.keys(f"{DEDUPE_PREFIX}*") == []
    assert redis_conn.keys("rq:job:*") == []


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.exc_info]


def _check(
    hostile: Hostile,
    answer: tuple[int, bytes, float],
    queue: Queue,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The properties every request must keep, whatever it is."""
    status, body, elapsed = answer
    assert status < 500, f"{status} {body[:300]!r}"
    assert elapsed < MAX_SECONDS, f"took {elapsed:.2f}s"
    assert _tracebacks(caplog) == []
    if not hostile.authentic:
        _assert_nothing_stored(queue, redis_conn)


# -- strategies ---------------------------------------------------------------------------

_INVALID_UTF8 = (
    b"\xff",
    b"\xfe\xff",
    b"\xc0\xaf",  # overlong "/"
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\x80",
    b"\xe2\x82",  # truncated
)
_HOSTILE_TEXT = (
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\ufeff",
    "\u202e",
    "%ZZ",
    "%FF",
    "=",
    "&",
    "[]",
    "\r\n",
    "a@b@c",
    "@",
    "a" * 300 + "@example.com",
    "x" * 5000,
    "9999-12-31T23:59:59Z",
    "0000-00-00T00:00:00Z",
    "-1",
    "1e999",
    "NaN",
    "null",
    "../../etc/passwd",
    "' OR '1'='1",
    "\u0130@EXAMPLE.COM",
    "\uff4d@\uff45\uff58.com",
)
_KNOWN_KEYS = (
    "id",
    "object",
    "type",
    "data",
    "meta",
    "event_name",
    "attributes",
    "email",
    "user_email",
    "customer_details",
    "created",
    "livemode",
    "test_mode",
    "sale_id",
    "resource_name",
    "status",
)
_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(_HOSTILE_TEXT),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
)
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=10**300),
    st.floats(),  # NaN and Infinity too, which json writes and reads
    _TEXT,
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_KNOWN_KEYS), _TEXT), children, max_size=4),
    ),
    max_leaves=12,
)


def _json(value: Any, ascii_only: bool) -> bytes:
    """JSON as a client may send it: lone surrogates escaped, or raw (invalid UTF-8)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _quote(text: str) -> bytes:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="[]").encode()


@st.composite
def _spliced(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with invalid UTF-8, NUL bytes or stray syntax pushed in at random places."""
    body = draw(base)
    junk = st.sampled_from((*_INVALID_UTF8, b"\x00", b"\r\n", b"%", b"\\u", b'"', b"&", b"="))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(junk) + body[at:]
    return body


_FORM_KEYS = st.one_of(
    st.sampled_from(
        (
            "",
            "sale_id",
            "email",
            "resource_name",
            "a[]",
            "a[b]",
            "a[b][c]",
            "[]",
            "[",
            "]",
            "a[][b]",
            "a]b[",
            "%ZZ",
            "%FF",
            "%00",
            "a%5B%5D",
            "+",
            "a;b",
        )
    ),
    _TEXT,
)
_RAW_PAIRS = (
    b"=x",
    b"=",
    b"==",
    b"=x&=y",
    b"sale_id=1",
    b"sale_id[]=1",
    b"sale_id[a]=1",
    b"email=a%40example.com&email=b%40example.com",
    b"[]=1",
    b"a[][b]=1",
    b"%ZZ=1",
    b"a=%FF",
    b"a=%ED%A0%80",
    b"a\x00=1",
    b"+=+",
    b"%00=%00",
    b"&&&",
    b"a[=1",
)


@st.composite
def _form_bodies(draw: st.DrawFn) -> bytes:
    """Form-ish bodies: odd keys and values, quoted or raw, odd separators."""
    pairs = draw(st.lists(st.tuples(_FORM_KEYS, _TEXT), max_size=8))
    quoted = draw(st.booleans())

    def encode(text: str) -> bytes:
        return _quote(text) if quoted else text.encode("utf-8", "surrogatepass")

    separator = draw(st.sampled_from((b"&", b";", b"&&", b"&=&")))
    body = separator.join(encode(key) + b"=" + encode(value) for key, value in pairs)
    for raw in draw(st.lists(st.sampled_from(_RAW_PAIRS), max_size=2)):
        body = raw + b"&" + body if draw(st.booleans()) else body + b"&" + raw
    return body


_NESTED_BODIES = st.one_of(
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 200_000).map(lambda n: b"[" * n),
    st.integers(1, 50_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(1, 5_000).map(lambda n: b"a" + b"[b]" * n + b"=1"),
    st.integers(1, 1_000).map(lambda n: b"a" + b"[]" * n + b"=1"),
    st.integers(4_300, 20_000).map(lambda n: b'{"id": ' + b"1" * n + b"}"),
)
_HUGE_BODIES = st.builds(
    lambda fill, size: fill * size,
    st.sampled_from((b"a", b"{", b"[", b"\x00", b"\xff", b"&", b"=", b"%")),
    st.sampled_from((LIMIT - 1, LIMIT, LIMIT + 1, 4 * LIMIT)),
)
_GENERIC_BODIES = st.one_of(
    st.binary(max_size=2048),
    st.builds(_json, _JSON_VALUES, st.booleans()),
    _spliced(st.builds(_json, _JSON_VALUES, st.booleans())),
    _form_bodies(),
    _spliced(_form_bodies()),
    _NESTED_BODIES,
    _HUGE_BODIES,
)


def _locations(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, as the keys and indexes leading to it."""
    found = [at]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _locations(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _locations(value, (*at, index))
    return found


# The fields that become event ids, emails, times and states: where a hostile value
# travels furthest (into dedupe keys, jobs and the ledger).
_LEAF_KEYS = frozenset(
    {"id", "email", "user_email", "created", "created_at", "updated_at", "sale_id", "status"}
    | {"sale_timestamp", "customer", "subscription", "subscription_id", "payment_intent"}
    | {"order_id", "customer_id", "product_id", "product_permalink", "variant_id", "price"}
    | {"resource_name", "seller_id", "livemode", "test_mode", "refunded", "disputed", "type"}
    | {"ended_at", "cancelled_at", "current_period_end", "amount_refunded", "event_name"}
)


@st.composite
def _mutated(draw: st.DrawFn, documents: list[Any]) -> Any:
    """A valid provider payload with one to three places replaced, removed or wrapped."""
    document = copy.deepcopy(draw(st.sampled_from(documents)))
    for _ in range(draw(st.integers(1, 3))):
        everywhere = _locations(document)
        leaves = [at for at in everywhere if at and at[-1] in _LEAF_KEYS] or everywhere
        at = draw(st.one_of(st.sampled_from(leaves), st.sampled_from(everywhere)))
        action = draw(st.sampled_from(("replace", "replace", "replace", "delete", "wrap")))
        value = draw(st.one_of(_JSON_SCALARS, _JSON_VALUES))
        if not at:
            document = [document] if action == "wrap" else value
            continue
        parent = document
        for step in at[:-1]:
            parent = parent[step]
        if action == "replace":
            parent[at[-1]] = value
        elif action == "delete":
            del parent[at[-1]]
        else:
            parent[at[-1]] = [parent[at[-1]]]
    return document


def _form_pairs(data: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """HTTParty's flattening (tests/gumroad_events.py), for any value a mutation left."""
    if not isinstance(data, dict):
        yield prefix, str(data)
        return
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, dict):
            yield from _form_pairs(value, name)
        elif isinstance(value, list):
            for item in value:
                yield f"{name}[]", str(item)
        else:
            yield name, str(value)


_STRIPE_DOCUMENTS = [
    stripe_events.fixture(p.stem) for p in sorted(stripe_events.FIXTURES.glob("*.json"))
]
_LS_DOCUMENTS = [
    lemonsqueezy_events.fixture(p.stem) for p in sorted(lemonsqueezy_events.FIXTURES.glob("*.json"))
]
_GUMROAD_DOCUMENTS = [
    gumroad_events.fixture(p.stem) for p in sorted(gumroad_events.FIXTURES.glob("*.form"))
]


@st.composite
def _json_payloads(draw: st.DrawFn, documents: list[Any]) -> tuple[bytes, str | None]:
    return _json(draw(_mutated(documents)), draw(st.booleans())), "application/json"


@st.composite
def _gumroad_payloads(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A mutated Gumroad ping, as JSON or (Gumroad's default) a form with odd pairs added."""
    document = draw(_mutated(_GUMROAD_DOCUMENTS))
    if draw(st.booleans()):
        return _json(document, draw(st.booleans())), "application/json"
    body = b"&".join(_quote(key) + b"=" + _quote(value) for key, value in _form_pairs(document))
    for raw in draw(st.lists(st.sampled_from(_RAW_PAIRS), max_size=2)):
        body = raw + b"&" + body if draw(st.booleans()) else body + b"&" + raw
    return body, FORM


_PAYLOADS = {
    "stripe": _json_payloads(_STRIPE_DOCUMENTS),
    "lemonsqueezy": _json_payloads(_LS_DOCUMENTS),
    "gumroad": _gumroad_payloads(),
}


@st.composite
def _bodies(draw: st.DrawFn, route: str, signed: bool) -> tuple[bytes, str | None]:
    """A body and the content type that goes with it (None: any).

    Signed requests get a mutated provider payload three times in four, so that most of
    them pass verification and loading and reach parsing and intake.
    """
    payloads = _PAYLOADS[route] if route in _PAYLOADS else st.one_of(*_PAYLOADS.values())
    if draw(st.integers(0, 3 if signed else 1)) == 0:
        return draw(_GENERIC_BODIES), None
    return draw(payloads)


_TOKEN = GUMROAD_TOKEN.encode()
_GUMROAD_URL = b"/webhooks/gumroad/" + _TOKEN
_PATHS = {
    "stripe": [
        b"/webhooks/stripe/",
        b"/WEBHOOKS/STRIPE",
        b"//webhooks//stripe",
        b"/webhooks/stripe\x00",
        b"/webhooks/stripe\xff",
        b"/webhooks/stripe/../stripe",
        b"/webhooks/stripe;x",
    ],
    "lemonsqueezy": [
        b"/webhooks/lemonsqueezy/",
        b"/webhooks/LemonSqueezy",
        b"/webhooks/lemon\xffsqueezy",
        b"/webhooks/lemonsqueezy\x00",
        b"//webhooks/lemonsqueezy",
    ],
    "gumroad": [
        b"/webhooks/gumroad/" + _TOKEN.upper(),
        b"/webhooks/gumroad/" + _TOKEN[:-1],
        b"/webhooks/gumroad/" + _TOKEN + b"x",
        b"/webhooks/gumroad/" + _TOKEN + b"\x00",
        b"/webhooks/gumroad/" + _TOKEN[:4],
        b"/webhooks/gumroad/",
        b"/webhooks/gumroad/%ZZ",
        b"/webhooks/gumroad/\xff\xfe",
        b"/webhooks/GUMROAD/" + _TOKEN,
        b"//webhooks/gumroad/" + _TOKEN,
        _GUMROAD_URL + b"/",
    ],
    "healthz": [b"/healthz/", b"/HEALTHZ", b"/healthz\xff", b"/healthz%"],
    "readyz": [b"/readyz/", b"/readyz\x00", b"/readyz%ZZ"],
    "metrics": [b"/metrics/", b"/metrics\xff", b"/metrics%2F"],
    "unknown": [
        b"/",
        b"",
        b"*",
        b"/webhooks",
        b"/webhooks/",
        b"/webhooks/paypal",
        b"/admin",
        b"/webhooks/gumroad",
        b"/..%2f..%2fetc/passwd",
        b"/%ZZ",
        b"/\xff\xfe",
        b"/" + b"a" * 10_000,
    ],
}
_PRIMARY = {
    "stripe": (b"/webhooks/stripe", "POST"),
    "lemonsqueezy": (b"/webhooks/lemonsqueezy", "POST"),
    "gumroad": (_GUMROAD_URL, "POST"),
    "healthz": (b"/healthz", "GET"),
    "readyz": (b"/readyz", "GET"),
    "metrics": (b"/metrics", "GET"),
    "unknown": (b"/nothing-here", "GET"),
}
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
_METHODS += ("PROPFIND", "post", "Get", "X" * 100)


def _paths(route: str) -> st.SearchStrategy[bytes]:
    variants = st.sampled_from(_PATHS[route])
    if route == "unknown":
        variants = st.one_of(variants, st.binary(max_size=64).map(lambda b: b"/" + b))
    return st.one_of(st.just(_PRIMARY[route][0]), variants)


# Stripe-Signature variants: the first two are valid (Stripe checks no future bound).
STRIPE_VALID = ("valid", "future")
STRIPE_MODES = (*STRIPE_VALID, "wrong_secret", "stale", "other_body", "v0_only", "garbage", "empty")
STRIPE_MODES += ("missing",)
# X-Signature variants: hex is hex in either case, so "upper" may be valid too.
LS_VALID = ("valid", "upper")
LS_MODES = (*LS_VALID, "wrong_secret", "other_body", "truncated", "garbage", "empty", "missing")

_LATIN1 = st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n")
_HEADER_VALUES = st.one_of(
    st.text(_LATIN1, max_size=100),
    st.sampled_from(
        (
            "chunked",
            "gzip, chunked",
            "identity",
            "chunked, identity",
            "CHUNKED",
            "chunked ",
            "100-continue",
            "\x00",
            "gzip",
            "deflate",
            "\u00e9",
            "\xff\xfe",
            # UTF-8 as a server hands it over: its bytes as latin-1 characters
            "\u00e9".encode().decode("latin-1"),
            "\u2603".encode().decode("latin-1"),
        )
    ),
    st.integers(8_191, 70_000).map(lambda n: "v" * n),
)
_HEADER_NAMES = st.one_of(
    st.sampled_from(
        (
            "Content-Type",
            "Content-Length",
            "Transfer-Encoding",
            "Content-Encoding",
            "Expect",
            "Host",
            "X-Forwarded-For",
            "X-Forwarded-Proto",
            "Stripe-Signature",
            "X-Signature",
            "X-Event-Name",
            "Authorization",
            "Cookie",
            "Accept",
            "Accept-Charset",
            "Range",
            "X-Request-Id",
            "User-Agent",
        )
    ),
    st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,40}", fullmatch=True),
)
_CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        (
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=UTF-16",
            'application/json; charset="latin-1"',
            "application/json;charset=",
            "application/JSON",
            "application/json; charset=utf-8; charset=ascii",
            " application/json ",
            ";",
            "",
            "application/json,text/plain",
            FORM,
            f"{FORM}; charset=iso-8859-1",
            f"{FORM}; charset=\xff",
            "multipart/form-data; boundary=x",
            "multipart/form-data",
            "text/plain",
            "*/*",
            "a/b/c",
            "text/html; charset=utf-7",
            "\x00",
            "application/\xe9",
            "application/json; " + "x=y; " * 500,
        )
    ),
    st.text(_LATIN1, max_size=60),
)


def _stripe_signature(mode: str, body: bytes, now: int, garbage: str) -> str | None:
    if mode == "missing":
        return None
    if mode == "empty":
        return ""
    if mode == "garbage":
        return garbage
    secret = "whsec_" + "WrongSecretWrong" * 2 if mode == "wrong_secret" else STRIPE_SECRET
    signed = body + b"\x00" if mode == "other_body" else body
    stamp = {"stale": now - 3600, "future": now + 3600}.get(mode, now)
    header = stripe_events.sign(signed, secret, timestamp=stamp)
    return header.replace("v1=", "v0=") if mode == "v0_only" else header


def _ls_signature(mode: str, body: bytes, garbage: str) -> str | None:
    if mode == "missing":
        return None
    if mode == "empty":
        return ""
    if mode == "garbage":
        return garbage
    secret = "ls_" + "WrongSecretWrong" * 2 if mode == "wrong_secret" else LS_SECRET
    signed = body + b"\x00" if mode == "other_body" else body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return {"upper": digest.upper(), "truncated": digest[:-2]}.get(mode, digest)


@st.composite
def _framings(draw: st.DrawFn, size: int) -> tuple[str | None, bool]:
    """A Content-Length (right, wrong, absent or malformed) and whether the server ends the body."""
    length = draw(
        st.one_of(
            st.just(str(size)),
            st.none(),
            st.integers(0, size + 100).map(str),
            st.sampled_from(("abc", "-1", "1e3", " 12 ", "9" * 30, "0x10", "+5", "", "\u0661")),
            st.sampled_from((f"{size}, {size}", f"{size},0")),
        )
    )
    return length, draw(st.booleans())


# Headers a signed request keeps as built: noise under these names would spoil its auth.
_AUTH_HEADERS = frozenset({"stripe-signature", "x-signature", "content-type", "content-length"})
_AUTH_HEADERS |= {"transfer-encoding"}


@st.composite
def hostile_requests(draw: st.DrawFn, route: str, *, signed: bool = False) -> Hostile:
    """A hostile request to ``route``: any method, body, headers, framing, auth or none.

    ``signed``: the route's own method and path, valid auth over the whole body and an
    exact framing, so that the body and the headers reach parsing and intake.
    """
    body, natural_type = draw(_bodies(route, signed))
    path = _PRIMARY[route][0] if signed else draw(_paths(route))
    method = (
        _PRIMARY[route][1]
        if signed
        else draw(st.one_of(st.just(_PRIMARY[route][1]), st.sampled_from(_METHODS)))
    )
    now = int(time.time())
    stripe_mode = "valid" if signed else draw(st.sampled_from(STRIPE_MODES))
    ls_mode = "valid" if signed else draw(st.sampled_from(LS_MODES))
    headers: list[tuple[str, str]] = []
    stripe_header = _stripe_signature(stripe_mode, body, now, draw(_HEADER_VALUES))
    if stripe_header is not None:
        headers.append(("Stripe-Signature", stripe_header))
    ls_header = _ls_signature(ls_mode, body, draw(_HEADER_VALUES))
    if ls_header is not None:
        headers.append(("X-Signature", ls_header))
    content_type = draw(st.one_of(st.just(natural_type), _CONTENT_TYPES))
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    noise = draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=6))
    if signed:
        noise = [(name, value) for name, value in noise if name.lower() not in _AUTH_HEADERS]
        content_length, terminated = str(len(body)), draw(st.booleans())
    else:
        content_length, terminated = draw(_framings(len(body)))
    headers += noise
    lowered = path.lower()
    # Conservative: anything that might pass verification may enqueue; the rest must not.
    authentic = (
        (stripe_mode in STRIPE_VALID and b"stripe" in lowered)
        or (ls_mode in LS_VALID and b"lemonsqueezy" in lowered)
        or _TOKEN in path.split(b"/")
    )
    query = draw(
        st.one_of(
            st.just(b""),
            st.binary(max_size=64),
            st.sampled_from((b"%ZZ", b"%FF%FE", b"email=a%40b.c", b"a=%ED%A0%80", b"&" * 5000)),
        )
    )
    return Hostile(
        method=method,
        path=path,
        query=query,
        headers=draw(st.permutations(headers)),
        body=body,
        content_length=content_length,
        terminated=terminated,
        authentic=authentic,
    )


# -- the fuzz, through the WSGI app -------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@FUZZ
@hypothesis.given(data=st.data())
def test_fuzzed_requests_are_never_5xx_and_never_enqueue_without_auth(
    route: str,
    data: st.DataObject,
    app: Flask,
    queue: Queue,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hostile = data.draw(hostile_requests(route), label="request")
    redis_conn.flushdb()
    caplog.clear()
    _check(hostile, _send(app, hostile), queue, redis_conn, caplog)


@pytest.mark.parametrize("route", ("stripe", "lemonsqueezy", "gumroad"))
@FUZZ
@hypothesis.given(data=st.data())
def test_fuzzed_bodies_with_valid_auth_are_never_5xx(
    route: str,
    data: st.DataObject,
    app: Flask,
    queue: Queue,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hostile = data.draw(hostile_requests(route, signed=True), label="request")
    redis_conn.flushdb()
    caplog.clear()
    _check(hostile, _send(app, hostile), queue, redis_conn, caplog)


def _signed(provider: str, body: bytes, content_type: str) -> Hostile:
    """A POST of ``body`` with valid auth for ``provider``."""
    headers = [("Content-Type", content_type)]
    path = _GUMROAD_URL
    if provider == "stripe":
        headers.append(("Stripe-Signature", stripe_events.sign(body, STRIPE_SECRET)))
        path = b"/webhooks/stripe"
    elif provider == "lemonsqueezy":
        headers.append(
            ("X-Signature", hmac.new(LS_SECRET.encode(), body, hashlib.sha256).hexdigest())
        )
        path = b"/webhooks/lemonsqueezy"
    return Hostile("POST", path, b"", headers, body, str(len(body)), False, authentic=True)


def _sale() -> dict[str, Any]:
    return gumroad_events.fixture("sale_one_time")


@pytest.mark.parametrize(
    "body",
    [
        b"=x",
        b"=",
        b"=x&=y",
        gumroad_events.encode(_sale()) + b"&=x",
        b"a=1&a=2",
        gumroad_events.encode(_sale()) + b"&sale_id=another",
        gumroad_events.encode(_sale()) + b"&email=b%40example.com",
    ],
    ids=[
        "empty-key",
        "empty-key-and-value",
        "two-empty-keys",
        "sale-with-empty-key",
        "duplicate-key",
        "sale-with-duplicate-sale-id",
        "sale-with-duplicate-email",
    ],
)
def test_empty_and_duplicate_form_keys_to_a_valid_gumroad_url_are_a_4xx(
    body: bytes, app: Flask, queue: Queue, redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    status, answer, _ = _send(app, _signed("gumroad", body, FORM))
    assert 400 <= status < 500, f"{status} {answer!r}"
    assert _tracebacks(caplog) == []
    _assert_nothing_stored(queue, redis_conn)


def _invalid_utf8_bodies() -> list[Any]:
    def spoil(body: bytes) -> bytes:
        return body.replace(b"@", b"\xff@", 1)  # one raw 0xFF byte, in the email

    stripe_doc = stripe_events.fixture("checkout_session_completed_payment")
    ls_doc = lemonsqueezy_events.fixture("order_created")
    sale = _sale()
    return [
        pytest.param("stripe", spoil(_json(stripe_doc, True)), "application/json", id="stripe"),
        pytest.param(
            "lemonsqueezy", spoil(_json(ls_doc, True)), "application/json", id="lemonsqueezy"
        ),
        pytest.param("gumroad", gumroad_events.encode(sale) + b"&x=\xff", FORM, id="gumroad-form"),
        pytest.param("gumroad", spoil(_json(sale, True)), "application/json", id="gumroad-json"),
    ]


@pytest.mark.parametrize(("provider", "body", "content_type"), _invalid_utf8_bodies())
def test_signed_body_with_invalid_utf8_is_a_4xx(
    provider: str,
    body: bytes,
    content_type: str,
    app: Flask,
    queue: Queue,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert b"\xff" in body
    status, answer, _ = _send(app, _signed(provider, body, content_type))
    assert 400 <= status < 500, f"{status} {answer!r}"
    assert _tracebacks(caplog) == []
    _assert_nothing_stored(queue, redis_conn)


def _surrogate_bodies() -> list[Any]:
    stripe_doc = stripe_events.fixture("checkout_session_completed_payment")
    stripe_doc["id"] = "evt_\ud800"
    ls_doc = lemonsqueezy_events.fixture("order_created")
    ls_doc["data"]["id"] = "1\ud800"
    sale = dict(_sale(), sale_id="sale_\ud800")
    return [
        pytest.param("stripe", _json(stripe_doc, True), id="stripe-event-id"),
        pytest.param("lemonsqueezy", _json(ls_doc, True), id="lemonsqueezy-data-id"),
        pytest.param("gumroad", _json(sale, True), id="gumroad-json-sale-id"),
    ]


@pytest.mark.parametrize(("provider", "body"), _surrogate_bodies())
def test_lone_surrogate_escape_in_a_signed_event_id_is_refused_and_stores_nothing(
    provider: str,
    body: bytes,
    app: Flask,
    queue: Queue,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Valid UTF-8 and valid JSON, but "\ud800" decodes to a str no codec can write back.
    assert b"\\ud800" in body
    body.decode("utf-8")
    status, answer, _ = _send(app, _signed(provider, body, "application/json"))
    # Like an unusable email: signed providers may be acknowledged (they would only resend
    # the same body), unsigned Gumroad pings are refused; never a 5xx either way.
    if provider == "gumroad":
        assert 400 <= status < 500, f"{status} {answer!r}"
    else:
        assert status < 500, f"{status} {answer!r}"
    assert _tracebacks(caplog) == []
    _assert_nothing_stored(queue, redis_conn)


@pytest.mark.parametrize(
    ("provider", "name", "value"),
    [
        ("stripe", "Stripe-Signature", "t=1,v1=\xff\xfe"),
        ("stripe", "Stripe-Signature", "\u00e9".encode().decode("latin-1")),
        ("lemonsqueezy", "X-Signature", "\xff\xfe"),
        ("gumroad", "Content-Type", f"{FORM}; charset=\xff"),
        ("gumroad", "Content-Type", "\xff/\xfe"),
    ],
    ids=["stripe-signature", "stripe-signature-utf8", "x-signature", "charset", "media-type"],
)
def test_invalid_utf8_in_a_header_is_a_4xx(
    provider: str,
    name: str,
    value: str,
    app: Flask,
    queue: Queue,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hostile = _signed(provider, b"=x" if provider == "gumroad" else b"{}", "application/json")
    hostile.headers = [(k, v) for k, v in hostile.headers if k != name] + [(name, value)]
    if provider == "gumroad":
        hostile.body = b"x=\xff"
    status, answer, _ = _send(app, hostile)
    assert 400 <= status < 500, f"{status} {answer!r}"
    assert _tracebacks(caplog) == []
    _assert_nothing_stored(queue, redis_conn)


@pytest.mark.parametrize(
    "path",
    [
        b"/webhooks/stripe\xff",
        b"/webhooks/gumroad/\xff\xfe",
        _GUMROAD_URL + b"\xc0\xaf",
        b"/\xed\xa0\x80",
    ],
    ids=["stripe", "gumroad-token", "after-the-token", "encoded-surrogate"],
)
def test_invalid_utf8_in_the_path_is_a_4xx(
    path: bytes, app: Flask, queue: Queue, redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = _signed("gumroad", gumroad_events.encode(_sale()), FORM)
    hostile.path = path
    status, answer, _ = _send(app, hostile)
    assert 400 <= status < 500, f"{status} {answer!r}"
    assert _tracebacks(caplog) == []
    _assert_nothing_stored(queue, redis_conn)


# -- raw HTTP through gunicorn, as the Procfile runs it -----------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the server sent back on one connection before closing it."""

    raw: bytes
    elapsed: float

    @property
    def statuses(self) -> list[int]:
        """The status of every response on the connection (pipelined ones too)."""
        return [int(code) for code in re.findall(rb"(?m)^HTTP/1\.[01] (\d{3}) ", self.raw)]


def _exchange(port: int, raw: bytes) -> Answer:
    """Send ``raw``, end the request stream, read until the server closes."""
    started = time.monotonic()
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may give up mid-request: read what it answered
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
    return Answer(bytes(received), time.monotonic() - started)


@dataclasses.dataclass(frozen=True)
class WebProcess:
    """gunicorn serving the bridge, started by the Procfile's ``web:`` line."""

    port: int
    log: Path

    def send(self, raw: bytes) -> Answer:
        """One request (or whatever ``raw`` is) on a fresh connection."""
        return _exchange(self.port, raw)

    def mark(self) -> int:
        """Where the log ends now (for :meth:`log_since`)."""
        return self.log.stat().st_size

    def log_since(self, mark: int) -> str:
        """The log written since ``mark``, once a marker request shows it is all there."""
        marker = f"/log-mark-{uuid.uuid4().hex}"
        self.send(f"GET {marker} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        deadline = time.monotonic() + 5
        while True:
            text = self.log.read_bytes()[mark:].decode("utf-8", "replace")
            if marker in text or time.monotonic() > deadline:
                return text
            time.sleep(0.02)


@pytest.fixture(scope="module")
def web(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebProcess]:
    """The Procfile's web process (gunicorn, gevent) on a free port, all providers on."""
    port = free_port()
    log = tmp_path_factory.mktemp("hostile-web") / "web.log"
    prefixes = ("SOTION_", "STRIPE_", "REDIS_", "LEMONSQUEEZY_", "GUMROAD_", "BRIDGE_", "WEB_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        PORT=str(port),
        WEB_CONCURRENCY="1",
        PYTHONUNBUFFERED="1",
        REDIS_URL=redis_url,
        SOTION_API_URL="http://127.0.0.1:9/v1",  # the web process never calls Sotion
        SOTION_API_KEY=SANDBOX_KEY,
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        LEMONSQUEEZY_WEBHOOK_SECRET=LS_SECRET,
        GUMROAD_WEBHOOK_TOKEN=GUMROAD_TOKEN,
        BRIDGE_ACCEPT_TEST_EVENTS="true",
        BRIDGE_LOG_LEVEL="INFO",
    )
    with log.open("wb") as handle:
        process = subprocess.Popen(
            procfile()["web"],
            shell=True,
            env=env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = WebProcess(port, log)
    try:
        deadline = time.monotonic() + 30
        while 200 not in _ready(server):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _ready(server: WebProcess) -> list[int]:
    try:
        return server.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").statuses
    except OSError:
        return []


def _http(
    method: bytes,
    path: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    *,
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A raw request, exactly these bytes (no Content-Length unless given)."""
    lines = [method + b" " + path + b" " + version, b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers or []]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _assert_clean(log: str) -> None:
    """No traceback and never the Gumroad token, anywhere in what the server logged."""
    assert TRACEBACK not in log, log[-4000:]
    assert GUMROAD_TOKEN not in log


def _assert_4xx_or_closed(answer: Answer, *, may_close: bool) -> None:
    assert answer.elapsed < MAX_SECONDS, f"took {answer.elapsed:.2f}s"
    statuses = answer.statuses
    if not statuses:
        assert may_close, f"no answer: {answer.raw[:300]!r}"
        return
    assert 400 <= statuses[0] < 500, answer.raw[:600]
    assert all(status < 500 for status in statuses), answer.raw[:600]


CHUNKED = (b"Transfer-Encoding", b"chunked")
FORM_TYPE = (b"Content-Type", FORM.encode())
JSON_TYPE = (b"Content-Type", b"application/json")


def test_malformed_chunked_body_without_auth_is_a_4xx_without_traceback(
    web: WebProcess, queue: Queue, redis_conn: redis.Redis
) -> None:
    """Issue 8, finding 5: gunicorn's chunk parser raises inside the view's body read."""
    mark = web.mark()
    answer = web.send(
        _http(b"POST", b"/webhooks/stripe", [CHUNKED, JSON_TYPE], b"zz\r\n{}\r\n0\r\n\r\n")
    )
    _assert_4xx_or_closed(answer, may_close=True)
    _assert_clean(web.log_since(mark))
    _assert_nothing_stored(queue, redis_conn)


def test_empty_form_key_to_a_valid_gumroad_url_is_a_4xx_without_traceback(
    web: WebProcess, queue: Queue, redis_conn: redis.Redis
) -> None:
    """Issue 8, finding 5: ``=x`` is parsed as the key "" and appended to the root dict."""
    mark = web.mark()
    answer = web.send(_http(b"POST", _GUMROAD_URL, [FORM_TYPE, (b"Content-Length", b"2")], b"=x"))
    _assert_4xx_or_closed(answer, may_close=False)
    _assert_clean(web.log_since(mark))
    _assert_nothing_stored(queue, redis_conn)


def _chunked(path: bytes, body: bytes, *extra: tuple[bytes, bytes]) -> bytes:
    return _http(b"POST", path, [CHUNKED, *extra], body)


def _raw_cases() -> list[Any]:
    """(raw request, framing error: a close without answer is fine) for each case."""
    stripe, ls, gumroad = b"/webhooks/stripe", b"/webhooks/lemonsqueezy", _GUMROAD_URL
    length = (b"Content-Length", b"3")
    chunk_cases = {
        "bad-size": b"zz\r\nabc\r\n0\r\n\r\n",
        "negative-size": b"-1\r\nabc\r\n0\r\n\r\n",
        "size-with-data": b"3abc\r\n0\r\n\r\n",
        "missing-crlf-after-data": b"3\r\nabcX0\r\n\r\n",
        "extension": b"3;name=value\r\nabc\r\n0\r\n\r\n",
        "bare-cr-in-extension": b"3;a\rb\r\nabc\r\n0\r\n\r\n",
        "truncated": b"10\r\nabc",
        "no-last-chunk": b"3\r\nabc\r\n",
        "huge-size": b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "space-in-size": b"3 \r\nabc\r\n0\r\n\r\n",
        "lf-only": b"3\nabc\n0\n\n",
        "bad-trailer": b"3\r\nabc\r\n0\r\nno colon\r\n\r\n",
        "empty": b"",
    }
    cases = []
    for name, body in chunk_cases.items():
        for route, path, extra in (
            ("stripe", stripe, JSON_TYPE),
            ("lemonsqueezy", ls, JSON_TYPE),
            ("gumroad", gumroad, FORM_TYPE),
        ):
            cases.append(
                pytest.param(_chunked(path, body, extra), True, id=f"chunked-{name}-{route}")
            )
    framing = {
        "te-and-length": _http(b"POST", stripe, [CHUNKED, length], b"3\r\nabc\r\n0\r\n\r\n"),
        "te-gzip": _http(b"POST", stripe, [(b"Transfer-Encoding", b"gzip"), length], b"abc"),
        "te-chunked-twice": _http(b"POST", stripe, [(b"Transfer-Encoding", b"chunked, chunked")]),
        # gunicorn answers 501 to codings it does not know (RFC 9112 6.1 "SHOULD"), 400 to
        # gzip or deflate it will not decode: a 5xx is a 5xx to a provider all the same.
        "te-unknown-coding": _http(b"POST", stripe, [(b"Transfer-Encoding", b"foo")], b"abc"),
        "te-coding-with-parameter": _http(b"POST", ls, [(b"Transfer-Encoding", b"x;y=1")], b"abc"),
        "te-gzip-alone": _http(b"POST", stripe, [(b"Transfer-Encoding", b"gzip")], b"abc"),
        "te-chunked-not-last": _http(
            b"POST", stripe, [(b"Transfer-Encoding", b"chunked, gzip")], b"0\r\n\r\n"
        ),
        "te-identity": _http(b"POST", stripe, [(b"Transfer-Encoding", b"identity")], b"abc"),
        "te-in-http-1.0": _http(
            b"POST", stripe, [CHUNKED], b"3\r\nabc\r\n0\r\n\r\n", version=b"HTTP/1.0"
        ),
        "te-obs-fold": _http(
            b"POST", stripe, [(b"Transfer-Encoding", b"\r\n chunked")], b"0\r\n\r\n"
        ),
        "duplicate-length": _http(b"POST", stripe, [length, length], b"abc"),
        "conflicting-length": _http(b"POST", stripe, [length, (b"Content-Length", b"5")], b"abc"),
        "negative-length": _http(b"POST", stripe, [(b"Content-Length", b"-3")], b"abc"),
        "hex-length": _http(b"POST", stripe, [(b"Content-Length", b"0x3")], b"abc"),
        "huge-length": _http(b"POST", stripe, [(b"Content-Length", b"9" * 30)], b"abc"),
        "short-body": _http(b"POST", ls, [(b"Content-Length", b"100")], b"abc"),
        "gumroad-short-body": _http(
            b"POST", gumroad, [FORM_TYPE, (b"Content-Length", b"100")], b"a=1"
        ),
    }
    cases += [pytest.param(raw, True, id=name) for name, raw in framing.items()]
    lines = {
        "garbage": b"GARBAGE\r\n\r\n",
        "method-only": b"GET\r\n\r\n",
        "http-9.9": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        "nul-in-method": b"G\x00T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "lowercase-method": b"post /webhooks/stripe HTTP/1.1\r\nHost: x\r\n\r\n",
        "extra-field": b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        "invalid-utf8-path": b"POST /webhooks/gumroad/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        "space-in-path": b"POST /webhooks/ stripe HTTP/1.1\r\nHost: x\r\n\r\n",
        "too-long": b"POST /webhooks/gumroad/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "absolute-form": b"POST http://evil.example/webhooks/stripe HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    cases += [pytest.param(raw, False, id=f"request-line-{name}") for name, raw in lines.items()]
    headers = {
        "field-over-8190": _http(b"POST", gumroad, [FORM_TYPE, (b"X-Big", b"a" * 9000)], b""),
        "signature-over-8190": _http(
            b"POST", stripe, [(b"Stripe-Signature", b"t=1,v1=" + b"a" * 9000)]
        ),
        "101-fields": _http(b"POST", gumroad, [(b"X-F%d" % i, b"v") for i in range(101)], b""),
        "no-colon": _http(b"POST", stripe, [(b"No colon here", b"")]),
        "space-before-colon": _http(b"POST", stripe, [(b"Content-Length ", b"0")]),
        "nul-in-value": _http(b"POST", stripe, [(b"Stripe-Signature", b"t=1\x00,v1=00")]),
        "invalid-utf8-signature": _http(b"POST", stripe, [(b"Stripe-Signature", b"\xff\xfe")]),
        "invalid-utf8-x-signature": _http(b"POST", ls, [(b"X-Signature", b"\xff\xfe")]),
        "invalid-utf8-charset": _http(
            b"POST", gumroad, [(b"Content-Type", FORM.encode() + b"; charset=\xff"), length], b"a=1"
        ),
        "underscore-name": _http(b"POST", stripe, [(b"Stripe_Signature", b"t=1,v1=00")]),
    }
    cases += [pytest.param(raw, False, id=f"header-{name}") for name, raw in headers.items()]
    form = [FORM_TYPE]
    bodies = {
        "empty-key": b"=x",
        "two-empty-keys": b"=x&=y",
        "duplicate-key": b"a=1&a=2",
        "sale-with-empty-key": gumroad_events.encode(_sale()) + b"&=x",
        "sale-with-duplicate-sale-id": gumroad_events.encode(_sale()) + b"&sale_id=other",
        "invalid-utf8": b"sale_id=\xff",
        "invalid-percent-utf8": b"sale_id=%ff",
    }
    for name, body in bodies.items():
        raw = _http(b"POST", gumroad, [*form, (b"Content-Length", str(len(body)).encode())], body)
        cases.append(pytest.param(raw, False, id=f"gumroad-form-{name}"))
    paths = {
        "zz": b"/webhooks/gumroad/%ZZ",
        "truncated": b"/webhooks/gumroad/%",
        "invalid-utf8": b"/webhooks/gumroad/%ff%fe",
        "nul": b"/webhooks/gumroad/%00",
        "encoded-surrogate": b"/webhooks/gumroad/%ED%A0%80",
        "after-token": _GUMROAD_URL + b"%ZZ",
        "encoded-slash": b"/webhooks%2Fstripe",
        "stripe": b"/webhooks/stripe%",
        "dot-dot": b"/webhooks/%2e%2e/healthz",
    }
    for name, path in paths.items():
        raw = _http(b"POST", path, [(b"Content-Length", b"0")])
        cases.append(pytest.param(raw, False, id=f"percent-path-{name}"))
    return cases


@pytest.mark.parametrize(("raw", "framing"), _raw_cases())
def test_raw_http_is_a_4xx_or_a_closed_connection(
    raw: bytes, framing: bool, web: WebProcess, queue: Queue, redis_conn: redis.Redis
) -> None:
    mark = web.mark()
    answer = web.send(raw)
    _assert_4xx_or_closed(answer, may_close=framing)
    _assert_clean(web.log_since(mark))
    if _TOKEN not in raw:
        _assert_nothing_stored(queue, redis_conn)


def test_gumroad_token_never_reaches_the_log(web: WebProcess) -> None:
    """Requests that make gunicorn or the app log their path, token included."""
    token_paths = [
        _GUMROAD_URL,
        b"/WEBHOOKS/GUMROAD/" + _TOKEN,
        b"//webhooks//gumroad//" + _TOKEN,
        b"/webhooks/gumroad%2F" + _TOKEN,
        b"/healthz?t=" + _TOKEN,
        _GUMROAD_URL + b"?x=%ZZ",
    ]
    requests = []
    for path in token_paths:
        requests += [
            b"POST " + path + b" HTTP/1.1 junk\r\nHost: x\r\n\r\n",
            b"POST " + path + b" HTTP/9.9\r\nHost: x\r\n\r\n",
            _http(b"GET", path, [(b"Content-Length", b"0")]),
            _http(b"POST", path, [FORM_TYPE, (b"Bad Header", b"x")]),
            _chunked(path, b"zz\r\n=x\r\n0\r\n\r\n", FORM_TYPE),
        ]
    mark = web.mark()
    for raw in requests:
        assert web.send(raw).elapsed < MAX_SECONDS, raw
    # Only the token here: the answers' statuses and tracebacks are the other tests' job.
    assert GUMROAD_TOKEN not in web.log_since(mark)


_RAW_METHODS = (b"GET", b"POST", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"HEAD", b"PATCH", b"FOO")
_RAW_PATHS = (
    b"/webhooks/stripe",
    b"/webhooks/lemonsqueezy",
    _GUMROAD_URL,
    b"/webhooks/gumroad/wrong-token",
    b"/healthz",
    b"/readyz",
    b"/metrics",
    b"/nothing",
)
_RAW_NAMES = (b"Content-Type", b"Content-Length", b"Transfer-Encoding", b"Stripe-Signature")
_RAW_NAMES += (b"X-Signature", b"Expect", b"Connection", b"X-Anything", b"Content-Encoding")


def _random_request(rng: random.Random) -> bytes:
    """A request with random method, path, headers, body and framing (some of it valid)."""
    path = rng.choice(_RAW_PATHS)
    if rng.random() < 0.2:
        path += rng.choice((b"%ZZ", b"%ff", b"%", b"?%ZZ", b"/x", b"%00"))
    body = rng.choice(
        (
            rng.randbytes(rng.randint(0, 300)),
            json.dumps({"id": rng.random(), "data": [None] * rng.randint(0, 5)}).encode(),
            b"&".join(
                rng.choice((b"", b"a", b"sale_id", b"email", b"a[]", b"[b]", b"%ZZ"))
                + b"="
                + rng.choice((b"", b"x", b"%FF", b"\xff", b"\x00"))
                for _ in range(rng.randint(0, 6))
            ),
            b"x" * rng.choice((0, 1, 8191, 100_000)),
        )
    )
    headers = []
    for _ in range(rng.randint(0, 6)):
        value = rng.choice(
            (
                bytes(rng.choice(range(0x20, 0x7F)) for _ in range(rng.randint(0, 40))),
                rng.randbytes(rng.randint(1, 20)).replace(b"\r", b"").replace(b"\n", b""),
                b"chunked",
                b"application/json; charset=utf-16",
                f"{FORM}; charset=latin-1".encode(),
                b"100-continue",
                b"v" * rng.choice((100, 8190, 9000)),
            )
        )
        headers.append((rng.choice(_RAW_NAMES), value))
    if rng.random() < 0.3:
        headers.append((b"Stripe-Signature", stripe_events.sign(body, STRIPE_SECRET).encode()))
    if rng.random() < 0.3:
        digest = hmac.new(LS_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers.append((b"X-Signature", digest.encode()))
    framing = rng.choice(("length", "length", "chunked", "bad-chunked", "none", "wrong-length"))
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "wrong-length":
        headers.append((b"Content-Length", str(max(0, len(body) + rng.randint(-5, 5))).encode()))
    elif framing in ("chunked", "bad-chunked"):
        headers.append(CHUNKED)
        size = (
            b"%x" % len(body) if framing == "chunked" else rng.choice((b"zz", b"-1", b"1 1", b""))
        )
        body = size + b"\r\n" + body + rng.choice((b"\r\n0\r\n\r\n", b"0\r\n\r\n", b"\r\n"))
    rng.shuffle(headers)
    return _http(rng.choice(_RAW_METHODS), path, headers, body)


def test_seeded_random_raw_requests_are_never_5xx(web: WebProcess) -> None:
    rng = random.Random(8)
    mark = web.mark()
    failures = []
    for _ in range(300):
        raw = _random_request(rng)
        answer = web.send(raw)
        if answer.elapsed >= MAX_SECONDS or any(status >= 500 for status in answer.statuses):
            failures.append((answer.statuses, round(answer.elapsed, 2), raw[:400]))
    # Every failing request at once: the distinct causes are easier to tell apart.
    assert failures == []
    _assert_clean(web.log_since(mark))


def test_the_fuzz_covers_every_route_the_app_serves(app: Flask) -> None:
    fuzzed = {path.decode() for path, _ in _PRIMARY.values()}
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            assert rule.rule.replace("<token>", GUMROAD_TOKEN) in fuzzed, rule.rule
