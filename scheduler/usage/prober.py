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

Several instances. The claim script (:mod:`scheduler.usage.store`) takes the
account's lock (one probe per account at a time, fleet-wide), re-checks the
shared not-before (backoff, minimum interval: a look another instance just
took is not taken again) and both probe rates (GCRA cells in Redis, so the
global and per-platform rates hold for the whole fleet). Over a rate, the
prober waits as long as the script says and tries the same account again, so
due accounts go out in order at the rate, however many came due at once.

``started()`` once the account list is loaded. Never crashes on Redis or
PostgreSQL outages: a failed round is logged and retried; the supervisor
restarts it for anything else (non-essential: selection works without it).
"""

from __future__ import annotations

import heapq
import random
import time
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
                    await self._schedule_loop(nursery)
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

    async def _schedule_loop(self, nursery: trio.Nursery) -> None:
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
                await self._round(due, nursery)
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

    async def _round(self, due: list[str], nursery: trio.Nursery) -> None:
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
                    await self._start(account, state, nursery)

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

    async def _start(
        self, account: Account, state: RuntimeState | None, nursery: trio.Nursery
    ) -> None:
        """Claim ``account`` (waiting out the rates) and start its probe in ``nursery``."""
        adapter = adapter_for(account)
        if adapter is None:
            return
        slot = object()
        await self._limiter.acquire_on_behalf_of(slot)
        handed = False
        try:
            claim = await self._claim(account)
            if isinstance(claim, Claimed):
                nursery.start_soon(self._probe, account, adapter, claim, state, slot)
                handed = True
            elif isinstance(claim, Locked):
                self._count("locked")
                self.push(account.id, self.clock() + claim.wait_s + self.rng.random())
            elif isinstance(claim, NotDue):
                self._count("not_due")
                self.push(account.id, claim.not_before + self.rng.random())
        finally:
            if not handed:
                self._limiter.release_on_behalf_of(slot)

    async def _claim(self, account: Account) -> Claimed | Locked | NotDue:
        platform = str(account.platform)
        while True:
            claim = await self.probe.store.claim(account.id, platform, self.settings().usage)
            if not isinstance(claim, OverRate):
                return claim
            self._count("over_rate")
            await trio.sleep(claim.wait_s)

    async def _probe(
        self,
        account: Account,
        adapter: Any,
        claim: Claimed,
        state: RuntimeState | None,
        slot: object,
    ) -> None:
        cfg = self.settings().usage
        try:
            await self.probe.run_claimed(account, adapter, claim, state)
            self.probes += 1
        except _FAILURES as exc:
            log.warning("usage probe not recorded", account_id=account.id, error=str(exc))
        finally:
            self._limiter.release_on_behalf_of(slot)
        # Look again once the minimum interval has passed: the rule then sees the new
        # reading and the shared record, and pushes the account to its real due time.
        if account.id in self.accounts:
            self.push(account.id, self.clock() + cfg.min_interval_s + self.rng.random())

    def _count(self, reason: str) -> None:
        metrics = self.probe.metrics
        if metrics is not None:
            metrics.usage_claims.labels(reason).inc()
