"""Who an event is about: its email and its entitlement, from the event, what earlier
events taught the store, or the provider's API; and, where an API key allows, the
entitlement's current state instead of the payload's (Stripe's own recommendation).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from bridge.events import EntitlementState, MembershipEvent, normalize_email
from bridge.providers import stripe as stripe_provider
from bridge.stripe_api import StripeAPI
from workers.store import PAYMENT_REFS, Store

# Event types whose state may be replaced by a fresh read of the subscription.
_REFRESHABLE_PREFIXES = ("customer.subscription.", "invoice.", "checkout.session.")


class UnresolvedError(Exception):
    """The event cannot be tied to an email; retrying will not help."""

    retryable = False


class Resolver:
    """Resolves emails and entitlement keys, and refreshes state from provider APIs."""

    def __init__(
        self,
        store: Store,
        *,
        stripe_api: StripeAPI | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.stripe_api = stripe_api
        self._clock = clock

    def entitlement(self, event: MembershipEvent) -> str | None:
        """The entitlement key, from the event or from what its payment ids mapped to."""
        if event.entitlement:
            return event.entitlement
        for name in PAYMENT_REFS:
            ref = event.refs.get(name)
            if ref:
                known = self.store.entitlement_for(event.provider, ref)
                if known:
                    return known
        for name in ("payment_intent", "charge"):
            ref = event.refs.get(name)
            if ref:
                return f"{event.provider}:{ref}"
        return None

    def email(self, event: MembershipEvent) -> str | None:
        """The buyer's email, or None when no source knows it."""
        if event.email:
            return event.email
        refs = [event.customer, *event.refs.values()]
        for ref in refs:
            if ref:
                known = self.store.email_for(event.provider, ref)
                if known:
                    return known
        if event.provider == stripe_provider.PROVIDER and self.stripe_api is not None:
            found = self._stripe_email(event)
            if found:
                return normalize_email(found)
        return None

    def require_email(self, event: MembershipEvent) -> str:
        """The buyer's email; UnresolvedError with the reason when it cannot be known."""
        email = self.email(event)
        if email is not None:
            return email
        subject = event.customer or next(iter(event.refs.values()), event.event_id)
        hint = (
            "the Stripe API has no email for it"
            if self.stripe_api is not None
            else "set STRIPE_API_KEY to look it up"
            if event.provider == stripe_provider.PROVIDER
            else "no API is configured to look it up"
        )
        raise UnresolvedError(
            f"cannot tell which email {subject} belongs to: no earlier event named it and {hint}"
        )

    def refresh(self, event: MembershipEvent, entitlement: str | None) -> MembershipEvent:
        """The event with the subscription's current state, when the Stripe API is set."""
        if (
            self.stripe_api is None
            or entitlement is None
            or not entitlement.startswith(f"{stripe_provider.PROVIDER}:sub_")
            or not event.event_type.startswith(_REFRESHABLE_PREFIXES)
            or event.state is EntitlementState.PENDING
        ):
            return event
        subscription = self.stripe_api.subscription(entitlement.partition(":")[2])
        return dataclasses.replace(
            event,
            state=stripe_provider.subscription_state(subscription),
            products=stripe_provider.subscription_products(subscription) or event.products,
            occurred_at=max(event.occurred_at, self._clock()),
        )

    def _stripe_email(self, event: MembershipEvent) -> str | None:
        assert self.stripe_api is not None
        if event.customer:
            return self.stripe_api.customer_email(event.customer)
        charge_id = event.refs.get("charge")
        if not charge_id:
            return None
        charge = self.stripe_api.charge(charge_id)
        billing = charge.get("billing_details") or {}
        email = billing.get("email") or charge.get("receipt_email")
        if email:
            return str(email)
        customer = charge.get("customer")
        if isinstance(customer, dict):
            customer = customer.get("id")
        return self.stripe_api.customer_email(customer) if customer else None
