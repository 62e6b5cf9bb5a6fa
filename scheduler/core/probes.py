"""Actors that measure: store health probes and event-loop lag."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import trio

from accounts.db import Database
from accounts.errors import StoreUnavailable
from snapshot.redis import RedisStore

from .health import Health, State
from .logs import get_logger
from .metrics import Metrics

log = get_logger("probes")


class StoreProber:
    """Pings PostgreSQL and Redis every ``interval_s``; each is an essential health component.

    ``started()`` once both probes ran once (whatever the result), so readiness
    reflects reality from the start.
    """

    name = "store-prober"
    essential = True

    def __init__(
        self,
        db: Database,
        redis: RedisStore,
        health: Health,
        metrics: Metrics,
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._probes = {"postgres": db.ping, "redis": redis.ping}
        self._health = health
        self._metrics = metrics
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        for store in self._probes:
            health.register(store, essential=True)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await self.probe_all()
        task_status.started()
        while True:
            await trio.sleep(self._interval_s)
            await self.probe_all()

    async def probe_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for store in self._probes:
                nursery.start_soon(self._probe, store)

    async def _probe(self, store: str) -> None:
        previous = self._health.get(store)
        try:
            seconds = await self._probes[store](timeout_s=self._timeout_s)
        except Exception as exc:
            # Whatever the failure (StoreUnavailable, or a driver error the store
            # module did not translate), the store is not usable. The prober is
            # essential: letting it crash would turn an outage into an exit.
            reason = exc.message if isinstance(exc, StoreUnavailable) else type(exc).__name__
            self._metrics.probe_failures.labels(store).inc()
            self._metrics.store_up.labels(store).set(0)
            if previous is None or previous.state is not State.DOWN:
                log.warning("store down", store=store, reason=reason)
            self._health.set(store, State.DOWN, reason)
            return
        self._metrics.probe_latency.labels(store).observe(seconds)
        self._metrics.store_up.labels(store).set(1)
        if previous is not None and previous.state is State.DOWN:
            log.info("store back", store=store)
        self._health.set(store, State.UP, f"{seconds * 1000:.2f} ms")


class LoopLag:
    """Measures how late a short sleep wakes up: the event loop's lag."""

    name = "loop-lag"
    essential = False
    # Short enough to notice a blocked loop within a watchdog period, long
    # enough that measuring costs nothing.
    PERIOD_S = 0.25

    def __init__(self, health: Health, metrics: Metrics) -> None:
        self._health = health
        self._metrics = metrics

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            before = trio.current_time()
            await trio.sleep(self.PERIOD_S)
            lag = max(0.0, trio.current_time() - before - self.PERIOD_S)
            self._health.loop_lag_s = lag
            self._metrics.loop_lag.set(lag)


class InstanceRegistry:
    """Keeps this instance's row in ``instances`` fresh: who shares the database."""

    name = "instance-registry"
    essential = False
    PERIOD_S = 10.0

    def __init__(self, db: Database, instance_id: str, version: str, pid: int) -> None:
        self._db = db
        self._id = instance_id
        self._version = version
        self._pid = pid

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        # Upsert every period (not insert once, update after) so the row comes back
        # after an outage or a truncation; an outage must not crash this actor, or
        # a long one would use up its restarts and leave it down for good.
        task_status.started()
        try:
            while True:
                # The prober reports an outage; a heartbeat gap is harmless.
                with contextlib.suppress(StoreUnavailable):
                    await self._db.execute(
                        """INSERT INTO instances (id, hostname, pid, version)
                           VALUES ($1, $2, $3, $4)
                           ON CONFLICT (id) DO UPDATE SET last_seen = now()""",
                        self._id,
                        socket.gethostname(),
                        self._pid,
                        self._version,
                    )
                await trio.sleep(self.PERIOD_S)
        finally:
            with trio.move_on_after(2, shield=True):
                with contextlib.suppress(StoreUnavailable):
                    await self._db.execute("DELETE FROM instances WHERE id = $1", self._id)
