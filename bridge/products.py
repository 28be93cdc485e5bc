"""The products file (``BRIDGE_PRODUCTS``): which purchases grant what.

A TOML file of rules, one per product: the provider ids it matches, whether it makes
the buyer a paid member, and which Sotion access groups (ids or names) it adds::

    default_groups = ["Members"]          # added for every member with access

    [[products]]
    name = "Pro membership"               # for logs and errors
    stripe_prices = ["price_123"]
    stripe_products = ["prod_ABC"]
    lemonsqueezy_products = [12345]
    lemonsqueezy_variants = [67890]
    gumroad_products = ["wAz3bLm5QeX9sT1kPq7YvA=="]
    gumroad_permalinks = ["pro"]
    paid = true                           # default true
    groups = ["Course A", "7d1f0c52-4b8e-4f7e-9a39-1f2b3c4d5e6f"]

Without a file every successful purchase grants ``paid=true`` and no groups. With one,
purchases of products no rule lists are acknowledged and ignored.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bridge.errors import SettingsError
from bridge.ledger import Entitlement

# The keys of a rule, and which provider id each one matches (as providers.* record them).
_MATCH_KEYS = {
    "stripe_prices": ("stripe", ""),
    "stripe_products": ("stripe", ""),
    "lemonsqueezy_products": ("lemonsqueezy", "product:"),
    "lemonsqueezy_variants": ("lemonsqueezy", "variant:"),
    "gumroad_products": ("gumroad", "product:"),
    "gumroad_permalinks": ("gumroad", "permalink:"),
}
_RULE_KEYS = frozenset({"name", "paid", "groups", *_MATCH_KEYS})
_TOP_KEYS = frozenset({"default_groups", "products"})
# Sotion group ids are UUIDs; anything else in a groups list is a group name.
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class Grant:
    """What owning one product gives."""

    paid: bool = True
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rule:
    """One product rule."""

    name: str
    matches: frozenset[tuple[str, str]]  # (provider, id as the provider module records it)
    grant: Grant


@dataclass(frozen=True)
class Catalog:
    """Every rule of the products file, plus the default groups."""

    rules: tuple[Rule, ...] = ()
    default_groups: frozenset[str] = frozenset()
    _index: Mapping[tuple[str, str], Rule] = field(default_factory=dict, repr=False)

    def rule_for(self, provider: str, products: Iterable[str]) -> Rule | None:
        """The first rule matching any of the product ids, or None."""
        for product in products:
            rule = self._index.get((provider, product))
            if rule is not None:
                return rule
        return None

    def grant_for(self, entitlement: Entitlement) -> Grant | None:
        """What this entitlement grants; None when its product is unlisted or unknown."""
        rule = self.rule_for(entitlement.provider, entitlement.products)
        return rule.grant if rule is not None else None

    def group_references(self) -> frozenset[str]:
        """Every group named or referenced by id anywhere in the file."""
        groups = set(self.default_groups)
        for rule in self.rules:
            groups.update(rule.grant.groups)
        return frozenset(groups)

    def with_group_ids(self, ids: Mapping[str, str]) -> Catalog:
        """The same catalog with group names replaced by ids (``ids``: reference → id)."""
        rules = tuple(
            replace(
                rule,
                grant=replace(rule.grant, groups=frozenset(ids[g] for g in rule.grant.groups)),
            )
            for rule in self.rules
        )
        return _catalog(rules, frozenset(ids[g] for g in self.default_groups))


def is_group_id(reference: str) -> bool:
    """True when a groups entry is a Sotion group id rather than a name."""
    return bool(_UUID.match(reference))


def load_catalog(path: Path) -> Catalog:
    """Read and validate a products file; SettingsError says what is wrong and where."""
    where = f"BRIDGE_PRODUCTS ({path})"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{where}: cannot read the file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{where}: the file is not UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{where}: invalid TOML: {exc}") from exc
    return parse_catalog(data, where)


def parse_catalog(data: Mapping[str, Any], where: str = "BRIDGE_PRODUCTS") -> Catalog:
    """Validate the parsed TOML of a products file."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(unknown)}")
    defaults = _strings(data.get("default_groups", []), f"{where}: default_groups")
    products = data.get("products", [])
    if not isinstance(products, list):
        raise SettingsError(f"{where}: products must be an array of tables ([[products]])")
    rules = []
    seen: dict[tuple[str, str], str] = {}
    for index, raw in enumerate(products, start=1):
        rule = _rule(raw, f"{where}: products #{index}")
        for match in rule.matches:
            if match in seen:
                raise SettingsError(
                    f"{where}: {match[0]} id {match[1]!r} is in both "
                    f"{seen[match]!r} and {rule.name!r}"
                )
            seen[match] = rule.name
        rules.append(rule)
    return _catalog(tuple(rules), frozenset(defaults))


def _catalog(rules: tuple[Rule, ...], default_groups: frozenset[str]) -> Catalog:
    index = {match: rule for rule in rules for match in rule.matches}
    return Catalog(rules=rules, default_groups=default_groups, _index=index)


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: must be a table")
    name = raw.get("name", where.rsplit(": ", 1)[-1])
    if not isinstance(name, str) or not name.strip():
        raise SettingsError(f"{where}: name must be a non-empty string")
    where = f"{where} ({name})" if "name" in raw else where
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(unknown)}")
    paid = raw.get("paid", True)
    if not isinstance(paid, bool):
        raise SettingsError(f"{where}: paid must be true or false")
    groups = _strings(raw.get("groups", []), f"{where}: groups")
    matches: set[tuple[str, str]] = set()
    for key, (provider, prefix) in _MATCH_KEYS.items():
        for value in _ids(raw.get(key, []), f"{where}: {key}"):
            matches.add((provider, prefix + value))
    if not matches:
        raise SettingsError(f"{where}: lists no product id ({', '.join(_MATCH_KEYS)})")
    if not paid and not groups:
        raise SettingsError(f"{where}: grants nothing (paid = false and no groups)")
    return Rule(name=name, matches=frozenset(matches), grant=Grant(paid, frozenset(groups)))


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SettingsError(f"{where} must be a list of non-empty strings")
    return [v.strip() for v in value]


def _ids(value: Any, where: str) -> list[str]:
    """Provider ids: strings, or integers for Lemon Squeezy's numeric ids."""
    if not isinstance(value, list):
        raise SettingsError(f"{where} must be a list")
    ids = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise SettingsError(f"{where}: {item!r} is not an id")
        text = str(item).strip()
        if not text:
            raise SettingsError(f"{where}: empty id")
        ids.append(text)
    return ids
