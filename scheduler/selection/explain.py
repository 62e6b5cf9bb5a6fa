"""Explain: filter and score a hypothetical request against live state, taking no lease.

The same filter (:func:`~scheduler.selection.pool.verdict`) and scorer as a real
select, over a fresh read of the bucket's runtime state, so an operator sees the
daemon's own view of every candidate. ``why`` is the real reason of each
verdict with its deadline (:mod:`scheduler.selection._why`); ``quota`` the quota
rule's reasoning, for every candidate. Times are RFC 3339 (UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from accounts.inputs import AwareTime
from accounts.model import Window
from accounts.rules import quota_pause
from snapshot.keys import Bucket

from ._why import why as why_text
from .model import SelectRequest
from .pool import verdict
from .scoring import Weights, score
from .select import Selector
from .store import RuntimeState


def _utc(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC)


class WindowView(msgspec.Struct, frozen=True, kw_only=True):
    window: Window
    used_ratio: float
    observed_at: AwareTime | None
    reset_at: AwareTime | None
    window_s: float | None


class StateView(msgspec.Struct, frozen=True, kw_only=True):
    """One account's runtime state as explain shows it (times RFC 3339, UTC)."""

    leases: int
    rate_limited_until: AwareTime | None
    overloaded_until: AwareTime | None
    unschedulable_until: AwareTime | None
    unschedulable_reason: str | None
    last_used_at: AwareTime | None
    error_rate: float
    latency_ms: float | None
    ttft_ms: float | None
    ratelimit_room: float | None
    ratelimit_room_until: AwareTime | None
    windows: list[WindowView]

    @classmethod
    def of(cls, s: RuntimeState) -> StateView:
        return cls(
            leases=s.leases,
            rate_limited_until=_utc(s.rate_limited_until),
            overloaded_until=_utc(s.overloaded_until),
            unschedulable_until=_utc(s.unschedulable_until),
            unschedulable_reason=s.unschedulable_reason,
            last_used_at=_utc(s.last_used_at),
            error_rate=s.error_rate,
            latency_ms=s.latency_ms,
            ttft_ms=s.ttft_ms,
            ratelimit_room=s.ratelimit_room,
            ratelimit_room_until=_utc(s.ratelimit_room_until),
            windows=[
                WindowView(
                    window=w.window,
                    used_ratio=w.used_ratio,
                    observed_at=_utc(w.observed_at),
                    reset_at=_utc(w.resets_at()),
                    window_s=w.window_s,
                )
                for w in s.windows
            ],
        )


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    priority: int
    concurrency: int
    state: StateView
    excluded: str | None
    # The real reason, with its deadline ("rate-limited until …"), or "eligible: …".
    why: str
    # The quota auto-pause rule's reasoning (shown for every candidate).
    quota: str
    score: float | None
    load: float | None


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    bucket: str
    snapshot_version: int
    bindings: dict[str, str | None]
    exclusions: dict[str, int]
    candidates: list[Candidate]


async def explain(selector: Selector, req: SelectRequest) -> Explanation:
    """Filter and score for a hypothetical request: every candidate, no lease taken."""
    cfg = selector.settings()
    snap = await selector.snapshot(Bucket(req.group, req.platform))
    ids = [a.id for a in snap.accounts]
    states = await selector.runtime.read_many(req.platform.value, ids)
    resp_key, sess_key = selector.binding_keys(req)
    keys = [k for k in (resp_key, sess_key) if k]
    bound = dict(zip(keys, await selector.runtime.bindings(keys), strict=True)) if keys else {}
    now = selector.clock()
    excluded = {a: "excluded_by_request" for a in req.exclude}
    passed = []
    candidates = {}
    for account in snap.accounts:
        state = states[account.id]
        reason = excluded.get(account.id)
        if reason is None:
            r = verdict(account, state, req.model, cfg, now)
            reason = r.value if r is not None else None
        quota = quota_pause(account, state.windows, cfg.quota, now).why
        candidates[account.id] = (account, state, reason, quota)
        if reason is None:
            passed.append((account, state))
    scored = {x.account.id: x for x in score(passed, Weights.from_settings(cfg.scoring), now)}
    counts: dict[str, int] = {}
    out = []
    for account, state, reason, quota in candidates.values():
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
        sc = scored.get(account.id)
        out.append(
            Candidate(
                id=account.id, name=account.name, priority=account.priority,
                concurrency=account.concurrency, state=StateView.of(state), excluded=reason,
                why=why_text(reason, account, state, req.model, cfg, now), quota=quota,
                score=round(sc.score, 6) if sc else None, load=round(sc.load, 6) if sc else None,
            )
        )  # fmt: skip
    out.sort(key=lambda c: (c.score is None, -(c.score or 0.0)))
    return Explanation(
        bucket=str(snap.bucket),
        snapshot_version=snap.version,
        bindings={("response" if k == resp_key else "session"): v for k, v in bound.items()},
        exclusions=dict(sorted(counts.items())),
        candidates=out,
    )
