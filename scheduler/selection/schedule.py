"""The schedule snapshot inside the daemon: wiring, metrics and health adapter.

:class:`Schedule` bundles what the daemon builds (``services.schedule``):

- ``view`` (:class:`snapshot.view.ScheduleView`): selection calls
  ``view.get(Bucket(group, platform))`` (sync, the in-memory BucketSnapshot:
  ``version``, ``accounts`` in priority order, ``by_id``, ``loaded_at``,
  ``source``) and ``await view.ensure(bucket)`` the first time;
- ``watcher`` and ``builder``: the two actors keeping it fresh.

:class:`HealthObserver` is the adapter the snapshot package reports through
(it cannot import the scheduler): reloads, fallbacks and rebuilds become
Prometheus samples, the view's state becomes the ``schedule`` health component
(DEGRADED while serving from PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snapshot.builder import SnapshotBuilder
from snapshot.keys import Bucket
from snapshot.observer import ViewState
from snapshot.source import AccountSource, RepositorySource, SqlSource
from snapshot.view import ScheduleView
from snapshot.watcher import ScheduleWatcher

from ..core.health import Health, State
from ..core.logs import get_logger
from ..core.metrics import Metrics

log = get_logger("schedule")

COMPONENT = "schedule"


class HealthObserver:
    """Feeds the daemon's metrics and the ``schedule`` health component."""

    def __init__(self, metrics: Metrics, health: Health) -> None:
        self._metrics = metrics
        self._health = health
        health.register(COMPONENT, essential=False)
        health.set(COMPONENT, State.UP)

    def reloaded(self, bucket: Bucket, source: str, seconds: float) -> None:
        self._metrics.schedule_reloads.labels(source).inc()

    def fallback(self, outcome: str) -> None:
        self._metrics.schedule_fallbacks.labels(outcome).inc()

    def state(self, state: ViewState, detail: str) -> None:
        log.info("schedule view state", state=state.value, detail=detail)
        self._health.set(COMPONENT, State.UP if state is ViewState.UP else State.DEGRADED, detail)

    def rebuilt(self, bucket: Bucket, outcome: str, seconds: float, lag_s: float | None) -> None:
        self._metrics.schedule_rebuilds.labels(outcome).inc()
        if outcome == "activated":
            self._metrics.schedule_rebuild_seconds.observe(seconds)
        if lag_s is not None:
            self._metrics.schedule_lag_seconds.observe(lag_s)


@dataclass(slots=True)
class Schedule:
    """The schedule snapshot subsystem of one daemon."""

    view: ScheduleView
    watcher: ScheduleWatcher
    builder: SnapshotBuilder

    def actors(self) -> list[Any]:
        """Builder first (start-up rebuild), then the watcher."""
        return [self.builder, self.watcher]


def build_schedule(services: Any) -> Schedule:
    """The view, watcher and builder for ``services``, tuned by the settings snapshot if any."""
    observer = HealthObserver(services.metrics, services.health)
    source: AccountSource = (
        RepositorySource(services.accounts)
        if services.accounts is not None
        else SqlSource(services.db)
    )
    settings = services.settings

    def tuned(section: str, key: str, default: float, scale: float = 1.0) -> Any:
        if settings is None:
            return default
        return lambda: getattr(getattr(settings.get(), section), key) * scale

    view = ScheduleView(
        services.redis,
        source,
        poll_s=tuned("snapshot", "view_poll_s", 1.0),
        fallback_qps=tuned("fallback", "db_qps", 20.0),
        fallback_timeout_s=tuned("fallback", "db_timeout_ms", 0.5, 0.001),
        observer=observer,
    )
    builder = SnapshotBuilder(
        services.db,
        services.redis,
        source,
        grace_s=tuned("snapshot", "grace_s", 60.0),
        full_rebuild_s=tuned("snapshot", "full_rebuild_s", 300.0),
        seen=view.held_stamp,
        observer=observer,
    )
    return Schedule(view, ScheduleWatcher(view), builder)
