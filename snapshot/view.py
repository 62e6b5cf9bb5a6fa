"""ScheduleView: this process's in-memory copy of each bucket's active snapshot.

Selection calls :meth:`ScheduleView.get` (synchronous, no I/O) on the hot path
and :meth:`ScheduleView.ensure` the first time it meets a bucket. Copies are
immutable :class:`~snapshot.schedule.BucketSnapshot` values replaced whole, so a
reader never sees a mix of two versions, and a Redis copy is never replaced by
an older version (no rollback).

Freshness comes from :class:`~snapshot.watcher.ScheduleWatcher`: activation
messages (pub/sub) and a periodic check of the active versions.

Fallback: when Redis does not answer, or a bucket has no snapshot yet, the
bucket is loaded from PostgreSQL (``source == "postgres"``, version 0), at most
``fallback_qps`` loads per second across all buckets, each bounded by
``fallback_timeout_s``. The view then reports DEGRADED through its observer
until every copy comes from Redis again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import trio

from accounts.errors import StoreUnavailable

from .keys import Bucket
from .observer import NullObserver, ScheduleObserver, ViewState
from .redis import RedisStore
from .schedule import BucketSnapshot, active_versions, read_active
from .source import AccountSource
from .tunable import Tunable, current


class RateLimiter:
    """Token bucket: ``rate()`` tokens per second, burst of one second's worth (at least 1)."""

    def __init__(self, rate: Tunable) -> None:
        self._rate = rate
        self._tokens = max(1.0, current(rate))
        self._at = trio.current_time()

    def try_acquire(self) -> bool:
        rate = current(self._rate)
        now = trio.current_time()
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0:
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
        self._snaps: dict[Bucket, BucketSnapshot] = {}
        self._locks: dict[Bucket, trio.Lock] = {}
        self._redis_ok = True
        self._state = ViewState.UP
        self._detail = ""
        self._pending: dict[Bucket, int] = {}
        self._wake = trio.Event()
        self.fallback_loads = 0

    # --- hot path ---------------------------------------------------------------

    def get(self, bucket: Bucket) -> BucketSnapshot | None:
        """The bucket's current copy, or None if never loaded. No I/O."""
        return self._snaps.get(bucket)

    async def ensure(self, bucket: Bucket) -> BucketSnapshot:
        """The bucket's copy, loading it on first use (Redis, else PostgreSQL).

        Raises StoreUnavailable when neither store can provide it (or the
        fallback's QPS limit is exhausted and there is no copy yet).
        """
        snap = self._snaps.get(bucket)
        if snap is not None:
            return snap
        return await self.refresh(bucket)

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
        self._snaps[snap.bucket] = snap
        self.observer.reloaded(snap.bucket, snap.source, time.perf_counter() - started)
        return snap

    # --- loading ----------------------------------------------------------------

    async def refresh(self, bucket: Bucket, *, min_version: int = 0) -> BucketSnapshot:
        """Reload from Redis (else PostgreSQL) unless a copy of at least ``min_version`` is held."""
        lock = self._locks.setdefault(bucket, trio.Lock())
        async with lock:
            cur = self._snaps.get(bucket)
            if cur is not None and cur.source == "redis" and 0 < min_version <= cur.version:
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
                if snap is None:
                    return await self._fallback(bucket, cur, started)
                if cur is not None and cur.source == "redis" and snap.version < cur.version:
                    return cur  # never roll back
                return self._install(snap, started)
            finally:
                self._update_state()

    async def _fallback(
        self, bucket: Bucket, cur: BucketSnapshot | None, started: float
    ) -> BucketSnapshot:
        """Load from PostgreSQL within the QPS limit; keep ``cur`` when limited or failing."""
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
        snap = BucketSnapshot(bucket, 0, accounts, loaded_at=now, built_at=now, source="postgres")
        return self._install(snap, started)

    # --- freshness (driven by the watcher) --------------------------------------

    def request_reload(self, bucket: Bucket, version: int) -> None:
        """An activation message: reload ``bucket`` if we hold an older copy. No I/O."""
        cur = self._snaps.get(bucket)
        if cur is None or (cur.source == "redis" and version <= cur.version):
            return
        self._pending[bucket] = max(version, self._pending.get(bucket, 0))
        self._wake.set()

    async def reload_pending(self) -> None:
        """Wait for activation requests and apply them (the watcher runs this forever)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            pending, self._pending = self._pending, {}
            for bucket, version in pending.items():
                await self._try_refresh(bucket, version)

    async def poll_once(self) -> None:
        """Compare every held copy with the active versions; reload what changed.

        With Redis unreachable, refresh each copy from PostgreSQL (within the QPS limit).
        """
        held: Sequence[Bucket] = list(self._snaps)
        if not held:
            return
        try:
            with trio.fail_after(self.redis_timeout_s):
                versions: dict[Bucket, Any] = await active_versions(self.store, held)
            self._redis_ok = True
        except (StoreUnavailable, trio.TooSlowError):
            self._redis_ok = False
            for bucket in held:
                await self._try_fallback(bucket)
            self._update_state()
            return
        for bucket, version in versions.items():
            cur = self._snaps[bucket]
            if cur.source != "redis" or version > cur.version:
                await self._try_refresh(bucket, version)
        self._update_state()

    async def _try_refresh(self, bucket: Bucket, version: int) -> None:
        # On failure keep serving the copy we have; the next poll retries.
        with contextlib.suppress(StoreUnavailable):
            await self.refresh(bucket, min_version=version)

    async def _try_fallback(self, bucket: Bucket) -> None:
        lock = self._locks.setdefault(bucket, trio.Lock())
        async with lock:
            with contextlib.suppress(StoreUnavailable):
                await self._fallback(bucket, self._snaps.get(bucket), time.perf_counter())
