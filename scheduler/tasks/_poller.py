"""The claimer and its pollers: one actor per instance, no leader.

Shape (river's claim, trio's nurseries)::

    Poller.run
    ├── _renew_loop     renews this poller's lease (one row: every held task at once)
    ├── _claim_loop     reaps expired leases, claims due tasks in batches (SKIP LOCKED)
    ├── _dispatch_loop  pops due tasks off a heap and starts a poll in the nursery,
    │                   within the global limit, the account's limit and the
    │                   account's QPS (the platform's documented query rate)
    └── Settler.run     writes the polls' terminal changes in batches (_settler.py)

Writes hold one of the write slots (half the pool): a live change alone, a
batch of terminal ones together; an unchanged poll never waits for a slot.

A held task stays in memory between polls: an unchanged poll writes nothing
(not even its next poll time), the lease is renewed for all held tasks by one
``UPDATE`` of ``task_leases``, and tasks are handed back with their planned next
poll time on shutdown. If the lease is lost (this process stalled past its
expiry and it was reaped) every held task is dropped at once and a fresh lease
is taken (an expired lease not yet reaped is simply renewed: nobody took its
tasks); a poll already running may still write, which is safe: every
write is a compare-and-set on the version.

Rate-limited and failed polls never change a task: they only push its next poll
back (``Retry-After`` honoured, exponential by consecutive errors).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.lowlevel

from accounts.errors import NotFound, StationmasterError

from ..core.config import TasksConfig
from ..core.logs import get_logger
from ..upstream import AuthFailed, RateLimited, Rejected, Transient, Upstream, UpstreamStatus
from ._apply import Accounts, Result, TaskWriter, Written, proposal_from
from ._model import Held
from ._settler import Settler
from ._states import PollSchedule, Proposal, plan
from .store import TaskStore

log = get_logger("tasks.poller")

# A task whose account is at its limit (or out of QPS tokens) is looked at again
# this soon: short, since the slot frees when any of that account's polls ends.
_BUSY_RETRY_S = 0.02


@dataclass(slots=True)
class _Track:
    """Per held task, beyond the record: polling bookkeeping kept in memory only."""

    held: Held
    errors: int = 0
    unknown: int = 0
    due: float = 0.0  # epoch s
    polling: bool = False


@dataclass(slots=True)
class _Bucket:
    """Token bucket of one account's query rate."""

    rate: float
    tokens: float
    stamp: float
    in_flight: int = 0

    def take(self, now: float) -> float:
        """0 if a token was taken, else seconds until one is available."""
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(slots=True)
class _Heap:
    entries: list[tuple[float, int, str]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def push(self, due: float, task_id: str) -> None:
        heapq.heappush(self.entries, (due, next(self.seq), task_id))


class Poller:
    """Claims due tasks and polls them until they end; see the module docstring."""

    name = "task-poller"
    essential = False

    def __init__(
        self,
        store: TaskStore,
        writer: TaskWriter,
        upstream: Upstream,
        accounts: Accounts,
        instance_id: str,
        config: TasksConfig,
        *,
        metrics: Any = None,
        rand: Callable[[], float] = random.random,
        db_slots: int = 8,
    ) -> None:
        self.store = store
        self.writer = writer
        self.upstream = upstream
        self.accounts = accounts
        self.instance_id = instance_id
        self.cfg = config
        self.metrics = metrics
        self.rand = rand
        self.schedule = PollSchedule(
            base_interval_s=config.poll_base_interval_s, max_interval_s=config.poll_max_interval_s
        )
        self.token = ""
        self._tracks: dict[str, _Track] = {}
        self._heap = _Heap()
        self._wake = trio.Event()
        self._limit = trio.Semaphore(config.poll_concurrency)
        # Writes wait here rather than in the pool's acquire (which times out):
        # hundreds of polls seeing a change together must queue, not fail, and must
        # leave half the pool to the rest of the daemon (settings, claims, the API).
        self._db = trio.Semaphore(db_slots)
        self._buckets: dict[str, _Bucket] = {}
        self._children: dict[tuple[str, str], Any] = {}
        self._settler = Settler(writer, self._db)

    @property
    def held(self) -> int:
        return len(self._tracks)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._new_lease()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._renew_loop)
                nursery.start_soon(self._claim_loop)
                nursery.start_soon(self._dispatch_loop, nursery)
                nursery.start_soon(self._settler.run)
                task_status.started()
        finally:
            with trio.move_on_after(5, shield=True):
                await self._give_back()

    async def _new_lease(self) -> None:
        self.token = f"{self.instance_id}/{secrets.token_hex(4)}"
        await self.store.register_lease(self.token, self.instance_id, self.cfg.lease_s)

    async def _give_back(self) -> None:
        plan = [(t.held.id, t.due) for t in self._tracks.values()]
        self._tracks.clear()
        with contextlib.suppress(StationmasterError):
            await self.store.give_back(self.token, plan)
            log.info("leases given back", tasks=len(plan))

    # --- lease -----------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        delay = self.cfg.renew_every_s
        while True:
            await trio.sleep(delay)
            delay = self.cfg.renew_every_s
            try:
                if await self.store.renew_lease(self.token, self.cfg.lease_s):
                    await self._forget_ended()
                    continue
            except StationmasterError:
                # The lease may still hold (and an expired one is revived while its
                # row exists): try again soon rather than a whole period later.
                delay = min(1.0, self.cfg.renew_every_s)
                continue
            # Reaped: other instances may poll these tasks now.
            log.warning("task lease lost; dropping held tasks", tasks=len(self._tracks))
            self._tracks.clear()
            self._heap = _Heap()
            self._gauge()
            await self._new_lease()

    async def _forget_ended(self) -> None:
        """Drop held tasks that are no longer ours (ended elsewhere: cancelled, timed out).

        A terminal row has no lease owner, so a count below what we hold means some
        ended by another writer while their upstream answer had not changed yet.
        """
        if not self._tracks or await self.store.count_leased(self.token) >= len(self._tracks):
            return
        ours = set(await self.store.leased_ids(self.token))
        for task_id in [t for t in self._tracks if t not in ours]:
            self._drop(task_id)

    # --- claim -------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            full = False
            try:
                await self.store.reap(self.token)
                room = self.cfg.max_held - len(self._tracks)
                if room > 0:
                    full = await self._claim(min(room, self.cfg.claim_batch))
            except StationmasterError as exc:
                log.warning("claim failed", error=type(exc).__name__)
            if not full:
                await trio.sleep(self.cfg.claim_interval_s)
            else:
                await trio.lowlevel.checkpoint()

    async def _claim(self, limit: int) -> bool:
        batch = await self.store.claim(self.token, limit)
        if self.metrics is not None:
            self.metrics.task_claim_batch.observe(len(batch))
        now = time.time()
        for held in batch:
            due = max(now, held.next_poll_at or now)
            self._tracks[held.id] = _Track(held, due=due)
            self._heap.push(due, held.id)
        if batch:
            self._gauge()
            self._wake.set()
        return len(batch) == limit

    # --- dispatch ------------------------------------------------------------------------

    async def _dispatch_loop(self, nursery: trio.Nursery) -> None:
        while True:
            entries = self._heap.entries
            if not entries:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            due, _, task_id = entries[0]
            now = time.time()
            if due > now:
                self._wake = trio.Event()
                with trio.move_on_after(due - now):
                    await self._wake.wait()
                continue
            heapq.heappop(entries)
            track = self._tracks.get(task_id)
            if track is None or track.polling or track.due != due:
                continue  # dropped, or a stale heap entry
            wait = self._admit(track, now)
            if wait > 0:
                track.due = now + wait
                self._heap.push(track.due, task_id)
                continue
            await self._limit.acquire()
            track.polling = True
            nursery.start_soon(self._poll, track, now - due)

    def _admit(self, track: _Track, now: float) -> float:
        """0 if the account may take one more poll now, else how long to wait."""
        held = track.held
        key = held.account_id or ""
        bucket = self._buckets.get(key)
        if bucket is None:
            qps = self.upstream.adapter(held.platform).qps_per_account
            rate = float(qps) if qps else 1e9
            bucket = self._buckets[key] = _Bucket(rate, rate, now)
        if bucket.in_flight >= self.cfg.per_account_concurrency:
            return _BUSY_RETRY_S
        wait = bucket.take(now)
        if wait > 0:
            return wait
        bucket.in_flight += 1
        return 0.0

    # --- poll ------------------------------------------------------------------------------

    async def _poll(self, track: _Track, lag: float) -> None:
        held = track.held
        retry_after: float | None = None
        interval: float | None = None
        result = "error"
        try:
            if self.metrics is not None:
                self.metrics.task_poll_lag.observe(lag)
            with trio.fail_after(self.cfg.poll_timeout_s):
                result, interval, retry_after = await self._poll_once(track)
        except trio.TooSlowError:
            result = "timeout"
        except StationmasterError as exc:
            # The store or the account lookup failed: try again later, change nothing.
            log.warning(
                "poll failed", task_id=held.id, error=type(exc).__name__, reason=exc.message
            )
            result = "error"
        except Exception:
            # An adapter bug must cost this poll, not the poller (and every task it holds).
            log.exception("poll crashed", task_id=held.id)
            result = "error"
        finally:
            self._limit.release()
            bucket = self._buckets.get(held.account_id or "")
            if bucket is not None:
                bucket.in_flight -= 1
            track.polling = False
        self._count(result)
        self._reschedule(track, result, interval, retry_after)

    def _reschedule(
        self, track: _Track, result: str, interval: float | None, retry_after: float | None
    ) -> None:
        held = track.held
        if held.id not in self._tracks:
            return
        if held.snapshot.status.terminal:
            self._drop(held.id)  # ended (a write whose poll gave up waiting for it)
            return
        if time.time() >= held.deadline:
            # The sweeper ends it (TIMED_OUT, hold released); polling it on is waste.
            self._drop(held.id)
            return
        if result in ("unchanged", "changed"):
            track.errors = 0
        elif result != "lost":
            track.errors += 1
        delay = self.schedule.delay(
            time.time() - held.created_at,
            platform_interval_s=interval if self.cfg.honour_platform_interval else None,
            retry_after_s=retry_after,
            errors=track.errors,
            rand=self.rand,
        )
        track.due = time.time() + delay
        self._heap.push(track.due, held.id)
        if self._heap.entries[0][2] == held.id:
            self._wake.set()

    async def _poll_once(self, track: _Track) -> tuple[str, float | None, float | None]:
        """One fetch and its write; (result, platform interval, retry-after)."""
        held = track.held
        adapter = self.upstream.adapter(held.platform)
        interval = adapter.poll_interval_s
        if held.account_id is None or held.snapshot.upstream_id is None:
            self._drop(held.id)  # not pollable (cannot happen past SUBMITTING)
            return "error", None, None
        try:
            account, creds = await self.accounts.get(held.account_id)
        except NotFound:
            return "no_account", interval, None
        try:
            status = await adapter.fetch(account, creds, held.snapshot.upstream_id)
        except RateLimited as exc:
            return "rate_limited", interval, exc.retry_after_s
        except Transient:
            return "transient", interval, None
        except AuthFailed:
            return "auth_failed", interval, None
        except Rejected:
            return "rejected", interval, None
        return await self._observe(track, status), status.poll_after_s or interval, None

    async def _observe(self, track: _Track, status: UpstreamStatus) -> str:
        track.unknown = track.unknown + 1 if status.state.value == "unknown" else 0
        proposal = proposal_from(status, track.unknown)
        change = None if proposal is None else plan(track.held.snapshot, proposal)
        if proposal is None or change is None:
            # Decided before queueing for a write slot: during a burst of
            # completions an unchanged poll must not wait behind the writes.
            return "unchanged"
        if change.settles:
            return await self._end(track, proposal, status)
        async with self._db:
            written = await self.writer.write(track.held, proposal, status=status)
            return await self._written(track, proposal, status, written)

    async def _end(self, track: _Track, proposal: Proposal, status: UpstreamStatus) -> str:
        """A terminal write, settled in a batch with others (see :class:`Settler`)."""
        result = await self._settler.end(track.held, proposal, status)
        if result is None:
            return "timeout"
        async with self._db:
            return await self._written(track, proposal, status, result)

    async def _written(
        self, track: _Track, proposal: Proposal, status: UpstreamStatus, written: Result
    ) -> str:
        if written.written is Written.LOST:
            # Someone else wrote first (a refresh, a cancel, the sweeper, another
            # poller after a lease loss): take the row as it is and try once more.
            fresh = await self.store.current(track.held.id)
            if fresh is None or fresh.snapshot.status.terminal or fresh.lease_owner != self.token:
                self._drop(track.held.id)
                return "lost"
            track.held = fresh
            written = await self.writer.write(fresh, proposal, status=status)
        if written.written is Written.FINISHED or written.held.snapshot.status.terminal:
            self._drop(track.held.id)
            return "finished"
        return written.written.value

    def _drop(self, task_id: str) -> None:
        if self._tracks.pop(task_id, None) is not None:
            self._gauge()

    # --- metrics -----------------------------------------------------------------------------

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.task_held.set(len(self._tracks))

    def _count(self, result: str) -> None:
        if self.metrics is None:
            return
        child = self._children.get(("polls", result))
        if child is None:
            child = self._children[("polls", result)] = self.metrics.task_polls.labels(result)
        child.inc()
