"""Who an event is about: its email and its entitlement, from the event, what earlier
events taught the store, or the provider's API; and, where an API key allows, the
entitlement's current state instead of the payload's (the providers' own advice).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from bridge.events import EntitlementState, MembershipEvent, normalize_email
from bridge.gumroad_api import GumroadAPI
from bridge.gumroad_confirm import GumroadMismatchError, confirm
from bridge.lemonsqueezy_api import LemonSqueezyAPI
from bridge.providers import gumroad, lemonsqueezy
from bridge.providers import stripe as stripe_provider
from bridge.stripe_api import ProviderAPIError, StripeAPI, invoice_payment_refs
from workers.store import PAYMENT_REFS, Store

log = logging.getLogger(__name__)

# Stripe event types whose state may be replaced by a fresh read of the subscription.
_REFRESHABLE_PREFIXES = ("customer.subscription.", "invoice.", "checkout.session.")
# References that name a purchase of their own when nothing maps them elsewhere.
_STANDALONE_REFS = ("payment_intent", "charge", "order", "sale")


class UnresolvedError(Exception):
    """The event cannot be tied to an email or product; retrying will not help."""

    retryable = False


class EmailUnknownError(UnresolvedError):
    """No source knows the buyer's email yet; a later event may teach it (the event parks)."""

    def __init__(self, message: str, subjects: tuple[str, ...]) -> None:
        super().__init__(message)
        self.subjects = subjects  # the ids whose email, once learned, resolves the event


class Resolver:
    """Resolves emails and entitlement keys, and refreshes state from provider APIs."""

    def __init__(
        self,
        store: Store,
        *,
        stripe_api: StripeAPI | None = None,
        lemonsqueezy_api: LemonSqueezyAPI | None = None,
        gumroad_api: GumroadAPI | None = None,
        gumroad_seller_id: str | None = None,
        needs_products: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.stripe_api = stripe_api
        self.lemonsqueezy_api = lemonsqueezy_api
        self.gumroad_api = gumroad_api
        self.gumroad_seller_id = gumroad_seller_id
        self.needs_products = needs_products
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
        linked = self._stripe_dispute_subscription(event)
        if linked is not None:
            return linked
        for name in _STANDALONE_REFS:
            ref = event.refs.get(name)
            if ref:
                return f"{event.provider}:{ref}"
        return None

    def _stripe_dispute_subscription(self, event: MembershipEvent) -> str | None:
        """The subscription a disputed Stripe payment paid an invoice of, asked of Stripe.

        A dispute names only its charge and payment intent; from API version basil on, a
        renewal's invoice names neither, so only Stripe's Invoice Payments can tie the
        payment to its subscription (one call, for disputes the ledger cannot place).
        A refusal (a restricted key) leaves the dispute on the payment alone.
        """
        intent = event.refs.get("payment_intent")
        if (
            event.provider != stripe_provider.PROVIDER
            or event.dispute is None
            or self.stripe_api is None
            or not intent
        ):
            return None
        try:
            page = self.stripe_api.list_invoice_payments(intent)
        except ProviderAPIError as exc:
            if exc.retryable:
                raise
            log.warning("invoice of a disputed payment unknown: %s", exc)
            return None
        subscription = invoice_payment_refs(page.objects).get("subscription")
        return f"{stripe_provider.PROVIDER}:{subscription}" if subscription else None

    def email(self, event: MembershipEvent) -> str | None:
        """The buyer's email, or None when no source knows it."""
        if event.email:
            return event.email
        for ref in [event.customer, *event.refs.values()]:
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
        raise EmailUnknownError(
            f"cannot tell which email {subject} belongs to: no earlier event named it and {hint}",
            subjects(event),
        )

    def refresh(self, event: MembershipEvent, entitlement: str | None) -> MembershipEvent:
        """The event with the purchase's current state where a provider API is set."""
        if event.provider == gumroad.PROVIDER and self.gumroad_api is not None:
            return self._confirm_gumroad(event, self.gumroad_api)
        if entitlement is None or event.state is None:
            return event
        if event.provider == stripe_provider.PROVIDER:
            return self._refresh_stripe(event, entitlement)
        if event.provider == lemonsqueezy.PROVIDER and self.lemonsqueezy_api is not None:
            return self._refresh_lemonsqueezy(event, entitlement, self.lemonsqueezy_api)
        return event

    def _refresh_stripe(self, event: MembershipEvent, entitlement: str) -> MembershipEvent:
        api = self.stripe_api
        is_subscription = entitlement.startswith(f"{stripe_provider.PROVIDER}:sub_")
        if (
            api is not None
            and is_subscription
            and event.event_type.startswith(_REFRESHABLE_PREFIXES)
            and event.state is not EntitlementState.PENDING
        ):
            subscription = api.subscription(entitlement.partition(":")[2])
            event = dataclasses.replace(
                event,
                state=stripe_provider.subscription_state(subscription),
                products=stripe_provider.subscription_products(subscription) or event.products,
                occurred_at=max(event.occurred_at, self._clock()),
            )
        session = event.refs.get("checkout_session")
        if self.needs_products and not event.products and session and not is_subscription:
            # A one-time Checkout payload names no product; the products file needs one.
            if api is None:
                raise UnresolvedError(
                    f"cannot tell which product checkout {session} sold: the products file "
                    "needs it and Checkout events do not carry it; set STRIPE_API_KEY"
                )
            event = dataclasses.replace(event, products=api.checkout_products(session))
        return event

    def _refresh_lemonsqueezy(
        self, event: MembershipEvent, entitlement: str, api: LemonSqueezyAPI
    ) -> MembershipEvent:
        kind, _, ident = entitlement.partition(":")[2].partition("_")
        if kind == "sub":
            attributes = api.subscription(ident)
            state: EntitlementState | None = lemonsqueezy.subscription_state(attributes)
        elif kind == "order":
            attributes = api.order(ident)
            state = lemonsqueezy.order_state(attributes)
        else:
            return event
        if state is None:
            return event
        products = tuple(
            f"{name}:{attributes[key]}"
            for name, key in (("product", "product_id"), ("variant", "variant_id"))
            if attributes.get(key) is not None
        )
        return dataclasses.replace(
            event,
            state=state,
            products=products or event.products,
            occurred_at=max(event.occurred_at, self._clock()),
        )

    def _confirm_gumroad(self, event: MembershipEvent, api: GumroadAPI) -> MembershipEvent:
        """Apply only what Gumroad's API confirms (pings are not signed)."""
        sale_id = event.refs.get("sale")
        subscription = event.refs.get("subscription")
        if not sale_id and not subscription:
            raise GumroadMismatchError("sale", "the ping names no sale to confirm it by")
        return confirm(
            event,
            api.sale(sale_id) if sale_id else {},
            api.subscriber(subscription) if subscription else None,
            seller_id=self.gumroad_seller_id,
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


def subjects(event: MembershipEvent) -> tuple[str, ...]:
    """The provider ids whose learned email would tell who the event is about."""
    return tuple(dict.fromkeys(ref for ref in (event.customer, *event.refs.values()) if ref))
