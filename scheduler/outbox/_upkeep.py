"""Upkeep actors: purge consumed events past retention; refresh the backlog gauges."""

from __future__ import annotations

import random

import trio

from accounts.errors import StoreUnavailable

from ..core.config import OutboxConfig
from ..core.logs import get_logger
from ._metrics import OutboxMetrics
from ._store import OutboxStore

log = get_logger("outbox")


class Purger:
    """Deletes consumed events older than ``retention_s``, in small batches.

    A pass deletes at most ``purge_max_batches`` batches of ``purge_batch`` rows,
    each its own short statement (row locks for one batch, never the table), and
    stops early once a batch comes back short. Only ``consumed`` rows are ever
    selected, and the status is checked again at delete time. ``started()`` at
    once; the first pass comes 0.5-1.5 intervals later (then every such spread).
    """

    name = "outbox-purger"
    essential = False

    def __init__(
        self, store: OutboxStore, config: OutboxConfig, metrics: OutboxMetrics | None = None
    ) -> None:
        self._store = store
        self._cfg = config
        self._metrics = metrics

    async def purge_once(self) -> int:
        """One bounded pass; returns the rows deleted."""
        total = 0
        for _ in range(self._cfg.purge_max_batches):
            deleted = await self._store.purge_batch(self._cfg.retention_s, self._cfg.purge_batch)
            total += deleted
            if deleted < self._cfg.purge_batch:
                break
        if self._metrics is not None:
            self._metrics.purged.inc(total)
        return total

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            # Sleep first: start-up is busy enough (the store prober's first pings
            # must not queue behind upkeep for a pool connection), and the spread
            # keeps instances started together from purging in step.
            await trio.sleep(self._cfg.purge_interval_s * (0.5 + random.random()))
            try:
                with trio.fail_after(max(self._cfg.purge_interval_s, 30.0)):
                    deleted = await self.purge_once()
                if deleted:
                    log.info("outbox purged", n=deleted)
            except (StoreUnavailable, trio.TooSlowError) as exc:
                log.warning("outbox purge failed", error=type(exc).__name__)


class BacklogMonitor:
    """Refreshes the backlog-by-status and oldest-pending gauges every ``stats_interval_s``."""

    name = "outbox-monitor"
    essential = False

    def __init__(self, store: OutboxStore, config: OutboxConfig, metrics: OutboxMetrics) -> None:
        self._store = store
        self._cfg = config
        self._metrics = metrics

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            # First refresh after one interval, for the same reason as the purger's.
            await trio.sleep(self._cfg.stats_interval_s)
            try:
                with trio.fail_after(self._cfg.stats_interval_s + 5.0):
                    self._metrics.set_backlog(await self._store.stats())
            except (StoreUnavailable, trio.TooSlowError) as exc:
                log.warning("outbox stats failed", error=type(exc).__name__)
