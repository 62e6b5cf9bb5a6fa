"""Selection: which account serves this request, and a lease on it.

Order: previous_response_id binding, then session binding, then the pool. A
bound account passes the very same filter as the pool (:func:`accounts.rules.check`,
quota pause included); a hard failure deletes the binding, a soft miss (full,
rate-limited, overloaded, slow) keeps it and spills over to the pool. The pool
is filtered with one settings value, every exclusion counted by reason, scored,
cut to the best K and drawn in a weighted order seeded by the session; leases
are acquired by one Lua script per attempt (one Redis round trip on the common
path), up to ``probe_limit`` attempts. Nothing acquired: wait for a release in
the platform (pub/sub wake-up plus a periodic retry) up to the request's limit,
then :class:`~accounts.errors.NoAccountAvailable` with the counts.

The state an acquire returns is checked again (quota readings written by another
instance a moment ago): a candidate that fails it gives its lease back at once,
so a paused account is never handed out even when the local view was stale.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any, Protocol

import msgspec
import trio

from accounts.errors import NoAccountAvailable, NotFound
from accounts.model import Account, GroupName, Platform
from accounts.rules import Reason, check, is_hard, quota_pause
from snapshot.keys import Bucket
from snapshot.redis import UNAVAILABLE, RedisStore
from snapshot.schedule import BucketSnapshot
from snapshot.settings import Settings

from .runtime import Acquired, Refused, RuntimeState, RuntimeStore, RuntimeView, parse_lease_id
from .scoring import Scored, Weights, score, seed_for, top_k, weighted_order

# A bound account id seen in Redis is trusted locally this long; the acquire
# script re-checks the binding, so a stale entry costs a retry, never a wrong pick.
BINDING_CACHE_S = 2.0
# Hint for "no available accounts" when every candidate was merely full.
FULL_RETRY_S = 1.0
# Hint when only hard reasons (disabled, error, model) excluded everything.
HARD_RETRY_S = 30.0

SessionHash = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
ResponseId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[!-~]+$")]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[!-~]+$")]


class SelectRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the gateway asks: an account for this group, platform and model."""

    group: GroupName
    platform: Platform
    model: ModelName
    session_hash: SessionHash | None = None
    previous_response_id: ResponseId | None = None
    # Accounts the gateway already tried for this request.
    exclude: Annotated[tuple[str, ...], msgspec.Meta(max_length=1000)] = ()
    # How long the gateway lets us wait for a free slot (capped by settings).
    wait_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 0


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: str
    expires_at: float
    account: Account
    # "response" (previous_response_id binding), "session" (session binding) or "pool".
    path: str
    sticky: bool
    attempts: int
    waited_s: float


class BucketSource(Protocol):
    """Where bucket snapshots come from (``snapshot.view.ScheduleView`` in the daemon)."""

    def get(self, bucket: Bucket) -> BucketSnapshot | None: ...

    async def ensure(self, bucket: Bucket) -> BucketSnapshot: ...


class _Round(msgspec.Struct, kw_only=True):
    """One pass over bindings and pool: its result and what it learned."""

    excluded: dict[str, Reason] = msgspec.field(default_factory=dict)
    attempts: int = 0
    selection: Selection | None = None
    sticky_reasons: list[tuple[str, Reason]] = msgspec.field(default_factory=list)


class Selector:
    """The select flow over one Redis store, a bucket source and a settings source."""

    def __init__(
        self,
        redis: RedisStore,
        buckets: BucketSource,
        settings: Callable[[], Settings],
        *,
        metrics: Any = None,
        view_ttl_s: float = 0.5,
    ) -> None:
        self.runtime = RuntimeStore(redis)
        self.view = RuntimeView(self.runtime, ttl_s=view_ttl_s)
        self.buckets = buckets
        self.settings = settings
        self.metrics = metrics
        self._bindings: dict[str, tuple[str | None, float]] = {}
        self._released: dict[str, trio.Event] = {}

    # --- wake-ups ---------------------------------------------------------------

    def on_release(self, platform: str, account_id: str) -> None:
        """A lease of ``account_id`` was released (here or elsewhere): wake waiters."""
        self.view.note_release(account_id)
        event = self._released.pop(platform, None)
        if event is not None:
            event.set()

    def remember_binding(self, key: str, account_id: str | None) -> None:
        self._bindings[key] = (account_id, time.monotonic() + BINDING_CACHE_S)

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

    async def select(self, req: SelectRequest, settings: Settings | None = None) -> Selection:
        """Pick an account and hold a lease on it; NoAccountAvailable after the wait."""
        cfg = settings or self.settings()
        bucket = Bucket(req.group, req.platform)
        snap = await self.snapshot(bucket)
        wait_s = min(req.wait_ms, cfg.wait.max_wait_ms) / 1000.0
        start = trio.current_time()
        deadline = start + wait_s
        attempts = 0
        force = waited = False
        while True:
            rnd = await self._round(req, snap, cfg, force=force)
            attempts += rnd.attempts
            if rnd.selection is not None:
                return self._done(rnd.selection, attempts, start, waited, bucket)
            if not force and any(r is Reason.FULL for r in rnd.excluded.values()):
                force = True  # a stale local "full" must not answer 503: re-read once
                continue
            if trio.current_time() >= deadline:
                break
            event = self._released.setdefault(req.platform.value, trio.Event())
            retry_s = cfg.wait.retry_interval_ms / 1000.0
            waited = True
            with trio.move_on_at(min(deadline, trio.current_time() + retry_s)):
                await event.wait()
            snap = await self.snapshot(bucket)
            force = True
        self._count("none", "none", trio.current_time() - start)
        raise self._none(bucket, rnd, cfg)

    def _done(
        self, sel: Selection, attempts: int, start: float, waited: bool, bucket: Bucket
    ) -> Selection:
        waited_s = trio.current_time() - start if waited else 0.0
        self._count(sel.path, "waited" if waited else "immediate", waited_s)
        if self.metrics is not None:
            self.metrics.leases.labels(str(bucket)).set(
                sum(self.view.get(a.id).leases for a in self._known(bucket))
            )
        return msgspec.structs.replace(sel, attempts=attempts, waited_s=waited_s)

    def _known(self, bucket: Bucket) -> tuple[Account, ...]:
        snap = self.buckets.get(bucket)
        return snap.accounts if snap is not None else ()

    def _count(self, path: str, outcome: str, waited: float) -> None:
        if self.metrics is not None:
            self.metrics.selections.labels(path, outcome).inc()
            if outcome != "immediate":
                self.metrics.select_wait.observe(waited)

    async def _round(
        self, req: SelectRequest, snap: BucketSnapshot, cfg: Settings, *, force: bool
    ) -> _Round:
        rnd = _Round()
        bucket = snap.bucket
        ids = [a.id for a in snap.accounts]
        await self.view.refresh(
            (bucket.group, bucket.platform.value), bucket.platform, ids, force=force
        )
        now = time.time()
        for account_id in req.exclude:
            if account_id in snap.by_id:
                rnd.excluded[account_id] = Reason.EXCLUDED_BY_REQUEST
        session_bound = await self._sticky(req, snap, cfg, rnd, now)
        if rnd.selection is None:
            await self._pool(req, snap, cfg, rnd, now, session_bound)
        if self.metrics is not None:
            for reason in rnd.excluded.values():
                self.metrics.exclusions.labels(reason.value).inc()
        return rnd

    # --- sticky paths -----------------------------------------------------------

    def binding_keys(self, req: SelectRequest) -> tuple[str | None, str | None]:
        k = self.runtime.keys
        p, g = req.platform.value, req.group
        resp = k.response(p, g, req.previous_response_id) if req.previous_response_id else None
        sess = k.session(p, g, req.session_hash) if req.session_hash else None
        return resp, sess

    async def _read_bindings(self, keys: list[str]) -> dict[str, str | None]:
        """Bound account ids, from the local cache or one MGET for the missing ones."""
        now = time.monotonic()
        found: dict[str, str | None] = {}
        missing = []
        for key in keys:
            hit = self._bindings.get(key)
            if hit is not None and hit[1] > now:
                found[key] = hit[0]
            else:
                missing.append(key)
        if missing:
            for key, value in zip(missing, await self.runtime.bindings(missing), strict=True):
                found[key] = value
                self.remember_binding(key, value)
        return found

    async def _sticky(
        self, req: SelectRequest, snap: BucketSnapshot, cfg: Settings, rnd: _Round, now: float
    ) -> bool:
        """Try the bound accounts in order; returns whether a session binding still stands."""
        resp_key, sess_key = self.binding_keys(req)
        keys = [k for k in (resp_key, sess_key) if k is not None]
        if not keys:
            return False
        bound = await self._read_bindings(keys)
        session_bound = sess_key is not None and bound.get(sess_key) is not None
        for path, key in (("response", resp_key), ("session", sess_key)):
            account_id = bound.get(key) if key is not None else None
            if account_id is None or account_id in rnd.excluded:
                continue
            reason = await self._try_bound(req, snap, cfg, rnd, now, account_id, path)
            if reason is None:
                return True
            rnd.sticky_reasons.append((path, reason))
            if is_hard(reason):
                assert key is not None
                await self.runtime.delete(key)
                self.remember_binding(key, None)
                session_bound = session_bound and key != sess_key
        return session_bound

    async def _try_bound(
        self,
        req: SelectRequest,
        snap: BucketSnapshot,
        cfg: Settings,
        rnd: _Round,
        now: float,
        account_id: str,
        path: str,
    ) -> Reason | None:
        """Filter and acquire one bound account; None on success (``rnd.selection`` set)."""
        account = snap.by_id.get(account_id)
        if account is None:
            # Gone from the bucket's snapshot: disabled, in error, or moved. Hard.
            return Reason.DISABLED
        state = self.view.get(account_id)
        reason = check(account, state, req.model, cfg.quota, now)
        if reason is None and state.ttft_ms is not None and state.ttft_ms > cfg.sticky.slow_ttft_ms:
            reason = Reason.SLOW
        if reason is None:
            reason = await self._acquire(req, cfg, rnd, now, account, path, bind_mode=1)
        if reason is not None:
            rnd.excluded[account_id] = reason
        return reason

    # --- pool -------------------------------------------------------------------------

    def filter(
        self,
        req: SelectRequest,
        snap: BucketSnapshot,
        cfg: Settings,
        now: float,
        excluded: dict[str, Reason],
    ) -> list[tuple[Account, RuntimeState, int]]:
        """Every candidate through the same rules; fills ``excluded`` with the reasons."""
        passed = []
        waiting = self.view.waiting
        for account in snap.accounts:
            if account.id in excluded:
                continue
            state = self.view.get(account.id)
            reason = check(account, state, req.model, cfg.quota, now)
            if reason is None and state.leases >= account.concurrency:
                reason = Reason.FULL
            if reason is not None:
                excluded[account.id] = reason
                continue
            passed.append((account, state, waiting.get(account.id, 0)))
        return passed

    def rank(
        self,
        req: SelectRequest,
        candidates: list[tuple[Account, RuntimeState, int]],
        cfg: Settings,
        now: float,
    ) -> list[Scored]:
        """Score, keep the best K, draw the weighted order (seeded by the session)."""
        scored = score(candidates, Weights.from_settings(cfg.scoring), now, with_terms=False)
        best = top_k(scored, cfg.scoring.top_k)
        return weighted_order(best, seed_for(req.session_hash, req.previous_response_id))

    async def _pool(
        self,
        req: SelectRequest,
        snap: BucketSnapshot,
        cfg: Settings,
        rnd: _Round,
        now: float,
        session_bound: bool,
    ) -> None:
        bind_mode = 2 if req.session_hash and not session_bound else 0
        tries = 0
        while tries < cfg.scoring.probe_limit:
            # Refusals (a stale view, a race) exclude their account; when the whole
            # top K refused, the rest of the pool is ranked again within the limit.
            order = self.rank(req, self.filter(req, snap, cfg, now, rnd.excluded), cfg, now)
            if not order:
                return
            for scored in order[: cfg.scoring.probe_limit - tries]:
                tries += 1
                reason = await self._acquire(req, cfg, rnd, now, scored.account, "pool", bind_mode)
                if reason is None:
                    return
                rnd.excluded[scored.account.id] = reason

    # --- acquire ------------------------------------------------------------------

    async def _acquire(
        self,
        req: SelectRequest,
        cfg: Settings,
        rnd: _Round,
        now: float,
        account: Account,
        path: str,
        bind_mode: int,
    ) -> Reason | None:
        """One lease attempt; None on success, else the reason it was refused."""
        rnd.attempts += 1
        result = await self.runtime.acquire(
            req.platform.value, req.group, account.id,
            concurrency=account.concurrency,
            ttl_s=cfg.leases.ttl_s,
            session_hash=req.session_hash,
            bind_mode=bind_mode,
            bind_ttl_s=cfg.sticky.session_ttl_s,
        )  # fmt: skip
        if isinstance(result, Refused) and result.kind == "rebound":
            # Another instance re-bound the session meanwhile: keep its binding and
            # take this (filtered, fitting) account without touching the binding.
            _, sess_key = self.binding_keys(req)
            if sess_key is not None:
                self.remember_binding(sess_key, result.bound_to)
            return await self._acquire(req, cfg, rnd, now, account, path, bind_mode=0)
        if isinstance(result, Refused):
            return self._refused(account, result)
        self.view.put(account.id, result.state)
        # Readings written by another instance since our view was loaded count now.
        reason = check(account, result.state, req.model, cfg.quota, time.time())
        if reason is not None:
            await self._give_back(result, cfg)
            self._attempt_metric(reason.value)
            return reason
        self._attempt_metric("acquired")
        _, sess_key = self.binding_keys(req)
        if sess_key is not None and bind_mode:
            self.remember_binding(sess_key, result.bound)
        rnd.selection = _selection(result, account, path)
        return None

    def _refused(self, account: Account, result: Refused) -> Reason:
        self._attempt_metric(result.kind)
        if result.kind == "full":
            self.view.patch(account.id, leases=result.leases)
            return Reason.FULL
        field = {
            "rate_limited": "rate_limited_until",
            "overloaded": "overloaded_until",
            "temp_unschedulable": "unschedulable_until",
        }[result.kind]
        self.view.patch(account.id, **{field: result.until})
        return Reason(result.kind)

    async def _give_back(self, acquired: Acquired, cfg: Settings) -> None:
        ref = parse_lease_id(acquired.lease_id)
        await self.runtime.release(
            ref, alpha=cfg.runtime.ewma_alpha, fields={}, samples=("", "", ""),
            response_key=None, response_ttl_s=0.0,
        )  # fmt: skip

    def _attempt_metric(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.acquire_attempts.labels(result).inc()

    # --- nothing fits -------------------------------------------------------------

    def _none(self, bucket: Bucket, rnd: _Round, cfg: Settings) -> NoAccountAvailable:
        counts = Counter(r.value for r in rnd.excluded.values())
        snap = self.buckets.get(bucket)
        retry = retry_after_hint(
            [snap.by_id.get(a) if snap is not None else None for a in rnd.excluded],
            [self.view.get(a) for a in rnd.excluded],
            list(rnd.excluded.values()),
            cfg,
            time.time(),
        )
        return NoAccountAvailable(
            f"no available accounts in {bucket} ({sum(counts.values())} excluded)",
            bucket=str(bucket),
            exclusions=dict(sorted(counts.items())),
            retry_after_s=retry,
        )


def _selection(acquired: Acquired, account: Account, path: str) -> Selection:
    return Selection(
        lease_id=acquired.lease_id,
        expires_at=acquired.expires_at,
        account=account,
        path=path,
        sticky=path != "pool",
        attempts=0,
        waited_s=0.0,
    )


def retry_after_hint(
    accounts: list[Account | None],
    states: list[RuntimeState],
    reasons: list[Reason],
    cfg: Settings,
    now: float,
) -> float:
    """Seconds until something could fit: the nearest soft deadline, else a fixed hint."""
    best: float | None = None
    for account, state, reason in zip(accounts, states, reasons, strict=True):
        until: float | None = None
        if reason is Reason.FULL or reason is Reason.SLOW:
            until = now + FULL_RETRY_S
        elif reason is Reason.RATE_LIMITED:
            until = state.rate_limited_until
        elif reason is Reason.OVERLOADED:
            until = state.overloaded_until
        elif reason is Reason.TEMP_UNSCHEDULABLE:
            until = state.unschedulable_until
        elif reason in (Reason.QUOTA_PAUSED_5H, Reason.QUOTA_PAUSED_7D) and account is not None:
            until = quota_pause(account, state.windows, cfg.quota, now).until
        if until is not None and until > now:
            best = until - now if best is None else min(best, until - now)
    return round(best if best is not None else HARD_RETRY_S, 3)


# A subscription that dropped is retried after this; waiters still retry periodically.
RESUBSCRIBE_S = 1.0


class ReleaseWatcher:
    """Actor: turns release messages (pub/sub, every instance) into waiter wake-ups.

    ``started()`` once subscribed (or after a short wait if Redis is down: waiters
    then rely on their periodic retry). Never crashes on Redis failures.
    """

    name = "release-watcher"
    essential = False

    def __init__(self, selector: Selector) -> None:
        self.selector = selector
        self.messages = 0

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        keys = self.selector.runtime.keys
        channels = {keys.released_channel(p.value): p.value for p in Platform}
        subscribed = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen, channels, subscribed)
            with trio.move_on_after(2):
                await subscribed.wait()
            task_status.started()

    async def _listen(self, channels: dict[str, str], subscribed: trio.Event) -> None:
        client = self.selector.runtime.redis.client
        while True:
            try:
                async with client.pubsub(
                    channels=list(channels), ignore_subscribe_messages=True
                ) as pubsub:
                    subscribed.set()
                    async for message in pubsub:
                        platform = channels.get(str(message.get("channel", "")))
                        if message.get("type") == "message" and platform is not None:
                            self.messages += 1
                            self.selector.on_release(platform, str(message.get("data", "")))
            except UNAVAILABLE:
                pass
            await trio.sleep(RESUBSCRIBE_S)
