"""The products file: strict parsing, matching, and what each purchase grants."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.events import EntitlementState
from bridge.ledger import Entitlement
from bridge.products import Grant, load_catalog, parse_catalog
from bridge.settings import SettingsError

GOOD = """
default_groups = ["Members"]

[[products]]
name = "Pro"
stripe_prices = ["price_pro"]
stripe_products = ["prod_pro"]
groups = ["Course A"]

[[products]]
name = "LS bundle"
lemonsqueezy_products = [111]
lemonsqueezy_variants = [222]
groups = ["Bundle", "7d1f0c52-4b8e-4f7e-9a39-1f2b3c4d5e6f"]

[[products]]
name = "Forum only"
gumroad_permalinks = ["forum"]
gumroad_products = ["wAz3bLm5QeX9sT1kPq7YvA=="]
paid = false
groups = ["Forum"]
"""


def _entitlement(provider: str, *products: str) -> Entitlement:
    return Entitlement(
        key=f"{provider}:x",
        provider=provider,
        state=EntitlementState.ACTIVE,
        occurred_at=1.0,
        event_id="e",
        products=products,
    )


@pytest.fixture
def products_file(tmp_path: Path) -> Path:
    path = tmp_path / "products.toml"
    path.write_text(GOOD)
    return path


def test_rules_match_each_providers_ids(products_file: Path) -> None:
    catalog = load_catalog(products_file)
    assert catalog.grant_for(_entitlement("stripe", "price_pro")) == Grant(
        True, frozenset({"Course A"})
    )
    assert catalog.grant_for(_entitlement("stripe", "price_other", "prod_pro")) is not None
    assert catalog.grant_for(_entitlement("lemonsqueezy", "variant:222")) is not None
    assert catalog.grant_for(_entitlement("lemonsqueezy", "product:111")) is not None
    forum = catalog.grant_for(_entitlement("gumroad", "permalink:forum"))
    assert forum == Grant(False, frozenset({"Forum"}))
    assert catalog.default_groups == {"Members"}


def test_an_id_of_another_provider_does_not_match(products_file: Path) -> None:
    catalog = load_catalog(products_file)
    assert catalog.grant_for(_entitlement("gumroad", "price_pro")) is None
    assert catalog.grant_for(_entitlement("stripe", "variant:222")) is None


def test_unlisted_and_unknown_products(products_file: Path) -> None:
    catalog = load_catalog(products_file)
    assert catalog.grant_for(_entitlement("stripe", "price_unlisted")) is None
    assert catalog.grant_for(_entitlement("stripe")) is None


def test_group_references_and_their_replacement_by_ids(products_file: Path) -> None:
    catalog = load_catalog(products_file)
    references = catalog.group_references()
    assert references == {
        "Members",
        "Course A",
        "Bundle",
        "Forum",
        "7d1f0c52-4b8e-4f7e-9a39-1f2b3c4d5e6f",
    }
    resolved = catalog.with_group_ids({ref: f"id-{ref}" for ref in references})
    assert resolved.default_groups == {"id-Members"}
    grant = resolved.grant_for(_entitlement("stripe", "price_pro"))
    assert grant is not None and grant.groups == {"id-Course A"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[products]\nname = 1", "invalid TOML"),
        ('colour = "red"', "unknown key(s) colour"),
        ('[[products]]\nname = "A"\nstripe_prices = ["p"]\ncolour = 1', "unknown key(s) colour"),
        ('[[products]]\nname = "A"', "lists no product id"),
        ('[[products]]\nname = "A"\nstripe_prices = "p"', "stripe_prices must be a list"),
        ('[[products]]\nname = "A"\nstripe_prices = [true]', "is not an id"),
        ('[[products]]\nname = "A"\nstripe_prices = ["p"]\npaid = "yes"', "paid must be"),
        ('[[products]]\nname = "A"\nstripe_prices = ["p"]\ngroups = [1]', "groups must be"),
        ('[[products]]\nname = "A"\nstripe_prices = ["p"]\npaid = false', "grants nothing"),
        ("default_groups = ['']", "default_groups must be"),
        ("products = 3", "array of tables"),
        (
            '[[products]]\nname = "A"\nstripe_prices = ["p"]\n'
            '[[products]]\nname = "B"\nstripe_prices = ["p"]',
            "is in both 'A' and 'B'",
        ),
    ],
)
def test_invalid_files_fail_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load_catalog(path)
    assert "BRIDGE_PRODUCTS" in str(caught.value)
    assert message in str(caught.value)


def test_missing_file_fails_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"BRIDGE_PRODUCTS.*cannot read"):
        load_catalog(tmp_path / "nope.toml")


def test_rule_errors_name_the_rule() -> None:
    with pytest.raises(SettingsError, match=r"products #2 \(Broken\)"):
        parse_catalog(
            {
                "products": [
                    {"name": "Fine", "stripe_prices": ["a"]},
                    {"name": "Broken", "stripe_prices": ["b"], "extra": 1},
                ]
            }
        )
