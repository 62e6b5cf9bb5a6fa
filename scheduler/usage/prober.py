"""The usage prober actor: reads accounts' usage when the schedule says, within the rates.

Schedule. The prober keeps every probe-able account (OAuth accounts of a
platform with a usage endpoint, status active; re-read from PostgreSQL every
``usage.accounts_refresh_s``) in a heap keyed by the moment it wants a look.
The heap is only a cache: when an account comes up, its newest readings (the
shared runtime state) and its shared probe record are read and
:func:`~scheduler.usage.rules.next_probe` decides; not due yet, it goes back in
at the jittered due time; due, it is claimed and probed. Because the real
schedule is a function of state kept in Redis, it survives restarts of any
instance: a starting instance takes its first look at each account at a random
moment within ``usage.start_spread_s`` (no thundering herd), then follows the
rule.

Rates. Due accounts go to their platform's claimer, which lets them out in
order no faster than the platform's rate and the global one (local GCRA
pacers, so an instance alone never asks Redis faster than the rates, and a
platform waiting for its rate holds up no other), into one of
``usage.concurrency`` probe slots.

Several instances. The claim script (:mod:`scheduler.usage.store`) takes the
account's lock (one probe per account at a time, fleet-wide), re-checks the
shared not-before (backoff, minimum interval: a look another instance just
took is not taken again) and both probe rates (GCRA cells in Redis, so the
global and per-platform rates hold for the whole fleet: when other instances
used the rate up, the claim waits as long as the script says and tries again).

``started()`` once the account list is loaded (if that fails, the start fails and the
supervisor retries it). After that it never crashes on Redis or
PostgreSQL outages: a failed round is logged and retried; the supervisor
restarts it for anything else (non-essential: selection works without it).
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from accounts.errors import StoreUnavailable
from accounts.model import Account, Platform, QuotaWindow, Status
from accounts.repository import MAX_PAGE
from accounts.rules import quota_pause
from snapshot.redis import UNAVAILABLE
from snapshot.settings import Settings

from ..core.logs import get_logger
from ..selection.store import RuntimeState
from . import rules
from .adapters import ADAPTERS, adapter_for
from .service import UsageProbe, open_client
from .store import Claimed, Locked, NotDue, OverRate

log = get_logger("usage.prober")

# Due accounts handled per round: their states and records are read in one batch.
BATCH = 200
# The loop looks at the settings (enabled, rates) at least this often while idle.
MAX_SLEEP_S = 5.0
# After a store outage, the accounts of the failed round are looked at again this late.
OUTAGE_RETRY_S = 5.0
_FAILURES: tuple[type[BaseException], ...] = (StoreUnavailable, *UNAVAILABLE)


async def load_probeable(repo: Any) -> list[Account]:
    """Every active account that has a usage endpoint (all pages)."""
    found: list[Account] = []
    for platform in ADAPTERS:
        cursor = None
        while True:
            page = await repo.list_accounts(
                platform=Platform(platform), status=Status.ACTIVE, cursor=cursor, limit=MAX_PAGE
            )
            found += [a for a in page.items if adapter_for(a) is not None]
            cursor = page.next_cursor
            if cursor is None:
                break
    return found


class Pacer:
    """A local GCRA cell: ``take`` returns once a probe may start at this rate (FIFO waiters).

    The same rule as the claim script's cells (a start is allowed while the
    theoretical arrival time is at most ``burst - 1`` intervals ahead), on trio's
    clock, so an instance alone never asks Redis faster than the rates.
    """

    def __init__(self) -> None:
        self._tat = float("-inf")
        self._lock = trio.Lock()

    async def take(self, interval_s: float, burst: int) -> None:
        async with self._lock:
            now = trio.current_time()
            tat = max(self._tat, now)
            wait = tat - now - (burst - 1) * interval_s
            if wait > 0:
                await trio.sleep(wait)
                tat = max(self._tat, trio.current_time())
            self._tat = tat + interval_s


class Prober:
    """Actor: the probe schedule of this instance (see the module docstring)."""

    name = "usage-prober"
    essential = False

    def __init__(
        self,
        probe: UsageProbe,
        repo: Any,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.probe = probe
        self.repo = repo
        self.settings: Callable[[], Settings] = probe.settings
        self.rng = rng or random.Random()
        self.clock = clock
        self.accounts: dict[str, Account] = {}
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._paused: dict[str, set[str]] = {p: set() for p in ADAPTERS}
        self._wake = trio.Event()
        self._sleep_until = float("inf")
        self._limiter = trio.CapacityLimiter(1)
        self._queues: dict[str, deque[tuple[Account, RuntimeState | None]]] = {}
        self._queue_events: dict[str, trio.Event] = {}
        self._queued: set[str] = set()
        self._pacers: dict[str, Pacer] = {}
        self._global_pacer = Pacer()
        # What happened (tests and the benchmark read these).
        self.evaluations = 0
        self.probes = 0

    # --- the schedule (plain, synchronous: the benchmark times these) -------------------

    def push(self, account_id: str, at: float) -> None:
        """(Re)schedule a look at ``account_id`` at ``at``; an earlier entry is superseded."""
        self._due[account_id] = at
        heapq.heappush(self._heap, (at, account_id))
        if at < self._sleep_until:
            self._wake.set()

    def pop_due(self, now: float, limit: int = BATCH) -> list[str]:
        """Accounts whose look is due at ``now`` (at most ``limit``), removed from the heap."""
        heap, due = self._heap, self._due
        out: list[str] = []
        while heap and heap[0][0] <= now and len(out) < limit:
            at, account_id = heapq.heappop(heap)
            if due.get(account_id) != at:
                continue  # superseded by a later push, or the account is gone
            del due[account_id]
            out.append(account_id)
        return out

    def next_at(self) -> float | None:
        """When the earliest live entry is due (stale entries on top are dropped)."""
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def set_accounts(self, found: list[Account], spread_s: float) -> None:
        """Replace the account list; new or changed accounts get a look within ``spread_s``."""
        now = self.clock()
        fresh = {a.id: a for a in found}
        for account_id, account in fresh.items():
            old = self.accounts.get(account_id)
            if old is None or old.version != account.version:
                self.push(account_id, now + self.rng.random() * spread_s)
        for account_id in self.accounts.keys() - fresh.keys():
            self._due.pop(account_id, None)
            for ids in self._paused.values():
                ids.discard(account_id)
        self.accounts = fresh

    def paused_count(self, platform: str) -> int:
        return len(self._paused.get(platform, ()))

    # --- the actor ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_client(self.settings().usage) as client:
            self.probe.client = client
            try:
                await self._reload(first=True)
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    nursery.start_soon(self._reload_loop)
                    for platform in ADAPTERS:
                        nursery.start_soon(self._claimer, platform, nursery)
                    await self._schedule_loop()
            finally:
                self.probe.client = None

    async def _reload(self, *, first: bool = False) -> None:
        cfg = self.settings().usage
        try:
            found = await load_probeable(self.repo)
        except _FAILURES as exc:
            if first:
                raise
            log.warning("usage prober: account list not refreshed", error=str(exc))
            return
        self.set_accounts(found, cfg.start_spread_s)

    async def _reload_loop(self) -> None:
        while True:
            await trio.sleep(self.settings().usage.accounts_refresh_s)
            await self._reload()

    async def _schedule_loop(self) -> None:
        while True:
            cfg = self.settings().usage
            self._limiter.total_tokens = cfg.concurrency
            now = self.clock()
            due = self.pop_due(now) if cfg.enabled else []
            if not due:
                nxt = self.next_at()
                wait = MAX_SLEEP_S if nxt is None or not cfg.enabled else nxt - now
                await self._sleep(min(max(wait, 0.0), MAX_SLEEP_S))
                continue
            try:
                await self._round(due)
            except _FAILURES as exc:
                log.warning("usage prober round failed", error=str(exc), accounts=len(due))
                retry = self.clock() + OUTAGE_RETRY_S
                for account_id in due:
                    if account_id in self.accounts and account_id not in self._due:
                        self.push(account_id, retry + self.rng.random())
                await trio.sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        self._wake = trio.Event()
        self._sleep_until = self.clock() + seconds
        with trio.move_on_after(seconds):
            await self._wake.wait()
        self._sleep_until = float("inf")

    async def _round(self, due: list[str]) -> None:
        """Look at due accounts: probe those the rule still finds due, reschedule the rest."""
        by_platform: dict[str, list[Account]] = {}
        for account_id in due:
            account = self.accounts.get(account_id)
            if account is not None:
                by_platform.setdefault(str(account.platform), []).append(account)
        for platform, accounts in by_platform.items():
            ids = [a.id for a in accounts]
            states = await self.probe.runtime.read_many(platform, ids)
            records = await self.probe.store.records(ids)
            for account in accounts:
                state = states.get(account.id)
                if self._decide(account, state, records.get(account.id, rules.NO_RECORD)):
                    self._queue(account, state)

    def _decide(
        self, account: Account, state: RuntimeState | None, record: rules.ProbeRecord
    ) -> bool:
        """Whether to probe ``account`` now; if not, it is pushed back at its due time."""
        settings = self.settings()
        now = self.clock()
        windows = state.windows if state is not None else ()
        self._note_paused(account, windows, settings, now)
        self.evaluations += 1
        due = rules.next_probe(account, windows, record, settings.quota, settings.usage, now)
        if due.at <= now:
            return True
        self.push(account.id, rules.jittered(due, self.rng.random()))
        return False

    def _note_paused(
        self, account: Account, windows: tuple[QuotaWindow, ...], settings: Settings, now: float
    ) -> None:
        platform = str(account.platform)
        ids = self._paused.setdefault(platform, set())
        if windows and quota_pause(account, windows, settings.quota, now).paused:
            ids.add(account.id)
        else:
            ids.discard(account.id)
        metrics = self.probe.metrics
        if metrics is not None:
            metrics.usage_paused.labels(platform).set(len(ids))

    def _queue(self, account: Account, state: RuntimeState | None) -> None:
        """Hand a due account to its platform's claimer (FIFO, each account once)."""
        if account.id in self._queued:
            return
        self._queued.add(account.id)
        platform = str(account.platform)
        self._queues.setdefault(platform, deque()).append((account, state))
        self._queue_events.setdefault(platform, trio.Event()).set()

    async def _next(self, platform: str) -> tuple[Account, RuntimeState | None]:
        queue = self._queues.setdefault(platform, deque())
        while not queue:
            event = self._queue_events[platform] = trio.Event()
            await event.wait()
        account, state = queue.popleft()
        self._queued.discard(account.id)
        return account, state

    async def _claimer(self, platform: str, nursery: trio.Nursery) -> None:
        """One platform's due accounts, in order, at no more than the rates, into probe slots.

        Claims are paced here, locally, at the configured rates (the platform's, then
        the global one, which the platforms share in FIFO order), so this instance
        does not ask Redis faster than the rates allow, and a platform waiting for
        its rate holds up no other platform. Redis still decides (the claim script):
        with several instances it refuses what the others already used.
        """
        pacer = self._pacers.setdefault(platform, Pacer())
        while True:
            account, state = await self._next(platform)
            adapter = adapter_for(account)
            if adapter is None or account.id not in self.accounts:
                continue
            cfg = self.settings().usage
            if not cfg.enabled:
                # Switched off while queued: back into the schedule, looked at once on again.
                self.push(account.id, self.clock() + MAX_SLEEP_S)
                continue
            await pacer.take(1.0 / cfg.platform_rate(platform), cfg.burst)
            await self._global_pacer.take(1.0 / cfg.global_rate_per_s, cfg.burst)
            slot = object()
            await self._limiter.acquire_on_behalf_of(slot)
            nursery.start_soon(self._claim_and_probe, account, adapter, state, slot)

    async def _claim_and_probe(
        self, account: Account, adapter: Any, state: RuntimeState | None, slot: object
    ) -> None:
        cfg = self.settings().usage
        try:
            claim = await self._claim(account)
            if isinstance(claim, Locked):
                # The other probe ends (or its lock lapses) within wait_s; its outcome
                # then decides, so look again just after.
                self._count("locked")
                retry_at = self.clock() + claim.wait_s * (1 + self._jitter())
            elif isinstance(claim, NotDue):
                self._count("not_due")
                retry_at = claim.not_before + self._jitter()
            else:
                await self.probe.run_claimed(account, adapter, claim, state)
                self.probes += 1
                # Look again once the minimum interval has passed: the rule then sees the
                # new reading and the shared record and pushes the account to its due time.
                retry_at = self.clock() + cfg.min_interval_s * (1 + self._jitter())
        except _FAILURES as exc:
            log.warning("usage probe not done", account_id=account.id, error=str(exc))
            retry_at = self.clock() + OUTAGE_RETRY_S * (1 + self._jitter())
        finally:
            self._limiter.release_on_behalf_of(slot)
        if account.id in self.accounts and account.id not in self._due:
            self.push(account.id, retry_at)

    async def _claim(self, account: Account) -> Claimed | Locked | NotDue:
        """Claim; when another instance used the rate up, wait as the script says and retry."""
        platform = str(account.platform)
        while True:
            claim = await self.probe.store.claim(account.id, platform, self.settings().usage)
            if not isinstance(claim, OverRate):
                return claim
            self._count("over_rate")
            await trio.sleep(claim.wait_s)

    def _jitter(self) -> float:
        """A random share of ``usage.jitter`` (so instances do not retry in lock step)."""
        return self.rng.random() * self.settings().usage.jitter

    def _count(self, reason: str) -> None:
        metrics = self.probe.metrics
        if metrics is not None:
            metrics.usage_claims.labels(reason).inc()
