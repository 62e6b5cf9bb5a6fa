"""The pool cache: one bucket's filter verdicts and scores, kept between selects.

Filtering (:func:`accounts.rules.check` on every candidate) and scoring a
500-account bucket cost milliseconds of Python per select; the answer barely
changes from one select to the next. A :class:`PoolCache` holds, for one
bucket snapshot, one model and one settings value, every candidate's verdict
(``reasons``: why it is out) and the score of every candidate that is in, in
score order. It is rebuilt from scratch whenever the runtime view refreshes the
bucket (every ``view_ttl_s``, 0.5 s by default), and in between only the
accounts whose local state changed (acquire replies and refusals, releases,
release reports) are checked and scored again, before the next select uses the
cache.

What this trades: a change driven by the clock alone (a deadline or a quota
pause lifting, an account's ``expires_at`` passing) is seen at the next rebuild
instead of at once; so are changes other instances write to Redis. The unsafe
direction is covered elsewhere: deadlines are checked by the acquire script in
Redis time, and the state an acquire returns is checked again with the current
time before the lease is handed out (expiry and quota pause included), so a
cached "in" verdict can cost a refused attempt, never a wrong pick. The other
direction cannot cause a wrong "no available accounts": before answering it,
selection rebuilds the cache at the current time when a time-lifted reason is
among the exclusions, and re-reads Redis when one is "full".

Pure: no I/O, no clock reads. The caller passes ``now`` and a state lookup.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from accounts.model import Account
from accounts.rules import Reason, check
from snapshot.schedule import BucketSnapshot
from snapshot.settings import Settings

from .scoring import Norm, Scored, Weights, normalisation, score
from .store import RuntimeState

StateOf = Callable[[str], RuntimeState]
_FULL = Reason.FULL


def verdict(
    account: Account, state: RuntimeState, model: str, cfg: Settings, now: float
) -> Reason | None:
    """Why ``account`` is out of the pool for ``model`` (None: it is in). The pool's filter."""
    reason = check(account, state, model, cfg.quota, now)
    if reason is None and state.leases >= account.concurrency:
        return _FULL
    return reason


class PoolCache:
    """Verdicts and scores of one (bucket snapshot, model, settings value), kept up to date.

    ``generation`` and ``position`` record which view refresh and which point of
    the view's change log it reflects (see :class:`scheduler.selection.view.RuntimeView`).
    """

    def __init__(
        self,
        snap: BucketSnapshot,
        model: str,
        cfg: Settings,
        *,
        generation: int,
        position: int,
    ) -> None:
        self.snap = snap
        self.model = model
        self.cfg = cfg
        self.generation = generation
        self.position = position
        self.weights = Weights.from_settings(cfg.scoring)
        self.reasons: dict[str, Reason] = {}
        self.counts: Counter[Reason] = Counter()
        self.scored: dict[str, Scored] = {}
        # (-score, snapshot index, id), ascending: best first, ties in snapshot order.
        # An entry's key is rebuilt from ``scored`` to find it again (no second map of
        # keys: one entry fewer per candidate, ~1 MB over 10,000 accounts' buckets).
        self._order: list[tuple[float, int, str]] = []
        self._index = {a.id: i for i, a in enumerate(snap.accounts)}
        self.norm = Norm(0, 1.0, 1.0)
        # Leases held on the bucket's accounts when built (the leases-per-bucket gauge).
        self.leases_total = 0

    def fits(self, snap: BucketSnapshot, cfg: Settings, generation: int) -> bool:
        """Whether this cache describes ``snap`` under ``cfg`` as of view ``generation``."""
        return self.snap is snap and self.cfg is cfg and self.generation == generation

    def build(self, state_of: StateOf, now: float) -> None:
        """Check and score every candidate of the snapshot."""
        passed = []
        for account in self.snap.accounts:
            state = state_of(account.id)
            self.leases_total += state.leases
            reason = verdict(account, state, self.model, self.cfg, now)
            if reason is not None:
                self.reasons[account.id] = reason
            else:
                passed.append((account, state))
        self.counts = Counter(self.reasons.values())
        self.norm = normalisation(passed)
        index = self._index
        for s in score(passed, self.weights, now, with_terms=False, norm=self.norm):
            account_id = s.account.id
            self.scored[account_id] = s
            self._order.append((-s.score, index[account_id], account_id))
        self._order.sort()

    def update(self, ids: Iterable[str], state_of: StateOf, now: float) -> None:
        """Check and score again the given accounts (ids outside the bucket are ignored)."""
        by_id = self.snap.by_id
        model, quota = self.model, self.cfg.quota
        passed = []
        for account_id in dict.fromkeys(ids):  # once each, however often it changed
            account = by_id.get(account_id)
            if account is None:
                continue
            self._remove(account_id)
            state = state_of(account_id)
            # verdict(), inlined: this runs on every select.
            reason = check(account, state, model, quota, now)
            if reason is None and state.leases >= account.concurrency:
                reason = _FULL
            if reason is not None:
                self.reasons[account_id] = reason
                self.counts[reason] += 1
            else:
                passed.append((account, state))
        for s in score(passed, self.weights, now, with_terms=False, norm=self.norm):
            self._insert(s)

    def best(self, k: int, excluded: Mapping[str, Reason]) -> list[Scored]:
        """The ``k`` best candidates that are in and not in ``excluded``, best first."""
        out: list[Scored] = []
        if k <= 0:
            return out
        scored = self.scored
        for _, _, account_id in self._order:
            if account_id not in excluded:
                out.append(scored[account_id])
                if len(out) >= k:
                    break
        return out

    def _insert(self, s: Scored) -> None:
        account_id = s.account.id
        key = (-s.score, self._index[account_id], account_id)
        self.scored[account_id] = s
        bisect.insort(self._order, key)

    def _remove(self, account_id: str) -> None:
        reason = self.reasons.pop(account_id, None)
        if reason is not None:
            self.counts[reason] -= 1
            return
        s = self.scored.pop(account_id, None)
        if s is not None:
            i = bisect.bisect_left(self._order, (-s.score, self._index[account_id], account_id))
            del self._order[i]
