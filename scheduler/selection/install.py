"""Wiring: build the selection subsystem into the daemon's services."""

from __future__ import annotations

from typing import Any

from accounts.crypto import Cipher
from snapshot.settings import DEFAULT_SETTINGS
from snapshot.source import SqlSource
from snapshot.view import ScheduleView
from snapshot.watcher import ScheduleWatcher

from .credentials import Credentials
from .refresher import ViewRefresher
from .reports import Reporter
from .select import Selector
from .watcher import ReleaseWatcher


def install(services: Any) -> list[Any]:
    """Build the selection subsystem into ``services``; returns its actors (start in order).

    Uses the daemon's schedule view (``services.schedule``) and settings snapshot
    when they are wired; otherwise builds a view of its own (PostgreSQL fallback).
    """
    actors: list[Any] = []
    schedule = getattr(services, "schedule", None)
    view = schedule.view if schedule is not None else None
    if view is None:
        view = ScheduleView(services.redis, SqlSource(services.db))
        actors.append(ScheduleWatcher(view))
    snapshot = getattr(services, "settings", None)
    settings = snapshot.get if snapshot is not None else (lambda: DEFAULT_SETTINGS)
    services.selector = Selector(services.redis, view, settings, metrics=services.metrics)
    services.reporter = Reporter(services.selector, settings, services.accounts)
    services.credentials = Credentials(Cipher(services.config.crypto))
    actors.append(ReleaseWatcher(services.selector))
    # Keeps the runtime view of active buckets fresh, so selects do not read it themselves.
    actors.append(ViewRefresher(services.selector))
    return actors
