"""ScheduleView: this process's in-memory copy of each bucket's active snapshot.

Selection calls :meth:`ScheduleView.get` (synchronous, no I/O) on the hot path
and :meth:`ScheduleView.ensure` the first time it meets a bucket. Copies are
immutable :class:`~snapshot.schedule.BucketSnapshot` values replaced whole, so a
reader never sees a mix of two versions, and a Redis copy is never replaced by
an older version (no rollback).

Freshness comes from :class:`~snapshot.watcher.ScheduleWatcher`: activation
messages (pub/sub) and a periodic check of the active versions.

Versions are :class:`~snapshot.keys.Stamp` values (epoch, number): a copy is
replaced only by a newer one, and a new epoch (Redis lost the bucket's counter
and the builder made it again) is newer than every version of the old one, so a
flush or a failover is followed without a restart.

Fallback: when Redis does not answer for a bucket this instance holds, the
bucket is loaded from PostgreSQL (``source == "postgres"``, no version), at most
``fallback_qps`` loads per second across all buckets, each bounded by
``fallback_timeout_s``. The view then reports DEGRADED through its observer
until every copy comes from Redis again.

Unknown buckets leave no trace. A bucket met for the first time that Redis has
no snapshot of (or Redis is down) is looked up in PostgreSQL once: accounts
there (a bucket the builder has not published yet) become a PostgreSQL copy; none
is :class:`~accounts.errors.UnknownBucket` (404), remembered for
:data:`NEGATIVE_TTL_S` so a name costs at most one look-up per that period.
These look-ups have their own rate (:data:`LOOKUP_QPS`, beyond it the answer is
404 without one) and never spend the fallback budget a real outage needs; an
unknown bucket is never installed, listed, polled, nor seen by readiness.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import trio

from accounts.errors import StoreUnavailable, UnknownBucket
from accounts.model import Account

from .keys import NO_VERSION, Bucket, Stamp
from .observer import NullObserver, ScheduleObserver, ViewState
from .redis import RedisStore
from .schedule import BucketSnapshot, active_versions, read_active
from .source import AccountSource
from .ttlcache import TtlCache
from .tunable import Tunable, current

# A bucket name found nowhere is answered 404 from memory this long (one PostgreSQL
# look-up per name per period), at most this many names remembered.
NEGATIVE_TTL_S = 5.0
NEGATIVE_MAX = 10_000
# First-time look-ups of buckets Redis has no snapshot of, per second (burst 1 s):
# beyond it the answer is 404 without asking PostgreSQL.
LOOKUP_QPS = 20.0


class RateLimiter:
    """Token bucket: ``rate()`` tokens per second, burst of one second's worth (at least 1)."""

    def __init__(self, rate: Tunable) -> None:
        self._rate = rate
        self._tokens = max(1.0, current(rate))
        self._at = trio.current_time()

    def available(self) -> float:
        """Tokens there are now (refilled), without taking one."""
        rate = current(self._rate)
        now = trio.current_time()
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._at) * rate)
        self._at = now
        return self._tokens

    def try_acquire(self) -> bool:
        if self.available() >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ScheduleView:
    """Per-process copies of bucket snapshots; see the module docstring."""

    def __init__(
        self,
        store: RedisStore,
        source: AccountSource,
        *,
        poll_s: Tunable = 1.0,
        fallback_qps: Tunable = 10.0,
        fallback_timeout_s: Tunable = 2.0,
        redis_timeout_s: float = 1.0,
        observer: ScheduleObserver | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.poll_s = poll_s
        self.fallback_timeout_s = fallback_timeout_s
        # Bounds each Redis read so a wedged server turns into the fallback quickly.
        self.redis_timeout_s = redis_timeout_s
        self.observer: ScheduleObserver = observer or NullObserver()
        self._limiter = RateLimiter(fallback_qps)
        self._lookup_limiter = RateLimiter(LOOKUP_QPS)
        self._unknown: TtlCache[Bucket, bool] = TtlCache(NEGATIVE_TTL_S, NEGATIVE_MAX)
        self._snaps: dict[Bucket, BucketSnapshot] = {}
        # Every account record the held snapshots hold, by id: shared between buckets.
        self._accounts: dict[str, Account] = {}
        self._locks: dict[Bucket, trio.Lock] = {}
        self._redis_ok = True
        self._state = ViewState.UP
        self._detail = ""
        self._pending: dict[Bucket, Stamp] = {}
        self._wake = trio.Event()
        self.fallback_loads = 0
        # PostgreSQL look-ups of buckets met for the first time without a Redis snapshot.
        self.lookups = 0

    # --- hot path ---------------------------------------------------------------

    def get(self, bucket: Bucket) -> BucketSnapshot | None:
        """The bucket's current copy, or None if never loaded. No I/O."""
        return self._snaps.get(bucket)

    async def ensure(self, bucket: Bucket) -> BucketSnapshot:
        """The bucket's copy, loading it on first use (Redis, else PostgreSQL).

        Raises UnknownBucket (404) for a bucket neither store knows (nothing is
        kept of it), StoreUnavailable when neither store answers.
        """
        snap = self._snaps.get(bucket)
        if snap is not None:
            return snap
        if self._unknown.lookup(bucket)[0]:
            raise _unknown(bucket)
        return await self.refresh(bucket)

    def held_stamp(self, bucket: Bucket) -> Stamp:
        """The version of this view's Redis copy of ``bucket`` (NO_VERSION if none)."""
        snap = self._snaps.get(bucket)
        return snap.stamp if snap is not None and snap.source == "redis" else NO_VERSION

    def fallback_budget(self) -> float:
        """PostgreSQL fallback loads this view may do right now (tokens of its limiter)."""
        return self._limiter.available()

    # --- state ------------------------------------------------------------------

    def buckets(self) -> list[Bucket]:
        return sorted(self._snaps)

    @property
    def state(self) -> tuple[ViewState, str]:
        return self._state, self._detail

    def _update_state(self) -> None:
        fallback = sorted(str(b) for b, s in self._snaps.items() if s.source != "redis")
        if not self._redis_ok:
            state, detail = ViewState.DEGRADED, "redis unreachable: serving from postgres"
        elif fallback:
            state, detail = ViewState.DEGRADED, "no redis snapshot for " + ", ".join(fallback[:5])
        else:
            state, detail = ViewState.UP, ""
        if (state, detail) != (self._state, self._detail):
            self._state, self._detail = state, detail
            self.observer.state(state, detail)

    def _install(self, snap: BucketSnapshot, started: float) -> BucketSnapshot:
        snap = self._shared(snap)
        self._snaps[snap.bucket] = snap
        self._accounts = {a.id: a for held in self._snaps.values() for a in held.accounts}
        self.observer.reloaded(snap.bucket, snap.source, time.perf_counter() - started)
        return snap

    def _shared(self, snap: BucketSnapshot) -> BucketSnapshot:
        """``snap`` holding the very Account objects other buckets hold, where equal.

        An account in several groups is decoded once per bucket; without this each
        bucket kept its own copy (10,000 accounts, half of them in two groups: ~3.5 MB
        of duplicates, bench/rss.py). Equal records only: a changed account is the
        new record, and the others follow when their buckets reload.
        """
        held = self._accounts
        accounts = []
        shared = False
        for account in snap.accounts:
            other = held.get(account.id)
            if other is not None and other is not account and other == account:
                account, shared = other, True
            accounts.append(account)
        if not shared:
            return snap
        return BucketSnapshot(
            snap.bucket,
            snap.stamp,
            accounts,
            loaded_at=snap.loaded_at,
            built_at=snap.built_at,
            source=snap.source,
        )

    # --- loading ----------------------------------------------------------------

    async def refresh(self, bucket: Bucket, *, min_stamp: Stamp = NO_VERSION) -> BucketSnapshot:
        """Reload from Redis (else PostgreSQL) unless a copy of at least ``min_stamp`` is held."""
        lock = self._locks.setdefault(bucket, trio.Lock())
        try:
            async with lock:
                return await self._refresh(bucket, min_stamp)
        finally:
            if bucket not in self._snaps and not lock.statistics().tasks_waiting:
                self._locks.pop(bucket, None)  # an unknown bucket keeps no lock either

    async def _refresh(self, bucket: Bucket, min_stamp: Stamp) -> BucketSnapshot:
        cur = self._snaps.get(bucket)
        if cur is not None and cur.source == "redis" and NO_VERSION < min_stamp <= cur.stamp:
            return cur  # another task loaded it while we waited for the lock
        started = time.perf_counter()
        snap: BucketSnapshot | None = None
        try:
            with trio.fail_after(self.redis_timeout_s):
                snap = await read_active(self.store, bucket)
            self._redis_ok = True
        except (StoreUnavailable, trio.TooSlowError):
            self._redis_ok = False
        try:
            if snap is None and cur is None:
                return await self._first_load(bucket, started)
            if snap is None:
                return await self._fallback(bucket, cur, started)
            if cur is not None and cur.source == "redis" and snap.stamp < cur.stamp:
                return cur  # never roll back (a newer epoch is never older: see keys.py)
            return self._install(snap, started)
        finally:
            self._update_state()

    async def _first_load(self, bucket: Bucket, started: float) -> BucketSnapshot:
        """A bucket met for the first time without a Redis snapshot: ask PostgreSQL once.

        Accounts there: a PostgreSQL copy (the builder publishes it soon). None:
        UnknownBucket, remembered for NEGATIVE_TTL_S; nothing else is kept.
        """
        if not self._lookup_limiter.try_acquire():
            raise _unknown(bucket)  # too many strangers at once: not worth a query each
        self.lookups += 1
        try:
            with trio.fail_after(current(self.fallback_timeout_s)):
                accounts = await self.source.bucket_accounts(bucket)
        except trio.TooSlowError as exc:
            raise StoreUnavailable("postgres", f"look-up of {bucket} timed out") from exc
        if not accounts:
            self._unknown.put(bucket, True)
            raise _unknown(bucket)
        now = time.time()
        snap = BucketSnapshot(
            bucket, NO_VERSION, accounts, loaded_at=now, built_at=now, source="postgres"
        )
        return self._install(snap, started)

    async def _fallback(
        self, bucket: Bucket, cur: BucketSnapshot | None, started: float
    ) -> BucketSnapshot:
        """Reload a held bucket from PostgreSQL within the QPS limit; keep ``cur`` when limited."""
        if not self._limiter.try_acquire():
            self.observer.fallback("limited")
            if cur is not None:
                return cur
            raise StoreUnavailable("postgres", f"fallback for {bucket} over the QPS limit")
        try:
            with trio.fail_after(current(self.fallback_timeout_s)):
                accounts = await self.source.bucket_accounts(bucket)
        except (StoreUnavailable, trio.TooSlowError) as exc:
            self.observer.fallback("failed")
            if cur is not None:
                return cur
            if isinstance(exc, StoreUnavailable):
                raise
            raise StoreUnavailable("postgres", f"fallback for {bucket} timed out") from exc
        self.fallback_loads += 1
        self.observer.fallback("loaded")
        now = time.time()
        snap = BucketSnapshot(
            bucket, NO_VERSION, accounts, loaded_at=now, built_at=now, source="postgres"
        )
        return self._install(snap, started)

    # --- freshness (driven by the watcher) --------------------------------------

    def request_reload(self, bucket: Bucket, stamp: Stamp) -> None:
        """An activation message: reload ``bucket`` if we hold an older copy. No I/O."""
        cur = self._snaps.get(bucket)
        if cur is None or (cur.source == "redis" and stamp <= cur.stamp):
            return
        self._pending[bucket] = max(stamp, self._pending.get(bucket, NO_VERSION))
        self._wake.set()

    async def reload_pending(self) -> None:
        """Wait for activation requests and apply them (the watcher runs this forever)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            pending, self._pending = self._pending, {}
            for bucket, stamp in pending.items():
                await self._try_refresh(bucket, stamp)

    async def poll_once(self) -> None:
        """Compare every held copy with the active versions; reload what changed.

        With Redis unreachable, refresh each copy from PostgreSQL (within the QPS limit).
        """
        held: Sequence[Bucket] = list(self._snaps)
        if not held:
            return
        try:
            with trio.fail_after(self.redis_timeout_s):
                stamps = await active_versions(self.store, held)
            self._redis_ok = True
        except (StoreUnavailable, trio.TooSlowError):
            self._redis_ok = False
            for bucket in held:
                await self._try_fallback(bucket)
            self._update_state()
            return
        for bucket, stamp in stamps.items():
            cur = self._snaps[bucket]
            if cur.source != "redis" or stamp > cur.stamp:
                await self._try_refresh(bucket, stamp)
        self._update_state()

    async def _try_refresh(self, bucket: Bucket, stamp: Stamp) -> None:
        # On failure keep serving the copy we have; the next poll retries.
        with contextlib.suppress(StoreUnavailable):
            await self.refresh(bucket, min_stamp=stamp)

    async def _try_fallback(self, bucket: Bucket) -> None:
        lock = self._locks.setdefault(bucket, trio.Lock())
        async with lock:
            with contextlib.suppress(StoreUnavailable):
                await self._fallback(bucket, self._snaps.get(bucket), time.perf_counter())


def _unknown(bucket: Bucket) -> UnknownBucket:
    return UnknownBucket(
        f"unknown bucket {bucket}: no account in group {bucket.group!r} "
        f"for platform {bucket.platform.value}",
        details={"group": bucket.group, "platform": bucket.platform.value},
    )
