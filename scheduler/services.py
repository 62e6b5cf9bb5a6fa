"""What the HTTP handlers and actors share: one value built by the daemon at start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accounts.db import Database
from accounts.repository import AccountRepository
from snapshot.redis import RedisStore
from snapshot.settings import SettingsSnapshot

from .core.config import Config
from .core.health import Health
from .core.metrics import Metrics
from .outbox import OutboxStore
from .selection.schedule import Schedule


@dataclass(slots=True)
class Services:
    """Stores, health and metrics, plus the subsystems later layers attach.

    Subsystems are attributes, not a dict, so a handler that needs one names it
    and the type checker follows.
    """

    config: Config
    health: Health
    metrics: Metrics
    db: Database
    redis: RedisStore
    instance_id: str
    # Account rows (admin API, selection's mark_error, the snapshot builder).
    accounts: AccountRepository | None = None
    # The settings snapshot: `settings.get()` once per request (hot path).
    settings: SettingsSnapshot | None = None
    # Schedule snapshot: `schedule.view.get(bucket)` on the hot path (scheduler/schedule.py).
    schedule: Schedule | None = None
    # Selection (scheduler/select.py, reports.py, http/select_api.py): built by
    # select_api.install(); Any-typed to keep services.py free of import cycles.
    selector: Any = None
    reporter: Any = None
    credentials: Any = None
    # The usage probe service (scheduler/usage): the admin probe endpoint calls it.
    usage: Any = None
    # The outbox table (scheduler/outbox): the pull feed and the operators' view.
    outbox: OutboxStore | None = None
