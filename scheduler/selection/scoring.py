"""Pure scoring: rank filtered candidates, keep the best K, draw a weighted order.

No I/O and no clock reads: callers pass ``now`` and the runtime states they hold.
Every term is a float in [0, 1] where 1 is best, so weights from the settings
mean what they say whatever the load: load is ``leases / capacity`` as a float
(capacity = load_factor or concurrency), never an integer percentage that rounds
low loads to zero. (There is no "queue" term: selects wait per bucket, never for
one account, so there is no per-account queue to weigh.)

The order of the best K is drawn by weight without replacement
(Efraimidis-Spirakis: sort by ``u ** (1 / w)``), seeded from the session hash or
previous_response_id when the request has one, so one session sees a stable
order and different sessions spread over the pool.
"""

from __future__ import annotations

import hashlib
import math
import operator
import random
from collections.abc import Sequence
from typing import Any

import msgspec

from accounts.model import Account, Window
from snapshot.settings import DEFAULT_SETTINGS

from .store import RuntimeState

# Weights of zero are allowed (a term switched off); a score of zero must still
# leave the candidate drawable, so weights for the draw are floored at this.
_MIN_DRAW_WEIGHT = 1e-6


# The settings document is the one source of default weights.
_DEFAULT = DEFAULT_SETTINGS.scoring


class Weights(msgspec.Struct, frozen=True, kw_only=True):
    """How much each term counts; defaults are the settings document's defaults."""

    priority: float = _DEFAULT.priority
    load: float = _DEFAULT.load
    error_rate: float = _DEFAULT.error_rate
    ttft: float = _DEFAULT.ttft
    quota_headroom: float = _DEFAULT.quota_headroom
    reset_soon: float = _DEFAULT.reset_soon

    @classmethod
    def from_settings(cls, scoring: Any) -> Weights:
        """Weights from the settings' scoring section (its ``weights`` struct or its own fields)."""
        source = getattr(scoring, "weights", scoring)
        values = {f: getattr(source, f) for f in cls.__struct_fields__ if hasattr(source, f)}
        return cls(**{k: float(v) for k, v in values.items()})


class Terms(msgspec.Struct, frozen=True, kw_only=True):
    priority: float
    load: float
    error_rate: float
    ttft: float
    quota_headroom: float
    reset_soon: float


_TERM_NAMES = Terms.__struct_fields__


# gc=False: no reference cycles are possible here, and a pool rebuild creates one
# per candidate; tracked objects would trigger collections on the hot path.
class Scored(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    account: Account
    score: float
    terms: Terms | None
    load: float


def _clamp(x: float) -> float:
    return 0.0 if not x > 0.0 else (1.0 if x > 1.0 else x)  # NaN -> 0


def _quota_terms(state: RuntimeState, now: float) -> tuple[float, float]:
    """(headroom, reset_soon): room left in the fullest live window; how soon the 5h resets."""
    used = 0.0
    reset_soon = 0.0
    for w in state.windows:
        resets = w.resets_at()
        if resets is not None and now >= resets:
            continue  # already reset: the reading says nothing about now
        used = max(used, w.used_ratio)
        if w.window == Window.FIVE_HOURS and resets is not None:
            span = w.window_s or 5 * 3600.0
            reset_soon = max(reset_soon, 1.0 - _clamp((resets - now) / span))
    return 1.0 - _clamp(used), reset_soon


class Norm(msgspec.Struct, frozen=True):
    """What relative terms are measured against: the best priority, its spread, the worst TTFT."""

    lo: int
    spread: float
    ttft_ref: float


def normalisation(candidates: Sequence[tuple[Account, RuntimeState]]) -> Norm:
    """The :class:`Norm` of a candidate set (what :func:`score` uses when given none)."""
    if not candidates:
        return Norm(0, 1.0, 1.0)
    prios = [a.priority for a, _ in candidates]
    lo, hi = min(prios), max(prios)
    ttfts = [s.ttft_ms for _, s in candidates if s.ttft_ms]
    return Norm(lo, float(hi - lo) or 1.0, max(ttfts) if ttfts else 1.0)


def score(
    candidates: Sequence[tuple[Account, RuntimeState]],
    weights: Weights,
    now: float,
    *,
    with_terms: bool = True,
    norm: Norm | None = None,
) -> list[Scored]:
    """Score ``(account, state)`` pairs; the result keeps the input order.

    ``norm`` defaults to the candidates' own; selection's pool cache passes the
    one of the set it was built from when it re-scores a few changed accounts,
    so their scores stay comparable with the cached ones (terms are clamped to
    [0, 1] in case one falls outside that set's range).
    """
    if not candidates:
        return []
    # Plain attribute reads (in _TERM_NAMES order): a generator here cost more than
    # scoring the one or two accounts a pool update re-scores.
    w0, w1, w3, w4 = weights.priority, weights.load, weights.error_rate, weights.ttft
    w5, w6 = weights.quota_headroom, weights.reset_soon
    n = norm if norm is not None else normalisation(candidates)
    lo, spread, ttft_ref = n.lo, n.spread, n.ttft_ref
    clamp = _clamp
    out = []
    # Straight-line arithmetic, no per-term tuples: this runs for every candidate
    # of a bucket on each pool rebuild. The sum keeps the terms' order (same floats).
    for account, state in candidates:
        cap = account.capacity
        load = state.leases / cap
        headroom, reset_soon = _quota_terms(state, now) if state.windows else (1.0, 0.0)
        room = state.ratelimit_room
        if room is not None and (state.ratelimit_room_until or 0.0) > now:
            # Little left of an upstream rate limit: a soft penalty, until its reset.
            headroom = min(headroom, clamp(room))
        # Each t = 1.0 - _clamp(x), inlined (four calls per candidate on every rebuild):
        # 1.0 when not x > 0 (NaN included), 0.0 when x > 1, else 1.0 - x.
        x = (account.priority - lo) / spread
        t0 = 1.0 if not x > 0.0 else (0.0 if x > 1.0 else 1.0 - x)
        x = load
        t1 = 1.0 if not x > 0.0 else (0.0 if x > 1.0 else 1.0 - x)
        x = state.error_rate
        t3 = 1.0 if not x > 0.0 else (0.0 if x > 1.0 else 1.0 - x)
        x = (state.ttft_ms or 0.0) / ttft_ref
        t4 = 1.0 if not x > 0.0 else (0.0 if x > 1.0 else 1.0 - x)
        total = w0 * t0 + w1 * t1 + w3 * t3 + w4 * t4 + w5 * headroom + w6 * reset_soon
        # Terms are built only when asked (explain): the hot path scores 500 accounts.
        terms = None
        if with_terms:
            terms = Terms(
                priority=t0, load=t1, error_rate=t3, ttft=t4,
                quota_headroom=headroom, reset_soon=reset_soon,
            )  # fmt: skip
        out.append(Scored(account=account, score=total, terms=terms, load=load))
    return out


def seed_for(session_hash: str | None, response_id: str | None) -> int | None:
    """A stable seed for the request's draw, or None for a fresh random one."""
    key = response_id or session_hash
    if not key:
        return None
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


_shared_rng = random.Random()
_first = operator.itemgetter(0)


def weighted_order(scored: Sequence[Scored], seed: int | None) -> list[Scored]:
    """An order drawn by score without replacement; the same seed gives the same order."""
    draw = (random.Random(seed) if seed is not None else _shared_rng).random
    log, floor = math.log, _MIN_DRAW_WEIGHT
    # u ** (1/w), compared via its log to stay exact for tiny weights; the weight is
    # floored as max(score, floor) would (NaN stays NaN). One draw per candidate, in order.
    keyed = [(log(draw() or 1e-300) / (floor if floor > s.score else s.score), s) for s in scored]
    keyed.sort(key=_first, reverse=True)
    return [s for _, s in keyed]
