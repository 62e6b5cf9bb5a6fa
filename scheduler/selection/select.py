"""Selection: which account serves this request, and a lease on it.

Order: previous_response_id binding, then session binding, then the pool
(:mod:`scheduler.selection._sticky`). A bound account passes the very same filter as the
pool (:func:`accounts.rules.check`, quota pause included); a hard failure
deletes the binding, a soft miss (full, rate-limited, overloaded, slow) keeps it
and spills over to the pool. The pool is filtered with one settings value, every
exclusion counted by reason, scored, cut to the best K and drawn in a weighted
order seeded by the session; the verdicts and scores are kept between selects
in a :class:`~scheduler.selection.pool.PoolCache` (rebuilt on every view refresh, only
changed accounts re-checked in between). Leases are acquired by one Lua script
per attempt (one Redis round trip on the common path), up to ``probe_limit``
attempts. Nothing acquired: wait in the bucket's queue (:mod:`._waiting`: a release
wakes one waiter; every waiter also retries each ``wait.retry_interval_ms``, all
of a bucket's waiters sharing one Redis read per period) up to the request's
limit, then
:class:`~accounts.errors.NoAccountAvailable` with the counts (:mod:`scheduler.selection._none`).
A model that no account of the bucket supports is
:class:`~accounts.errors.ModelNotServed` at once (a 4xx: retrying cannot help).

The state an acquire returns is checked again with the current time (quota
readings written by another instance a moment ago, an expiry that just passed):
a candidate that fails it gives its lease back at once, so a paused account is
never handed out even when the local view or the pool cache was stale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from accounts.errors import NotFound
from accounts.model import Account
from accounts.rules import Reason, check
from snapshot.keys import Bucket
from snapshot.redis import RedisStore
from snapshot.schedule import BucketSnapshot
from snapshot.settings import Settings

from ._none import model_not_served, no_account, retry_after_hint
from ._sticky import try_sticky
from ._waiting import WaitQueues
from .bindings import BindingCache
from .counters import SelectCounters
from .model import (
    BucketSnapshots,
    ModelName,
    ResponseId,
    Round,
    Selection,
    SelectRequest,
    SessionHash,
    selection_of,
)
from .pool import PoolCache
from .scoring import seed_for, weighted_order
from .store import Acquired, Effects, Refused, RuntimeState, RuntimeStore, parse_lease_id
from .view import RuntimeView

__all__ = [
    "BucketSnapshots",
    "ModelName",
    "ResponseId",
    "SelectRequest",
    "Selection",
    "Selector",
    "SessionHash",
    "retry_after_hint",
]

# Pool caches kept (one per bucket and model): bounds memory when requests name
# arbitrary models; past it the oldest is dropped and rebuilt on its next use.
POOL_CACHES_MAX = 256
_EXCLUDED = Reason.EXCLUDED_BY_REQUEST
# Verdicts the clock alone can lift (a deadline passing, a window resetting, a
# reading turning stale): the pool cache may hold them up to one refresh late.
_TIMED_REASONS = frozenset(
    {
        Reason.RATE_LIMITED,
        Reason.OVERLOADED,
        Reason.TEMP_UNSCHEDULABLE,
        Reason.QUOTA_PAUSED_5H,
        Reason.QUOTA_PAUSED_7D,
    }
)
_DEADLINE_FIELD = {
    "rate_limited": "rate_limited_until",
    "overloaded": "overloaded_until",
    "temp_unschedulable": "unschedulable_until",
}


class Selector:
    """The select flow over one Redis store, a bucket source and a settings source."""

    def __init__(
        self,
        redis: RedisStore,
        buckets: BucketSnapshots,
        settings: Callable[[], Settings],
        *,
        metrics: Any = None,
        view_ttl_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # This instance's wall clock (epoch s). Filters compare runtime states with it;
        # states arrive already moved onto it (RuntimeState), so a skewed clock is harmless.
        self.clock = clock
        self.runtime = RuntimeStore(redis, clock=clock)
        self.view = RuntimeView(self.runtime, ttl_s=view_ttl_s)
        self.buckets = buckets
        self.settings = settings
        self.metrics = metrics
        self.bindings = BindingCache()
        self.waiters = WaitQueues(buckets)
        self._pools: dict[tuple[Bucket, str], PoolCache] = {}
        # When each bucket was last selected from (monotonic): the refresher keeps these fresh.
        self.active: dict[Bucket, float] = {}
        # Metric children by label: ``labels()`` costs microseconds per call.
        self.counters = SelectCounters(metrics)

    # --- wake-ups ---------------------------------------------------------------

    def on_release(self, platform: str, account_id: str, state: RuntimeState | None = None) -> None:
        """A lease of ``account_id`` was released (here or elsewhere): wake waiters.

        ``state`` is the account's state right after the release when it happened
        here (the release script returns it), so a pause it caused counts at once.
        """
        if state is not None:
            self.view.put(account_id, state)
        else:
            self.view.note_release(account_id)
        self.waiters.wake(platform, account_id)

    def remember_binding(self, key: str, account_id: str | None) -> None:
        self.bindings.put(key, account_id)

    def binding_keys(self, req: SelectRequest) -> tuple[str | None, str | None]:
        k = self.runtime.keys
        p, g = req.platform.value, req.group
        resp = k.response(p, g, req.previous_response_id) if req.previous_response_id else None
        sess = k.session(p, g, req.session_hash) if req.session_hash else None
        return resp, sess

    # --- the flow -----------------------------------------------------------------

    async def snapshot(self, bucket: Bucket) -> BucketSnapshot:
        """The bucket's accounts; NotFound when the bucket has none at all."""
        snap = self.buckets.get(bucket) or await self.buckets.ensure(bucket)
        if not snap.accounts:
            raise NotFound(
                f"no accounts in group {bucket.group!r} for platform {bucket.platform.value}",
                details={"group": bucket.group, "platform": bucket.platform.value},
            )
        return snap

    def _loaded(self, bucket: Bucket) -> BucketSnapshot | None:
        """:meth:`snapshot`'s answer when it needs no await (saves a coroutine per select)."""
        snap = self.buckets.get(bucket)
        return snap if snap is not None and snap.accounts else None

    async def select(self, req: SelectRequest, settings: Settings | None = None) -> Selection:
        """Pick an account and hold a lease on it; NoAccountAvailable after the wait."""
        cfg = settings or self.settings()
        bucket = Bucket(req.group, req.platform)
        snap = self._loaded(bucket) or await self.snapshot(bucket)
        self.active[bucket] = time.monotonic()
        view_key = (bucket.group, bucket.platform.value)
        wait_s = min(req.wait_ms, cfg.wait.max_wait_ms) / 1000.0
        start = trio.current_time()
        deadline = start + wait_s
        # Any read of the bucket started after this request began can settle a "full".
        since: int | None = None
        began = self.view.mark(view_key)
        attempts = 0
        ticket = self.waiters.ticket()
        woken_by: str | None = None
        rechecked = rebuild = rebuilt = waited = False
        while True:
            rnd = await self._round(req, snap, cfg, since=since, rebuild=rebuild)
            since, rebuild = None, False
            attempts += rnd.attempts
            if rnd.selection is not None:
                return self._done(rnd.selection, attempts, start, waited, bucket)
            if rnd.pool_counts.get(Reason.MODEL_UNSUPPORTED, 0) >= len(snap.accounts):
                # No account could ever serve the model: a 404, never a wait or a 503.
                missing = model_not_served(snap, req.model)
                if missing is not None:
                    raise missing
            if woken_by is not None:
                self._pass_on(snap, woken_by)
                woken_by = None
            reasons = set(rnd.all_exclusions().values())
            if not rechecked and Reason.FULL in reasons:
                # A stale local "full" must not answer 503: a read started since this
                # request began (concurrent ones share it) settles it, once.
                rechecked, since = True, began
                continue
            if not rebuilt and not _TIMED_REASONS.isdisjoint(reasons):
                # The cache's verdicts may predate a deadline that has passed since:
                # judge them again at the current time (no Redis call) before a 503.
                rebuilt = rebuild = True
                continue
            if trio.current_time() >= deadline:
                break
            waited = True
            mark = self.view.mark(view_key)
            retry_at = trio.current_time() + cfg.wait.retry_interval_ms / 1000.0
            woken_by = await self.waiters.wait(bucket, ticket, min(deadline, retry_at))
            if woken_by is None:
                # The periodic retry: a release this instance did not hear of (or a
                # lease that expired) shows only in Redis. One read started after the
                # wait began serves every waiter of the bucket.
                since = mark
            # A release wake-up needs no read: on_release() has patched the view.
            snap = await self.snapshot(bucket)
        self.counters.selected("none", "none", trio.current_time() - start)
        excluded = rnd.all_exclusions()
        raise no_account(bucket, excluded, self.buckets.get(bucket), self.view, cfg, self.clock())

    def _pass_on(self, snap: BucketSnapshot, account_id: str) -> None:
        """A release woke us but this round took nothing: if its slot is still free, pass it on."""
        account = snap.by_id.get(account_id)
        if account is not None and self.view.get(account_id).leases < account.concurrency:
            self.waiters.pass_on(snap.bucket, account_id)

    def _done(
        self, sel: Selection, attempts: int, start: float, waited: bool, bucket: Bucket
    ) -> Selection:
        waited_s = trio.current_time() - start if waited else 0.0
        self.counters.selected(sel.path, "waited" if waited else "immediate", waited_s)
        return msgspec.structs.replace(sel, attempts=attempts, waited_s=waited_s)

    async def _round(
        self,
        req: SelectRequest,
        snap: BucketSnapshot,
        cfg: Settings,
        *,
        since: int | None,
        rebuild: bool,
    ) -> Round:
        rnd = Round()
        bucket = snap.bucket
        view = self.view
        view_key = (bucket.group, bucket.platform.value)
        # The refresher keeps the view fresh; read here only if it cannot be trusted.
        max_age_s = view.request_max_age_s
        if since is not None or not view.current(view_key, max_age_s):
            await view.refresh(
                view_key,
                bucket.platform,
                (a.id for a in snap.accounts),
                since=since,
                max_age_s=max_age_s,
            )
        now = self.clock()
        by_id = snap.by_id
        for account_id in req.exclude:
            if account_id in by_id:
                rnd.excluded[account_id] = _EXCLUDED
        session_bound = False
        if req.session_hash or req.previous_response_id:
            session_bound = await try_sticky(self, req, snap, cfg, rnd, now)
        if rnd.selection is None:
            if rebuild:
                self._pools.pop((snap.bucket, req.model), None)
            await self._pool(req, snap, cfg, rnd, now, session_bound)
        if self.metrics is not None:
            self.counters.exclusions(rnd)
        return rnd

    # --- pool -------------------------------------------------------------------------

    def pool(self, model: str, snap: BucketSnapshot, cfg: Settings, now: float) -> PoolCache:
        """The bucket's pool cache for this model and settings value, brought up to date."""
        view = self.view
        key = (snap.bucket, model)
        generation = view.generation((snap.bucket.group, snap.bucket.platform.value))
        pool = self._pools.get(key)
        if pool is not None and pool.fits(snap, cfg, generation):
            changed = view.changed_since(pool.position)
            if changed is not None:
                if changed:
                    pool.update(changed, view.get, now)
                    pool.position = view.log_end
                return pool
        pool = PoolCache(snap, model, cfg, generation=generation, position=view.log_end)
        pool.build(view.get, now)
        self._pools.pop(key, None)
        if len(self._pools) >= POOL_CACHES_MAX:
            del self._pools[next(iter(self._pools))]
        self._pools[key] = pool
        if self.metrics is not None:
            self.metrics.leases.labels(str(snap.bucket)).set(pool.leases_total)
        return pool

    def pool_models(self, bucket: Bucket) -> list[str]:
        """Models that have a pool cache of ``bucket`` (the refresher rebuilds them)."""
        return [model for b, model in self._pools if b == bucket]

    async def _pool(
        self,
        req: SelectRequest,
        snap: BucketSnapshot,
        cfg: Settings,
        rnd: Round,
        now: float,
        session_bound: bool,
    ) -> None:
        bind_mode = 2 if req.session_hash and not session_bound else 0
        limit = cfg.scoring.probe_limit
        tries = 0
        while tries < limit:
            # Refusals (a stale view, a race) exclude their account; when the whole
            # top K refused, the rest of the pool is ranked again within the limit.
            pool = self.pool(req.model, snap, cfg, now)
            rnd.pool_reasons, rnd.pool_counts = pool.reasons, pool.counts
            best = pool.best(cfg.scoring.top_k, rnd.excluded)
            if not best:
                return
            order = weighted_order(best, seed_for(req.session_hash, req.previous_response_id))
            for scored in order[: limit - tries]:
                tries += 1
                reason = await self.acquire(req, cfg, rnd, scored.account, "pool", bind_mode)
                if reason is None:
                    return
                rnd.excluded[scored.account.id] = reason
        # The verdicts as they stand now (the awaits above may have changed them).
        pool = self.pool(req.model, snap, cfg, self.clock())
        rnd.pool_reasons, rnd.pool_counts = pool.reasons, pool.counts

    # --- acquire ------------------------------------------------------------------

    async def acquire(
        self,
        req: SelectRequest,
        cfg: Settings,
        rnd: Round,
        account: Account,
        path: str,
        bind_mode: int,
    ) -> Reason | None:
        """One lease attempt; None on success (``rnd.selection`` set), else why it was refused."""
        rnd.attempts += 1
        # While the script runs, the slot counts as taken here: other selects of this
        # instance (waiters woken together, say) do not all go after the same one.
        # The reply (granted or refused) then writes the real count.
        held = self.view.hold(account.id)
        try:
            result = await self.runtime.acquire(
                req.platform.value, req.group, account.id,
                concurrency=account.concurrency,
                ttl_s=cfg.leases.ttl_s,
                session_hash=req.session_hash,
                bind_mode=bind_mode,
                bind_ttl_s=cfg.sticky.session_ttl_s,
            )  # fmt: skip
        except BaseException:
            self.view.unhold(account.id, held)
            raise
        if isinstance(result, Refused) and result.kind == "rebound":
            # Another instance re-bound the session meanwhile: keep its binding and
            # take this (filtered, fitting) account without touching the binding.
            _, sess_key = self.binding_keys(req)
            if sess_key is not None:
                self.remember_binding(sess_key, result.bound_to)
            return await self.acquire(req, cfg, rnd, account, path, bind_mode=0)
        if isinstance(result, Refused):
            return self._refused(account, result)
        self.view.put(account.id, result.state)
        # Readings written by another instance since our view was loaded count now,
        # and so does the clock (expiry): the pool cache may be up to one refresh old.
        reason = check(account, result.state, req.model, cfg.quota, self.clock())
        if reason is not None:
            await self._give_back(account, result, cfg)
            self.counters.child("acquire_attempts", reason.value).inc()
            return reason
        self.counters.child("acquire_attempts", "acquired").inc()
        if bind_mode and req.session_hash:
            _, sess_key = self.binding_keys(req)
            assert sess_key is not None
            self.remember_binding(sess_key, result.bound)
        rnd.selection = selection_of(result.lease_id, result.expires_at, account, path)
        return None

    def _refused(self, account: Account, result: Refused) -> Reason:
        self.counters.child("acquire_attempts", result.kind).inc()
        if result.kind == "full":
            self.view.patch(account.id, leases=result.leases)
            return Reason.FULL
        self.view.patch(account.id, **{_DEADLINE_FIELD[result.kind]: result.until})
        return Reason(result.kind)

    async def _give_back(self, account: Account, acquired: Acquired, cfg: Settings) -> None:
        await self.give_back(acquired.lease_id, cfg)

    async def give_back(self, lease_id: str, cfg: Settings | None = None) -> None:
        """Return a lease unused (no outcome to report): the slot is free again at once."""
        ref = parse_lease_id(lease_id)
        cfg = cfg or self.settings()
        nothing = Effects(last_used=False)
        released = await self.runtime.release(ref, nothing, alpha=cfg.runtime.ewma_alpha)
        if released is not None:
            self.on_release(ref.platform.value, ref.account_id, released.state)
