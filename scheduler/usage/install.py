"""Wiring: build the usage prober into the daemon's services (after selection)."""

from __future__ import annotations

from typing import Any

from .prober import Prober
from .service import UsageProbe
from .store import ProbeStore


def install(services: Any) -> list[Any]:
    """Build the probe service into ``services.usage``; returns the prober actor.

    Needs selection installed first: it writes through the selector's runtime
    store, puts written states into its view, and decrypts with its credentials
    cache. Without an accounts repository (pure-Redis setups) there is no prober.
    """
    if services.accounts is None or services.selector is None:
        return []
    selector = services.selector
    probe = UsageProbe(
        runtime=selector.runtime,
        store=ProbeStore(services.redis),
        accounts=services.accounts,
        credentials=services.credentials.get,
        settings=selector.settings,
        metrics=services.metrics,
        on_state=selector.on_release,
    )
    services.usage = probe
    return [Prober(probe, services.accounts)]
