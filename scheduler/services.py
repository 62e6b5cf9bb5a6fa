"""What the HTTP handlers and actors share: one value built by the daemon at start."""

from __future__ import annotations

from dataclasses import dataclass

from accounts.db import Database
from accounts.repository import AccountRepository
from snapshot.redis import RedisStore

from .config import Config
from .health import Health
from .metrics import Metrics


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
