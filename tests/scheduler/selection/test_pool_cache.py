"""Property tests for the pool cache (pure): after any sequence of state changes and updates,
its verdicts equal a fresh filter's, and its best K are exactly the best in-pool candidates.
"""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.model import Account, Kind, Platform, QuotaWindow, Status, Window
from accounts.rules import Reason
from scheduler.selection.pool import PoolCache, verdict
from scheduler.selection.scoring import Weights, score
from scheduler.selection.store import RuntimeState
from snapshot.keys import Bucket
from snapshot.schedule import BucketSnapshot
from snapshot.settings import Settings

from .selectkit import top_k

NOW = 1_800_000_000.0
CFG = msgspec.convert({"quota": {"default_5h_threshold": 0.9}}, Settings)
N = 12

state_st = st.builds(
    lambda leases, used, rl, err, ttft: RuntimeState(
        leases=leases,
        error_rate=err,
        ttft_ms=ttft,
        rate_limited_until=NOW + 30 if rl else None,
        windows=(
            QuotaWindow(
                window=Window.FIVE_HOURS, used_ratio=used, observed_at=NOW - 5, reset_after_s=3600
            ),
        ),
    ),
    st.integers(0, 4),
    st.floats(0, 1.2),
    st.booleans(),
    st.floats(0, 1),
    st.one_of(st.none(), st.floats(1, 10_000)),
)


def accounts(spec: list[tuple[int, int, bool, bool]]) -> list[Account]:
    out = []
    for i, (prio, conc, disabled, other_model) in enumerate(spec):
        out.append(
            Account(
                id=f"a{i:02d}",
                name=f"a{i}",
                platform=Platform.OPENAI,
                kind=Kind.APIKEY,
                groups=("g",),
                priority=prio,
                concurrency=conc,
                status=Status.DISABLED if disabled else Status.ACTIVE,
                models=("claude-*",) if other_model else (),
            )
        )
    return out


account_spec = st.tuples(st.integers(0, 5), st.integers(1, 4), st.booleans(), st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    st.lists(account_spec, min_size=N, max_size=N),
    st.lists(state_st, min_size=N, max_size=N),
    st.lists(st.lists(st.tuples(st.integers(0, N - 1), state_st), max_size=4), max_size=6),
    st.integers(1, 8),
    st.sets(st.integers(0, N - 1), max_size=4),
)
def test_cache_matches_a_fresh_filter_after_any_updates(spec, initial, batches, k, excl):
    """Random accounts, states and batches of changes: verdicts, counts and best K stay exact."""
    accs = accounts(spec)
    snap = BucketSnapshot(Bucket("g", Platform.OPENAI), 1, accs, loaded_at=NOW, built_at=NOW)
    states = {a.id: s for a, s in zip(accs, initial, strict=True)}
    pool = PoolCache(snap, "gpt-4o", CFG, generation=0, position=0)
    pool.build(states.__getitem__, NOW)
    for batch in [[], *batches]:
        for i, state in batch:
            states[accs[i].id] = state
        pool.update([accs[i].id for i, _ in batch], states.__getitem__, NOW)
        fresh = {a.id: verdict(a, states[a.id], "gpt-4o", CFG, NOW) for a in accs}
        assert pool.reasons == {i: r for i, r in fresh.items() if r is not None}
        assert {r: n for r, n in pool.counts.items() if n} == _count(fresh.values())
        assert set(pool.scored) == {i for i, r in fresh.items() if r is None}
        excluded = {accs[i].id: Reason.EXCLUDED_BY_REQUEST for i in excl}
        best = pool.best(k, excluded)
        assert all(fresh[s.account.id] is None and s.account.id not in excluded for s in best)
        eligible = [s for s in pool.scored.values() if s.account.id not in excluded]
        assert len(best) == min(k, len(eligible))
        floor = min((s.score for s in best), default=0.0)
        assert all(s.score <= floor for s in eligible if s not in best)


def _count(reasons: object) -> dict[Reason, int]:
    out: dict[Reason, int] = {}
    for r in reasons:  # type: ignore[attr-defined]
        if r is not None:
            out[r] = out.get(r, 0) + 1
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(account_spec, min_size=N, max_size=N), st.lists(state_st, min_size=N, max_size=N))
def test_fresh_cache_ranks_like_the_uncached_path(spec, initial):
    """Right after a build, best K is what filter + score + top_k gave before the cache."""
    accs = accounts(spec)
    snap = BucketSnapshot(Bucket("g", Platform.OPENAI), 1, accs, loaded_at=NOW, built_at=NOW)
    states = dict(zip((a.id for a in accs), initial, strict=True))
    pool = PoolCache(snap, "gpt-4o", CFG, generation=0, position=0)
    pool.build(states.__getitem__, NOW)
    passed = [
        (a, states[a.id]) for a in accs if verdict(a, states[a.id], "gpt-4o", CFG, NOW) is None
    ]
    expected = top_k(score(passed, Weights.from_settings(CFG.scoring), NOW), 7)
    assert [s.account.id for s in pool.best(7, {})] == [s.account.id for s in expected]
    assert [s.score for s in pool.best(7, {})] == [s.score for s in expected]
