"""Property tests for the pure scoring rules: terms, top-K, weighted order without replacement."""

from __future__ import annotations

import collections

from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.model import Account, Kind, Platform, QuotaWindow, Window
from scheduler.selection.scoring import Scored, Weights, score, seed_for, weighted_order
from scheduler.selection.store import RuntimeState

from .selectkit import top_k

NOW = 1_800_000_000.0


def account(i: int, **kw: object) -> Account:
    base: dict[str, object] = {
        "id": f"a{i}",
        "name": f"a{i}",
        "platform": Platform.OPENAI,
        "kind": Kind.APIKEY,
        "groups": ("g",),
        "concurrency": 2,
    }
    base.update(kw)
    return Account(**base)  # type: ignore[arg-type]


candidate = st.tuples(
    st.integers(-5, 5),  # priority
    st.integers(1, 10),  # concurrency
    st.one_of(st.none(), st.floats(0.5, 500)),  # load factor
    st.integers(0, 10),  # leases
    st.floats(0, 1),  # error rate
    st.one_of(st.none(), st.floats(1, 60_000)),  # ttft
    st.floats(0, 1.5),  # used ratio
)


def build(specs: list[tuple]) -> list[tuple[Account, RuntimeState, int]]:
    out = []
    for i, (prio, conc, lf, leases, err, ttft, used) in enumerate(specs):
        win = QuotaWindow(window=Window.FIVE_HOURS, used_ratio=used, observed_at=NOW - 10,
                          reset_after_s=3600)  # fmt: skip
        state = RuntimeState(leases=leases, error_rate=err, ttft_ms=ttft, windows=(win,))
        out.append((account(i, priority=prio, concurrency=conc, load_factor=lf), state))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(candidate, min_size=1, max_size=30), st.integers(1, 10), st.integers(0, 2**32))
def test_order_is_a_permutation_of_top_k_and_stable_for_a_seed(specs, k, seed):
    """Only scored (i.e. filtered-in) candidates are ever ordered; a fixed seed fixes the order."""
    scored = score(build(specs), Weights(), NOW)
    best = top_k(scored, k)
    assert len(best) == min(k, len(scored))
    assert all(s.score >= 0 for s in scored)
    threshold = min(s.score for s in best)
    assert all(s.score <= threshold for s in scored if s not in best)
    order = weighted_order(best, seed)
    assert sorted(s.account.id for s in order) == sorted(s.account.id for s in best)
    assert [s.account.id for s in weighted_order(best, seed)] == [s.account.id for s in order]


@settings(max_examples=200, deadline=None)
@given(st.lists(candidate, min_size=1, max_size=20))
def test_terms_are_bounded(specs):
    for s in score(build(specs), Weights(), NOW):
        for value in msgspec_values(s):
            assert 0.0 <= value <= 1.0


def msgspec_values(s: Scored) -> list[float]:
    t = s.terms
    assert t is not None
    return [t.priority, t.load, t.error_rate, t.ttft, t.quota_headroom, t.reset_soon]


def test_higher_weight_is_drawn_first_more_often():
    """Over many unseeded draws the higher score leads roughly in proportion."""
    a, b = account(1), account(2)
    heavy = Scored(account=a, score=3.0, terms=None, load=0.0)  # type: ignore[arg-type]
    light = Scored(account=b, score=1.0, terms=None, load=0.0)  # type: ignore[arg-type]
    firsts = collections.Counter(weighted_order([light, heavy], seed=None)[0].account.id
                                 for _ in range(4000))  # fmt: skip
    # P(heavy first) = 3 / (3 + 1) = 0.75 for Efraimidis-Spirakis.
    assert 0.70 < firsts["a1"] / 4000 < 0.80


def test_seed_from_session_is_stable_and_response_id_wins():
    assert seed_for("s1", None) == seed_for("s1", None)
    assert seed_for("s1", None) != seed_for("s2", None)
    assert seed_for("s1", "r1") == seed_for(None, "r1")
    assert seed_for(None, None) is None


def test_float_load_separates_low_loads():
    """One lease on capacity 300 vs 200: an integer percentage would call both 0 %."""
    big = (account(1, load_factor=300.0, concurrency=300), RuntimeState(leases=1))
    small = (account(2, load_factor=200.0, concurrency=200), RuntimeState(leases=1))
    only_load = Weights(priority=0, load=1, error_rate=0, ttft=0, quota_headroom=0,
                        reset_soon=0)  # fmt: skip
    scored = score([small, big], only_load, NOW)
    assert top_k(scored, 1)[0].account.id == "a1"


def test_weights_from_settings_section():
    from snapshot.settings import Settings

    w = Weights.from_settings(Settings().scoring)
    assert w.priority == Settings().scoring.priority
    assert w.reset_soon == Settings().scoring.reset_soon


@given(room=st.floats(0, 1), left_s=st.floats(-100, 100).filter(lambda x: abs(x) > 1e-3))
def test_low_upstream_rate_limit_room_is_a_soft_penalty_until_its_reset(
    room: float, left_s: float
) -> None:
    """OpenAI x-ratelimit-* room lowers quota_headroom to it while the reading holds; once
    its reset passed it counts no more. Nothing else of the score moves."""
    a = account(1)
    plain = score([(a, RuntimeState())], Weights(), NOW)[0]
    low = RuntimeState(ratelimit_room=room, ratelimit_room_until=NOW + left_s)
    got = score([(a, low)], Weights(), NOW)[0]
    assert got.terms is not None and plain.terms is not None
    if left_s > 0:
        assert got.terms.quota_headroom == min(1.0, room)
        assert got.score <= plain.score
    else:
        assert got.terms == plain.terms and got.score == plain.score
