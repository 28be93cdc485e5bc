"""Resolving the products file's access-group names to Sotion group ids at start-up."""

from __future__ import annotations

from bridge.errors import SettingsError
from bridge.products import Catalog, is_group_id
from bridge.sotion import SotionAPI


def resolve_groups(catalog: Catalog, sotion: SotionAPI) -> Catalog:
    """The catalog with every group as an id; SettingsError names any group Sotion lacks."""
    references = catalog.group_references()
    if not references:
        return catalog
    if sotion.flavor == "legacy":
        raise SettingsError(
            "BRIDGE_PRODUCTS names access groups, but the legacy Sotion API has none"
        )
    groups = list(sotion.iter_access_groups())
    by_id = {group.id: group for group in groups}
    by_name = {group.name: group for group in groups}
    ids: dict[str, str] = {}
    missing = []
    for reference in sorted(references):
        group = by_id.get(reference) if is_group_id(reference) else by_name.get(reference)
        if group is None:
            missing.append(reference)
        elif group.type == "scope":
            raise SettingsError(
                f"BRIDGE_PRODUCTS: access group {reference!r} is a scope group, which the "
                "API cannot add members to; use a custom group"
            )
        else:
            ids[reference] = group.id
    if missing:
        raise SettingsError(
            f"BRIDGE_PRODUCTS: access group(s) not found in Sotion: {', '.join(missing)}"
        )
    return catalog.with_group_ids(ids)
