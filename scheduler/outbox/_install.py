"""Wiring the outbox into a daemon: the store, the metrics and the actors to start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from accounts.db import Database

from ..core.config import OutboxConfig
from ..core.logs import get_logger, register_secret
from ._dispatcher import Dispatcher
from ._metrics import OutboxMetrics
from ._store import OutboxStore
from ._upkeep import BacklogMonitor, Purger

log = get_logger("outbox")


@dataclass(slots=True)
class Outbox:
    store: OutboxStore
    metrics: OutboxMetrics
    # In start order; none is essential (events wait in the table while one is down).
    actors: list[Any] = field(default_factory=list)


def build_outbox(
    db: Database, config: OutboxConfig, *, owner: str, registry: CollectorRegistry
) -> Outbox:
    """The outbox subsystem for one daemon: ``owner`` names this instance in claim leases."""
    if config.webhook_secret:
        register_secret(config.webhook_secret, config.webhook_secret.removeprefix("whsec_"))
    store = OutboxStore(db)
    metrics = OutboxMetrics(registry)
    actors: list[Any] = [BacklogMonitor(store, config, metrics), Purger(store, config, metrics)]
    if config.dispatch and config.webhook_secret:
        actors.append(Dispatcher(store, config, owner=owner, listen=db.listen, metrics=metrics))
    elif config.dispatch:
        log.warning("outbox: no webhook_secret configured; this instance delivers no webhooks")
    return Outbox(store, metrics, actors)
