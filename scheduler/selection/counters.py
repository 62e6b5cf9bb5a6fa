"""The selector's metric counters: children created once per label set (``labels()`` costs µs)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from accounts.rules import Reason

from .model import Round


class SelectCounters:
    """Selections, acquire attempts and exclusions; no-ops when the selector has no metrics."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, metric: str, *labels: str) -> Any:
        """A metric's child for ``labels``, created once (a no-op stub without metrics)."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = _NOOP if self.metrics is None else getattr(self.metrics, metric).labels(*labels)
            self._children[key] = child
        return child

    def selected(self, path: str, outcome: str, waited: float) -> None:
        self.child("selections", path, outcome).inc()
        if self.metrics is not None and outcome != "immediate":
            self.metrics.select_wait.observe(waited)

    def exclusions(self, rnd: Round) -> None:
        """Every exclusion of this round, by reason (the request's own reason wins)."""
        counts: Counter[Reason] = Counter(rnd.pool_counts)
        pool_reasons = rnd.pool_reasons
        for account_id, reason in rnd.excluded.items():
            old = pool_reasons.get(account_id)
            if old is not None:
                counts[old] -= 1
            counts[reason] += 1
        for reason, n in counts.items():
            if n > 0:
                self.child("exclusions", reason.value).inc(n)


class _Noop:
    """Stands in for a metric child when the Selector runs without metrics."""

    def inc(self, amount: float = 1) -> None:
        pass


_NOOP = _Noop()
