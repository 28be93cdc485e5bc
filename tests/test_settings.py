"""Settings read the environment strictly and name the variable at fault."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from bridge.membership import DisputeAction, Policy, RevokeAction
from bridge.queues import connect
from bridge.settings import DEFAULT_SOTION_API_URL, Settings, SettingsError
from bridge.settings import policy as bridge_policy
from bridge.sotion import LegacySotionClient, SotionClient, client_from_settings


def test_defaults_when_environment_is_empty() -> None:
    settings = Settings.from_env({})
    assert settings.sotion_api_url == DEFAULT_SOTION_API_URL
    assert settings.redis_url is None
    assert settings.accept_test_events is False
    assert settings.stripe_webhook_secrets == ()
    assert settings.unpay_manual is False
    assert settings.inquiries_are_disputes is False
    assert settings.park_hours == 72.0


NEW_WHSEC = "whsec_" + "N3w" * 11
OLD_WHSEC = "whsec_" + "0ld" * 11


def test_comma_separated_secrets_allow_rotation() -> None:
    settings = Settings.from_env({"STRIPE_WEBHOOK_SECRET": f"{NEW_WHSEC}, {OLD_WHSEC}"})
    assert settings.stripe_webhook_secrets == (NEW_WHSEC, OLD_WHSEC)


# -- secrets that would let anyone forge a purchase are refused at start-up -------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("STRIPE_WEBHOOK_SECRET", "whsec_your_secret", id="env-example-stripe"),
        pytest.param("SOTION_API_KEY", "so_your_key", id="env-example-sotion"),
        pytest.param("STRIPE_WEBHOOK_SECRET", "whsec_changeme0123456789abcdefghij", id="changeme"),
        pytest.param("LEMONSQUEEZY_WEBHOOK_SECRET", "<your signing secret>", id="angle-brackets"),
        pytest.param(
            "GUMROAD_WEBHOOK_TOKEN", "replace-with-a-long-random-token-0000", id="replace"
        ),
        pytest.param("GUMROAD_ACCESS_TOKEN", "...", id="dots"),
        pytest.param("STRIPE_API_KEY", "secret", id="bare-word"),
    ],
)
def test_placeholder_secrets_are_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{name} is a placeholder"):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("sk_live_" + "a" * 30, id="an-api-key"),
        pytest.param("whsec_" + "a" * 12, id="too-short"),
        pytest.param("whsec " + "a" * 32, id="no-underscore"),
        pytest.param("WHSEC_" + "a" * 32, id="upper-prefix"),
        pytest.param("whsec_" + "a" * 31 + "!", id="punctuation"),
    ],
)
def test_stripe_secret_that_is_not_a_signing_secret_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="STRIPE_WEBHOOK_SECRET must be"):
        Settings.from_env({"STRIPE_WEBHOOK_SECRET": value})


def test_every_secret_of_a_rotation_list_is_checked() -> None:
    with pytest.raises(SettingsError, match="STRIPE_WEBHOOK_SECRET"):
        Settings.from_env({"STRIPE_WEBHOOK_SECRET": f"{NEW_WHSEC},whsec_short"})


def test_short_gumroad_token_is_refused_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="GUMROAD_WEBHOOK_TOKEN must be at least 32"):
        Settings.from_env({"GUMROAD_WEBHOOK_TOKEN": "abc123"})


def test_gumroad_token_that_is_not_url_safe_is_refused() -> None:
    with pytest.raises(SettingsError, match="GUMROAD_WEBHOOK_TOKEN must use only"):
        Settings.from_env({"GUMROAD_WEBHOOK_TOKEN": "a/b?c" + "k7" * 20})


def test_short_lemonsqueezy_secret_is_refused_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="LEMONSQUEEZY_WEBHOOK_SECRET must be at least 16"):
        Settings.from_env({"LEMONSQUEEZY_WEBHOOK_SECRET": "ls_secret"})


def test_plausible_secrets_are_accepted() -> None:
    settings = Settings.from_env(
        {
            "STRIPE_WEBHOOK_SECRET": NEW_WHSEC,
            "LEMONSQUEEZY_WEBHOOK_SECRET": "q8Zr2LwYt6NbVx4K",
            "GUMROAD_WEBHOOK_TOKEN": "Jk3_9sQ-" * 4,
        }
    )
    assert settings.stripe_webhook_secrets == (NEW_WHSEC,)
    assert settings.gumroad_webhook_token == "Jk3_9sQ-" * 4


def test_env_example_sets_no_working_value() -> None:
    lines = (Path(__file__).resolve().parents[1] / ".env.example").read_text().splitlines()
    assigned = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert assigned == []


def test_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("so_from_file\n")
    settings = Settings.from_env({"SOTION_API_KEY_FILE": str(secret)})
    assert settings.sotion_api_key == "so_from_file"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SOTION_API_KEY": "not-a-so-key"}, "SOTION_API_KEY"),
        ({"SOTION_API_URL": "ftp://example.com"}, "SOTION_API_URL"),
        ({"SOTION_API_FLAVOR": "v9"}, "SOTION_API_FLAVOR"),
        ({"SOTION_API_FLAVOR": "legacy", "SOTION_API_KEY": "k"}, "SOTION_SITE_ID"),
        ({"SOTION_TIMEOUT": "fast"}, "SOTION_TIMEOUT"),
        ({"SOTION_TIMEOUT": "0"}, "SOTION_TIMEOUT"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"BRIDGE_ACCEPT_TEST_EVENTS": "maybe"}, "BRIDGE_ACCEPT_TEST_EVENTS"),
        ({"STRIPE_WEBHOOK_SECRET": "a,,b"}, "STRIPE_WEBHOOK_SECRET"),
        ({"SOTION_API_KEY_FILE": "/nonexistent/key"}, "SOTION_API_KEY_FILE"),
        ({"SOTION_API_KEY": "so_a", "SOTION_API_KEY_FILE": "/x"}, "SOTION_API_KEY"),
    ],
)
def test_bad_values_fail_naming_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(environ)


def test_timeout_accepts_read_or_connect_and_read() -> None:
    assert Settings.from_env({"SOTION_TIMEOUT": "20"}).sotion_timeout == (3.05, 20.0)
    assert Settings.from_env({"SOTION_TIMEOUT": "2,8"}).sotion_timeout == (2.0, 8.0)


def test_client_from_settings_picks_the_flavour() -> None:
    v1 = client_from_settings(Settings(sotion_api_key="so_x"))
    assert isinstance(v1, SotionClient)
    legacy = client_from_settings(
        Settings.from_env(
            {"SOTION_API_FLAVOR": "legacy", "SOTION_API_KEY": "k", "SOTION_SITE_ID": "S1"}
        )
    )
    assert isinstance(legacy, LegacySotionClient)
    assert legacy.transport.base_url == "https://k.api.sotion.app/sites/S1"


def test_client_from_settings_without_key_names_it() -> None:
    with pytest.raises(SettingsError, match="SOTION_API_KEY"):
        client_from_settings(Settings())


def test_policies_default_to_the_design() -> None:
    policy = bridge_policy(Settings.from_env({}))
    assert policy == Policy()


def test_policies_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "BRIDGE_ON_END": "block",
            "BRIDGE_ON_DISPUTE": "revoke",
            "BRIDGE_PAST_DUE_GRACE_DAYS": "3",
            "BRIDGE_UNBLOCK_MANUAL": "true",
            "BRIDGE_UNPAY_MANUAL": "true",
            "BRIDGE_ON_INQUIRY": "dispute",
        }
    )
    policy = bridge_policy(settings)
    assert policy.revoke_action is RevokeAction.BLOCK
    assert policy.dispute_action is DisputeAction.REVOKE
    assert policy.past_due_grace_seconds == 3 * 86400
    assert policy.unblock_manual_blocks is True
    assert policy.unpay_manual_paid is True
    assert policy.inquiries_are_disputes is True


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("1", True), ("no", False), ("", False)]
)
def test_unpay_manual_reads_a_boolean(value: str, expected: bool) -> None:
    settings = Settings.from_env({"BRIDGE_UNPAY_MANUAL": value})
    assert settings.unpay_manual is expected
    assert bridge_policy(settings).unpay_manual_paid is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("ignore", False), ("IGNORE", False), ("dispute", True), (" Dispute ", True), ("", False)],
)
def test_on_inquiry_says_whether_inquiries_count_as_disputes(value: str, expected: bool) -> None:
    settings = Settings.from_env({"BRIDGE_ON_INQUIRY": value})
    assert settings.inquiries_are_disputes is expected
    assert bridge_policy(settings).inquiries_are_disputes is expected


@pytest.mark.parametrize(("value", "expected"), [("24", 24.0), ("0.5", 0.5), ("0", 0.0)])
def test_park_hours_are_read_from_the_environment(value: str, expected: float) -> None:
    assert Settings.from_env({"BRIDGE_PARK_HOURS": value}).park_hours == expected


@pytest.mark.parametrize(("value", "expected"), [(None, 60.0), ("15", 15.0), ("0", 0.0)])
def test_reconcile_interval_defaults_to_an_hour(value: str | None, expected: float) -> None:
    environ = {} if value is None else {"BRIDGE_RECONCILE_INTERVAL": value}
    assert Settings.from_env(environ).reconcile_interval_minutes == expected


def test_zero_grace_days_revoke_past_due_at_once() -> None:
    policy = bridge_policy(Settings.from_env({"BRIDGE_PAST_DUE_GRACE_DAYS": "0"}))
    assert policy.past_due_keeps_access is False


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"BRIDGE_ON_END": "delete"}, "BRIDGE_ON_END"),
        ({"BRIDGE_ON_DISPUTE": "ignore"}, "BRIDGE_ON_DISPUTE"),
        ({"BRIDGE_PAST_DUE_GRACE_DAYS": "-1"}, "BRIDGE_PAST_DUE_GRACE_DAYS"),
        ({"BRIDGE_PAST_DUE_GRACE_DAYS": "soon"}, "BRIDGE_PAST_DUE_GRACE_DAYS"),
        ({"BRIDGE_UNBLOCK_MANUAL": "perhaps"}, "BRIDGE_UNBLOCK_MANUAL"),
        ({"BRIDGE_UNPAY_MANUAL": "perhaps"}, "BRIDGE_UNPAY_MANUAL"),
        ({"BRIDGE_ON_INQUIRY": "block"}, "BRIDGE_ON_INQUIRY"),
        ({"BRIDGE_ON_INQUIRY": "revoke"}, "BRIDGE_ON_INQUIRY"),
        ({"BRIDGE_PARK_HOURS": "-1"}, "BRIDGE_PARK_HOURS"),
        ({"BRIDGE_PARK_HOURS": "a while"}, "BRIDGE_PARK_HOURS"),
        ({"BRIDGE_PARK_HOURS": "nan"}, "BRIDGE_PARK_HOURS"),
        ({"BRIDGE_RECONCILE_INTERVAL": "-5"}, "BRIDGE_RECONCILE_INTERVAL"),
        ({"BRIDGE_RECONCILE_INTERVAL": "hourly"}, "BRIDGE_RECONCILE_INTERVAL"),
        ({"BRIDGE_RECONCILE_INTERVAL": "inf"}, "BRIDGE_RECONCILE_INTERVAL"),
    ],
)
def test_bad_policies_fail_naming_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(environ)


def test_infinite_park_hours_fail_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="BRIDGE_PARK_HOURS"):
        Settings.from_env({"BRIDGE_PARK_HOURS": "inf"})


def test_the_redis_urls_password_is_a_secret_masked_in_logs() -> None:
    settings = Settings.from_env({"REDIS_URL": "rediss://default:p4ssw0rd-redis@host:6380/0"})
    assert "p4ssw0rd-redis" in settings.secret_values()
    assert Settings.from_env({"REDIS_URL": "redis://host:6379/0"}).secret_values() == ()


def test_rediss_urls_check_the_certificate_unless_told_not_to() -> None:
    url = "rediss://:pw@redis.example.com:6380/0"
    checked = connect(Settings.from_env({"REDIS_URL": url}))
    unchecked = connect(Settings.from_env({"REDIS_URL": url, "REDIS_TLS_VERIFY": "false"}))

    assert checked.connection_pool.connection_class is redis.SSLConnection
    assert checked.connection_pool.connection_kwargs.get("ssl_cert_reqs", "required") == "required"
    assert unchecked.connection_pool.connection_class is redis.SSLConnection
    assert unchecked.connection_pool.connection_kwargs["ssl_cert_reqs"] is None
    # Plain redis:// is untouched by the setting.
    plain = connect(Settings.from_env({"REDIS_URL": "redis://h:6379/0", "REDIS_TLS_VERIFY": "0"}))
    assert "ssl_cert_reqs" not in plain.connection_pool.connection_kwargs


def test_a_malformed_tls_verify_or_dry_run_value_names_the_variable() -> None:
    for name in ("REDIS_TLS_VERIFY", "BRIDGE_DRY_RUN"):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: "sometimes"})
