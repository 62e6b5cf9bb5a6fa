"""Explain: filter and score a hypothetical request against live state, taking no lease.

The same filter (:func:`~scheduler.selection.pool.verdict`) and scorer as a real
select, over a fresh read of the bucket's runtime state, so an operator sees the
daemon's own view of every candidate.
"""

from __future__ import annotations

import msgspec

from accounts.rules import quota_pause
from snapshot.keys import Bucket

from .model import SelectRequest
from .pool import verdict
from .scoring import Weights, score
from .select import Selector
from .store import RuntimeState


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    priority: int
    concurrency: int
    state: RuntimeState
    excluded: str | None
    why: str | None
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
        why = quota_pause(account, state.windows, cfg.quota, now).why
        candidates[account.id] = (account, state, reason, why)
        if reason is None:
            passed.append((account, state))
    scored = {x.account.id: x for x in score(passed, Weights.from_settings(cfg.scoring), now)}
    counts: dict[str, int] = {}
    out = []
    for account, state, reason, why in candidates.values():
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
        sc = scored.get(account.id)
        out.append(
            Candidate(
                id=account.id, name=account.name, priority=account.priority,
                concurrency=account.concurrency, state=state, excluded=reason, why=why,
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
