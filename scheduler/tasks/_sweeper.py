"""The sweeper: deadlines, SUBMITTING rows left behind, orphaned leases, status counts.

Every instance runs one; they need no coordination because every change goes
through the compare-and-set write path (two sweepers timing out one task: one
wins, one loses, one settlement).

* Past-deadline live tasks end TIMED_OUT with the hold released. A pass keeps
  taking batches until none is left: no per-pass cap, so a backlog cannot grow
  behind one. (The upstream task is asked to stop where the platform can.)
* SUBMITTING rows older than ``submitting_stale_s`` (the instance died
  mid-submit, or the submit was ambiguous) are looked up upstream by our own id
  where the platform allows it (Kling's ``external_task_id``): found -> PENDING
  with its upstream id, polled from then on; not found -> FAILED
  ``submit_not_received``. Elsewhere -> FAILED ``submit_outcome_unknown``. Every
  outcome is counted (``stationmaster_task_submit_outcome_unknown_total``) so an
  operator sees how often it happens.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from accounts.errors import NotFound, StationmasterError

from ..core.logs import get_logger
from ..upstream import Upstream, UpstreamState
from ._apply import Accounts, TaskWriter, Written
from ._model import Held
from ._states import Event, Proposal, TaskStatus
from .store import TaskStore

log = get_logger("tasks.sweeper")

# Rows per query; a pass loops until a batch comes back short.
BATCH = 500
# Writes in flight during a pass (each a short transaction).
CONCURRENCY = 16


class Sweeper:
    name = "task-sweeper"
    essential = False

    def __init__(
        self,
        store: TaskStore,
        writer: TaskWriter,
        upstream: Upstream,
        accounts: Accounts,
        *,
        interval_s: float,
        submitting_stale_s: float,
        first_poll_s: float = 0.0,
        metrics: Any = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.upstream = upstream
        self.accounts = accounts
        self.interval_s = interval_s
        self.submitting_stale_s = submitting_stale_s
        self.first_poll_s = first_poll_s
        self.metrics = metrics

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.sweep()
            except StationmasterError as exc:
                log.warning("sweep failed", error=type(exc).__name__)
            await trio.sleep(self.interval_s)

    async def sweep(self) -> dict[str, int]:
        """One full pass; returns what it did (for tests and the log)."""
        done = {"timed_out": 0, "found": 0, "unknown": 0, "orphans": 0}
        done["orphans"] = await self.store.free_orphans()
        while True:
            batch = await self.store.overdue(BATCH)
            await self._each(batch, self._time_out, done)
            if len(batch) < BATCH:
                break
        while True:
            stale = await self.store.stale_submitting(self.submitting_stale_s, BATCH)
            await self._each([h for h, _ in stale], self._resolve, done)
            if len(stale) < BATCH:
                break
        if self.metrics is not None:
            counts = await self.store.count_by_status()
            for status in TaskStatus:
                self.metrics.tasks_by_status.labels(status.value).set(counts.get(status.value, 0))
        if any(done.values()):
            log.info("swept", **done)
        return done

    async def _each(self, batch: list[Held], fn: Any, done: dict[str, int]) -> None:
        limit = trio.Semaphore(CONCURRENCY)

        async def one(held: Held) -> None:
            async with limit:
                try:
                    outcome = await fn(held)
                except StationmasterError as exc:
                    log.warning("sweep of a task failed", task_id=held.id, error=type(exc).__name__)
                    return
                if outcome:
                    done[outcome] += 1

        async with trio.open_nursery() as nursery:
            for held in batch:
                nursery.start_soon(one, held)

    async def _time_out(self, held: Held) -> str | None:
        proposal = Proposal(Event.DEADLINE, TaskStatus.TIMED_OUT, failure_reason="deadline")
        result = await self.writer.write(held, proposal)
        if result.written is Written.LOST:
            result = await self.writer.write_latest(held.id, proposal)
        if result.written is not Written.FINISHED:
            return None
        await self._stop_upstream(held)
        return "timed_out"

    async def _stop_upstream(self, held: Held) -> None:
        """Best effort: an upstream task nobody waits for should not keep running."""
        adapter = self.upstream.adapter(held.platform)
        if not adapter.supports_cancel or not held.account_id or not held.snapshot.upstream_id:
            return
        with contextlib.suppress(StationmasterError), trio.move_on_after(10):
            account, creds = await self.accounts.get(held.account_id)
            await adapter.cancel(account, creds, held.snapshot.upstream_id)

    async def _resolve(self, held: Held) -> str | None:
        adapter = self.upstream.adapter(held.platform)
        if adapter.supports_lookup and held.account_id is not None:
            try:
                account, creds = await self.accounts.get(held.account_id)
                found = await adapter.lookup(account, creds, held.id)
            except NotFound:
                found = None  # the account is gone: nobody can look it up
            if found is not None:
                status = (
                    TaskStatus.RUNNING
                    if found.state is UpstreamState.RUNNING
                    else TaskStatus.PENDING
                )
                won = await self.store.submitted(
                    held.id,
                    held.version,
                    held.billing.hold,
                    status=status,
                    upstream_id=found.upstream_id,
                    account_id=held.account_id,
                    billing=held.billing,
                    poll_in_s=self.first_poll_s,
                )
                return self._counted("found") if won is not None else None
            reason = "submit_not_received"
        else:
            reason = "submit_outcome_unknown"
        proposal = Proposal(Event.SUBMIT_FAILED, TaskStatus.FAILED, failure_reason=reason)
        result = await self.writer.write(held, proposal)
        if result.written is not Written.FINISHED:
            return None
        log.warning("submitting task failed by the sweeper", task_id=held.id, reason=reason)
        return self._counted("unknown", reason)

    def _counted(self, outcome: str, label: str | None = None) -> str:
        if self.metrics is not None:
            self.metrics.task_submit_unknown.labels(label or outcome).inc()
        return outcome
