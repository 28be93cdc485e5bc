"""Sample webhooks of every event the README's tables list, as each provider sends them.

``SAMPLES[provider][event]`` builds one payload (a dict, before encoding and signing):
``SAMPLES["stripe"]["checkout.session.completed"](email, purchase, product, live, now)``.
An event name with a ``:variant`` (``customer.subscription.updated:past_due``) is the
same provider event in another state. The purchase ids (subscription, order, customer)
come from ``purchase`` (see :func:`purchase_key`), so samples for one email and product
act on one purchase; event ids are new on every build.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.samples import gumroad as gumroad
from bridge.samples import lemonsqueezy as lemonsqueezy
from bridge.samples import stripe as stripe

# A payload builder: (email, purchase id, product id, live, now) -> the provider's payload.
Builder = Callable[[str, str, str, bool, float], dict[str, Any]]


@dataclass(frozen=True)
class Sample:
    """One sample event: what it does (the README's table) and how it is built."""

    provider: str
    event: str
    effect: str
    build: Builder

    @property
    def provider_event(self) -> str:
        """The event (or ping resource) name the provider itself sends."""
        return self.event.partition(":")[0]

    def __call__(
        self, email: str, purchase: str, product: str, live: bool, now: float
    ) -> dict[str, Any]:
        """The payload (see ``Builder``)."""
        return self.build(email, purchase, product, live, now)


_MODULES = {module.PROVIDER: module for module in (stripe, lemonsqueezy, gumroad)}

# Every provider's samples, in the README's order.
SAMPLES: dict[str, dict[str, Sample]] = {
    provider: {
        event: Sample(provider, event, effect, builder)
        for event, (effect, builder) in module.SAMPLES.items()
    }
    for provider, module in _MODULES.items()
}
# The provider names, as the webhook routes spell them.
PROVIDERS = tuple(SAMPLES)


def default_product(provider: str) -> str:
    """The product id a sample names when none is given."""
    return str(_MODULES[provider].DEFAULT_PRODUCT)


def purchase_key(provider: str, email: str, product: str) -> str:
    """The purchase id of this email's purchase of this product: the same on every call."""
    text = f"{provider}\n{email.strip().lower()}\n{product}"
    digest = hashlib.sha256(text.encode()).hexdigest()
    return str(_MODULES[provider].purchase_id(digest))


def check_purchase(provider: str, purchase: str) -> str:
    """``purchase`` as the provider's ids need it; ValueError when it cannot be one."""
    return str(_MODULES[provider].check_purchase(purchase))
