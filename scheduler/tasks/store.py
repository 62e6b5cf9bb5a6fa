"""TaskStore: the only caller of :mod:`scheduler.tasks._queries`.

Actors (submitter, pollers, sweeper) and the API talk to this class only. Its
rules:

* **Record first.** :meth:`create` inserts the task (SUBMITTING) and its credit
  hold in one transaction, after checking the owner's balance and in-flight
  count under a per-owner advisory lock (so two submits of one owner cannot
  both pass the check). A 402 or 429 rolls back and leaves nothing.
* **One write path.** :meth:`apply` writes a planned :class:`~._states.Change`
  with ``UPDATE … WHERE id = $1 AND version = $2``; a terminal change commits
  with its ledger entries and its outbox event in one transaction, and only
  when the compare-and-set won. ``None`` back means another writer got there
  first: nothing was written, nothing settled.
* Database errors are :class:`~accounts.errors.StoreUnavailable`, never an
  empty answer: "not found" is only said after a query answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from accounts.db import Connection, Database
from accounts.errors import StoreUnavailable

from ..outbox import enqueue, enqueue_many
from . import _queries as q
from ._model import Held, NewTask, TaskView, uuid7, view_of
from ._states import Billing, Change, Settlement, TaskStatus
from .errors import InsufficientCredit, TooManyInFlight

EVENT_TYPES = {
    TaskStatus.SUCCEEDED: "task.succeeded",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.CANCELLED: "task.cancelled",
    TaskStatus.TIMED_OUT: "task.timed_out",
}


@dataclass(frozen=True, slots=True)
class Created:
    task: TaskView
    created: bool  # False: the idempotency key named an existing task


@dataclass(frozen=True, slots=True)
class Finish:
    """One terminal change for :meth:`TaskStore.finish_many`."""

    task_id: str
    version: int
    change: Change
    settle: Settlement
    usage: Mapping[str, float] | None


@dataclass(frozen=True, slots=True)
class OwnerCredit:
    owner: str
    balance: int
    topups: int
    captured: int
    held: int


class TaskStore:
    """Tasks, leases and the ledger in PostgreSQL."""

    def __init__(self, db: Database, *, max_in_flight: int) -> None:
        self.db = db
        self.max_in_flight = max_in_flight

    # --- record first ---------------------------------------------------------------

    async def create(self, new: NewTask) -> Created:
        """Record the task and its hold in one transaction; or return the keyed one.

        Raises InsufficientCredit (402) or TooManyInFlight (429) having written
        nothing; StoreUnavailable (503) when PostgreSQL does not answer, including
        during the idempotency lookup.
        """
        hold = new.billing.hold
        row = await self.db.fetchrow(
            q.RECORD,
            uuid7(),
            new.owner,
            new.idempotency_key,
            new.origin_task_id,
            new.group,
            new.account_id,
            new.platform,
            new.kind,
            new.model,
            new.params,
            new.webhook_url,
            new.session_hash,
            new.billing.as_json(),
            hold,
            new.deadline_s,
            self.max_in_flight,
        )
        outcome = row["outcome"]
        if outcome == "limit":
            raise TooManyInFlight(new.owner, in_flight=row["in_flight"], limit=self.max_in_flight)
        if outcome == "credit":
            raise InsufficientCredit(new.owner, balance=row["balance"], needed=hold)
        task = await self.db.fetchrow(q.GET, row["task_id"])
        if task is None:  # committed a moment ago; only a concurrent purge could do this
            raise StoreUnavailable("postgres", "recorded task not readable")
        return Created(view_of(task), created=outcome == "created")

    async def set_account(self, task_id: str, account_id: str) -> None:
        """Note the account a SUBMITTING task is being sent to (the sweeper looks it up there)."""
        await self.db.execute(q.SET_ACCOUNT, task_id, account_id)

    async def task_owner(self, task_id: str) -> Any:
        """(owner, platform, account_id, status) of a task, or None."""
        return await self.db.fetchrow(q.TASK_OWNER, task_id)

    # --- the one write path ------------------------------------------------------------

    async def submitted(
        self,
        task_id: str,
        version: int,
        old_hold: int,
        *,
        status: TaskStatus,
        upstream_id: str,
        account_id: str,
        billing: Billing,
        poll_in_s: float,
    ) -> tuple[Held, TaskView] | None:
        """CAS SUBMITTING -> ``status`` with the upstream id; the hold adjusted if it changed.

        Returns the task as a poller holds it and as the API shows it, or None if
        the compare-and-set lost (the sweeper resolved the task meanwhile).
        """
        args = (
            q.SUBMITTED, task_id, version, status.value, upstream_id, account_id,
            billing.as_json(), poll_in_s,
        )  # fmt: skip
        delta = billing.hold - old_hold
        if not delta:
            # One statement, no explicit transaction: nothing else to write with it.
            row = await self.db.fetchrow(*args)
        else:
            async with self.db.transaction() as conn:
                row = await conn.fetchrow(*args)
                if row is not None:
                    note = "submit answer"
                    await conn.execute(
                        q.INSERT_ENTRY, row["owner"], "hold_adjust", -delta, task_id, note
                    )
        if row is None:
            return None
        return Held.from_row(row), view_of(row)

    async def apply(
        self,
        task_id: str,
        version: int,
        change: Change,
        *,
        billing: Billing | None = None,
        settle: Settlement | None = None,
        usage: Mapping[str, float] | None = None,
    ) -> int | None:
        """Write ``change`` if ``version`` is still current; returns the new version or None.

        A change entering a terminal state needs ``billing`` and ``settle``: the
        transition, the ledger release and capture, and the outbox event commit in
        one transaction, only if the compare-and-set won.
        """
        a = change.after
        args = (
            task_id, version, a.status.value, a.progress, list(a.result_urls),
            a.failure_reason, a.upstream_id,
        )  # fmt: skip
        if not change.settles:
            return await self.db.fetchval(q.CHANGE, *args)
        if billing is None or settle is None:
            raise ValueError("a terminal change needs its billing and settlement")
        released = max(0, settle.release - settle.capture)
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(q.FINISH, *args, dict(usage or {}), settle.capture, released)
            if row is None:
                return None
            await self._settle(conn, task_id, row, change, settle, released)
            return int(row["version"])

    async def _settle(
        self,
        conn: Connection,
        task_id: str,
        row: Any,
        change: Change,
        settle: Settlement,
        released: int,
    ) -> None:
        owner = row["owner"]
        status = change.after.status
        await conn.execute(
            q.SETTLE_ENTRIES,
            owner,
            task_id,
            settle.release,
            settle.capture,
            status is TaskStatus.SUCCEEDED,
        )
        event = _event(task_id, row, change, settle, released)
        await enqueue(
            conn,
            event_key=event["event_key"],
            type=event["type"],
            payload=event["payload"],
            destination=event["destination"],
        )

    async def finish_many(self, items: Sequence[Finish]) -> dict[str, int]:
        """:meth:`apply` of many terminal changes in one transaction of three statements.

        Each row is its own compare-and-set; the winners' ledger entries and outbox
        events are written with them, the losers' not at all. Returns the new
        version of each winner by task id. Why: a burst of completions settled one
        transaction each (about eight round trips through the asyncio bridge)
        could not keep up with 200 completions/s on the 2-core machine.
        """
        if not items:
            return {}
        rows = [_finish_row(f) for f in items]
        by_id = {f.task_id: f for f in items}
        async with self.db.transaction() as conn:
            won = await conn.fetch(q.FINISH_MANY, rows)
            entries: list[tuple[str, str, int, str]] = []
            events = []
            for row in won:
                task_id = str(row["id"])
                f = by_id[task_id]
                released = max(0, f.settle.release - f.settle.capture)
                status = f.change.after.status
                entries.append((row["owner"], "release", f.settle.release, task_id))
                if status is TaskStatus.SUCCEEDED:
                    entries.append((row["owner"], "capture", -f.settle.capture, task_id))
                events.append(_event(task_id, row, f.change, f.settle, released))
            if entries:
                # Owners' balance rows are locked in one order by every batch: no deadlock.
                entries.sort(key=lambda e: (e[0], e[3]))  # stable: release, then capture
                await conn.execute(q.SETTLE_ENTRIES_MANY, *map(list, zip(*entries, strict=True)))
            await enqueue_many(conn, events)
        return {str(row["id"]): int(row["version"]) for row in won}

    async def params_many(
        self, task_ids: Sequence[str]
    ) -> dict[str, tuple[dict[str, Any], Billing]]:
        rows = await self.db.fetch(q.PARAMS_MANY, list(task_ids))
        return {str(r["id"]): (r["params"], Billing.from_json(r["billing"])) for r in rows}

    async def params(self, task_id: str) -> tuple[dict[str, Any], Billing]:
        row = await self.db.fetchrow(q.PARAMS, task_id)
        return row["params"], Billing.from_json(row["billing"])

    async def current(self, task_id: str) -> Held | None:
        row = await self.db.fetchrow(q.CURRENT, task_id)
        return None if row is None else Held.from_row(row)

    # --- claiming and leases ---------------------------------------------------------------

    async def register_lease(self, token: str, instance_id: str, lease_s: float) -> None:
        await self.db.execute(q.LEASE_REGISTER, token, instance_id, lease_s)

    async def renew_lease(self, token: str, lease_s: float) -> bool:
        """Extend every task ``token`` holds; False if the lease was reaped (tasks lost)."""
        return await self.db.fetchval(q.LEASE_RENEW, token, lease_s) is not None

    async def claim(self, token: str, limit: int) -> list[Held]:
        """Lease up to ``limit`` due tasks to ``token`` in one statement (SKIP LOCKED)."""
        rows = await self.db.fetch(q.CLAIM, token, limit)
        return [Held.from_row(r) for r in rows]

    async def count_leased(self, token: str) -> int:
        return int(await self.db.fetchval(q.COUNT_LEASED, token))

    async def leased_ids(self, token: str) -> list[str]:
        return [str(r["id"]) for r in await self.db.fetch(q.LEASED_IDS, token)]

    async def reap(self, own_token: str = "") -> int:
        """Free the tasks of every expired lease but ``own_token``; how many were freed."""
        return _count(await self.db.execute(q.REAP, own_token))

    async def free_orphans(self) -> int:
        return _count(await self.db.execute(q.ORPHANS))

    async def give_back(self, token: str, next_polls: Sequence[tuple[str, float]]) -> None:
        """Hand held tasks back (keeping their planned next poll) and drop the lease."""
        ids = [t for t, _ in next_polls]
        times = [datetime.fromtimestamp(at, UTC) for _, at in next_polls]
        async with self.db.transaction() as conn:
            if ids:
                await conn.execute(q.GIVE_BACK, token, ids, times)
            await conn.execute(q.GIVE_BACK_ALL, token)
            await conn.execute(q.LEASE_DROP, token)

    # --- the sweeper ----------------------------------------------------------------------

    async def overdue(self, limit: int) -> list[Held]:
        return [Held.from_row(r) for r in await self.db.fetch(q.OVERDUE, limit)]

    async def stale_submitting(self, older_than_s: float, limit: int) -> list[tuple[Held, str]]:
        rows = await self.db.fetch(q.STALE_SUBMITTING, older_than_s, limit)
        return [(Held.from_row(r), r["owner"]) for r in rows]

    # --- reads -------------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskView | None:
        row = await self.db.fetchrow(q.GET, task_id)
        return None if row is None else view_of(row)

    async def list_tasks(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        platform: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[TaskView]:
        rows = await self.db.fetch(q.LIST, owner, status, platform, before, limit)
        return [view_of(r) for r in rows]

    async def count_by_status(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in await self.db.fetch(q.COUNT_BY_STATUS)}

    async def ledger_of(self, task_id: str) -> list[tuple[str, int]]:
        return [(r["kind"], r["amount"]) for r in await self.db.fetch(q.LEDGER_OF_TASK, task_id)]

    # --- credits ---------------------------------------------------------------------------

    async def topup(self, owner: str, amount: int, key: str, note: str | None = None) -> bool:
        """Add credit once per ``key``; False if that key was used (same owner and amount).

        A reused key naming another owner or amount is a ValueError: a retried
        top-up must be the same top-up.
        """
        async with self.db.transaction() as conn:
            inserted = await conn.fetchval(q.TOPUP, owner, amount, key, note)
            if inserted is not None:
                return True
            row = await conn.fetchrow(q.TOPUP_BY_KEY, key)
        if row is None or row["owner"] != owner or row["amount"] != amount:
            raise ValueError("key: already used for a different top-up")
        return False

    async def credit(self, owner: str) -> OwnerCredit:
        row = await self.db.fetchrow(q.OWNER_CREDIT, owner)
        return OwnerCredit(owner, row["balance"], row["topups"], row["captured"], row["held"])

    async def balances(self, *, after: str | None, limit: int) -> list[tuple[str, int]]:
        return [(r["owner"], r["balance"]) for r in await self.db.fetch(q.BALANCES, after, limit)]


def _finish_row(f: Finish) -> dict[str, Any]:
    a = f.change.after
    return {
        "id": f.task_id,
        "version": f.version,
        "status": a.status.value,
        "progress": a.progress,
        "result_urls": list(a.result_urls),
        "failure_reason": a.failure_reason,
        "upstream_id": a.upstream_id,
        "usage": dict(f.usage or {}),
        "charged": f.settle.capture,
        "released": max(0, f.settle.release - f.settle.capture),
    }


def _event(
    task_id: str, row: Any, change: Change, settle: Settlement, released: int
) -> dict[str, Any]:
    """The outbox event of a won terminal transition (``row``: what FINISH returned)."""
    status = change.after.status
    payload = {
        "id": task_id,
        "owner": row["owner"],
        "status": status.value,
        "result_urls": list(change.after.result_urls),
        "failure_reason": change.after.failure_reason,
        "cost_held": row["cost_held"],
        "cost_charged": settle.capture,
        "cost_released": released,
        "finished_at": row["finished_at"].isoformat(),
    }
    return {
        "event_key": f"task:{task_id}:{status.value}",
        "type": EVENT_TYPES[status],
        "payload": payload,
        "destination": row["webhook_url"],
    }


def _count(status: str) -> int:
    # asyncpg's command tag: "UPDATE 12"
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
