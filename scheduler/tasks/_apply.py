"""The one path every change takes: plan (pure), price (on terminal), compare-and-set.

Pollers, ``GET /v1/tasks/{id}?refresh``, cancellation, the sweeper and the submit
flow all end here, so a terminal state reached by any of them settles the same
way, once: :meth:`TaskWriter.write` plans the change against the snapshot the
caller holds, and for a terminal one reads the task's params once, asks the
adapter for the final units, and hands the transition, the ledger entries and the
outbox event to :meth:`TaskStore.apply` as one transaction.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from accounts.errors import NotFound
from accounts.model import Account

from ..upstream import Upstream, UpstreamRequest, UpstreamState, UpstreamStatus
from ._model import Held
from ._states import Event, Proposal, Snapshot, TaskStatus, plan, settlement
from .store import Finish, TaskStore

# Account records (and their decrypted credentials) are re-read this often: a
# disabled or re-keyed account is noticed within it.
ACCOUNT_CACHE_S = 30.0
# An upstream that does not know the id this many polls in a row lost the task.
UNKNOWN_STREAK = 3

_STATUS = {
    UpstreamState.PENDING: TaskStatus.PENDING,
    UpstreamState.RUNNING: TaskStatus.RUNNING,
    UpstreamState.SUCCEEDED: TaskStatus.SUCCEEDED,
    UpstreamState.FAILED: TaskStatus.FAILED,
    UpstreamState.CANCELLED: TaskStatus.CANCELLED,
}


class Written(enum.Enum):
    UNCHANGED = "unchanged"  # nothing to write; nothing written
    CHANGED = "changed"  # a live change committed
    FINISHED = "finished"  # a terminal change committed with its settlement
    LOST = "lost"  # another writer changed the task first; nothing written


@dataclass(frozen=True, slots=True)
class Result:
    written: Written
    held: Held  # the task as it now stands (version and snapshot updated when written)


def proposal_from(status: UpstreamStatus, unknown_streak: int = 0) -> Proposal | None:
    """What an upstream status proposes; None for an UNKNOWN not (yet) believed."""
    if status.state is UpstreamState.UNKNOWN:
        if unknown_streak < UNKNOWN_STREAK:
            return None
        return Proposal(Event.OBSERVED, TaskStatus.FAILED, failure_reason="upstream_task_unknown")
    ours = _STATUS[status.state]
    reason = status.failure_reason
    if ours is TaskStatus.FAILED and not reason:
        reason = "upstream_failed"
    return Proposal(
        Event.OBSERVED,
        ours,
        progress=status.progress,
        result_urls=status.result_urls,
        failure_reason=reason,
    )


class Accounts:
    """Account records and decrypted credentials by id, cached for a short while.

    One read per account at a time: when the entry expires, the first caller
    re-reads it and every other caller waits for that read (hundreds of polls of
    one account start together after a claim; they must not all query).
    """

    def __init__(self, repository: Any, credentials: Callable[[Account], Any]) -> None:
        self._repo = repository
        self._credentials = credentials
        self._cache: dict[str, tuple[float, Account, Any]] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def get(self, account_id: str) -> tuple[Account, Any]:
        """The account and its credentials; NotFound when it was deleted."""
        found = self._fresh(account_id)
        if found is not None:
            return found
        lock = self._locks.setdefault(account_id, trio.Lock())
        async with lock:
            found = self._fresh(account_id)
            if found is not None:
                return found
            account = await self._repo.get(account_id)
            creds = self._credentials(account)
            self._cache[account_id] = (time.monotonic() + ACCOUNT_CACHE_S, account, creds)
            return account, creds

    def _fresh(self, account_id: str) -> tuple[Account, Any] | None:
        found = self._cache.get(account_id)
        if found is not None and found[0] > time.monotonic():
            return found[1], found[2]
        return None


class TaskWriter:
    """Applies proposals to tasks through the store's compare-and-set."""

    def __init__(self, store: TaskStore, upstream: Upstream, metrics: Any = None) -> None:
        self.store = store
        self.upstream = upstream
        self.metrics = metrics

    async def write(
        self, held: Held, proposal: Proposal, *, status: UpstreamStatus | None = None
    ) -> Result:
        """Plan ``proposal`` against ``held`` and write it if anything changes."""
        change = plan(held.snapshot, proposal)
        if change is None:
            return Result(Written.UNCHANGED, held)
        if not change.settles:
            version = await self.store.apply(held.id, held.version, change)
            if version is None:
                return Result(Written.LOST, held)
            held.version, held.snapshot = version, change.after
            return Result(Written.CHANGED, held)
        params, billing = await self.store.params(held.id)
        units = None
        if change.after.status is TaskStatus.SUCCEEDED and status is not None:
            units = self._final_units(held, params, status)
        settle = settlement(change.after.status, billing, units)
        usage = dict(status.usage) if status is not None else None
        version = await self.store.apply(
            held.id, held.version, change, billing=billing, settle=settle, usage=usage
        )
        if version is None:
            return Result(Written.LOST, held)
        held.version, held.snapshot = version, change.after
        if self.metrics is not None:
            self.metrics.task_settlements.labels(change.after.status.value).inc()
        return Result(Written.FINISHED, held)

    async def finish_many(
        self, items: Sequence[tuple[Held, Proposal, UpstreamStatus | None]]
    ) -> list[Result]:
        """:meth:`write` for many terminal proposals: params read in one query, the
        transitions and their settlements written in one transaction
        (:meth:`TaskStore.finish_many`); one result per item, in order.

        An item whose plan is not terminal any more is written on its own.
        """
        planned = [
            (held, plan(held.snapshot, proposal), status) for held, proposal, status in items
        ]
        ending = [(h, c, st) for h, c, st in planned if c is not None and c.settles]
        params = await self.store.params_many([h.id for h, _, _ in ending]) if ending else {}
        finishes = []
        for held, change, status in ending:
            found = params.get(held.id)
            if found is None:
                continue  # the row is gone: nothing to settle, reported as lost
            units = None
            if change.after.status is TaskStatus.SUCCEEDED and status is not None:
                units = self._final_units(held, found[0], status)
            settle = settlement(change.after.status, found[1], units)
            usage = dict(status.usage) if status is not None else None
            finishes.append(Finish(held.id, held.version, change, settle, usage))
        won = await self.store.finish_many(finishes)
        results = []
        for (held, planned_change, status), (_, proposal, _) in zip(planned, items, strict=True):
            if planned_change is None:
                results.append(Result(Written.UNCHANGED, held))
            elif not planned_change.settles:
                results.append(await self.write(held, proposal, status=status))
            elif held.id in won:
                held.version, held.snapshot = won[held.id], planned_change.after
                if self.metrics is not None:
                    self.metrics.task_settlements.labels(planned_change.after.status.value).inc()
                results.append(Result(Written.FINISHED, held))
            else:
                results.append(Result(Written.LOST, held))
        return results

    def _final_units(self, held: Held, params: dict[str, Any], status: UpstreamStatus) -> int:
        adapter = self.upstream.adapter(held.platform)
        req = UpstreamRequest(
            task_id=held.id, platform=held.platform, model=held.model, kind=held.kind, params=params
        )
        return adapter.final_cost(req, status)

    async def write_latest(
        self, task_id: str, proposal: Proposal, *, status: UpstreamStatus | None = None
    ) -> Result:
        """Apply ``proposal`` to the task as it stands now, re-reading after a lost race.

        NotFound if the task does not exist. Bounded: each lost race means another
        writer made progress, and a terminal state ends the loop (UNCHANGED).
        """
        for _ in range(8):
            held = await self.store.current(task_id)
            if held is None:
                raise NotFound(f"no task {task_id}")
            result = await self.write(held, proposal, status=status)
            if result.written is not Written.LOST:
                return result
        return result


def is_terminal(snapshot: Snapshot) -> bool:
    return snapshot.status.terminal
