"""What the schedule snapshot reports upward, without importing the scheduler.

The scheduler passes an implementation that feeds its Prometheus collectors and
its Health component; tests and tools use :class:`NullObserver` or
:class:`CountingObserver`.
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import Protocol

from .keys import Bucket


class ViewState(enum.StrEnum):
    """How the schedule view is serving: from Redis, or (partly) from PostgreSQL."""

    UP = "up"
    DEGRADED = "degraded"


class ScheduleObserver(Protocol):
    def reloaded(self, bucket: Bucket, source: str, seconds: float) -> None:
        """A bucket's in-memory copy was replaced (``source`` redis or postgres)."""

    def fallback(self, outcome: str) -> None:
        """A PostgreSQL fallback load: ``loaded``, ``limited`` (QPS cap) or ``failed``."""

    def state(self, state: ViewState, detail: str) -> None:
        """The view's serving state changed."""

    def rebuilt(self, bucket: Bucket, outcome: str, seconds: float, lag_s: float | None) -> None:
        """The builder published a bucket (``outcome`` of set_snapshot; ``lag_s`` event age)."""


class NullObserver:
    """Reports nowhere."""

    def reloaded(self, bucket: Bucket, source: str, seconds: float) -> None:
        pass

    def fallback(self, outcome: str) -> None:
        pass

    def state(self, state: ViewState, detail: str) -> None:
        pass

    def rebuilt(self, bucket: Bucket, outcome: str, seconds: float, lag_s: float | None) -> None:
        pass


class CountingObserver(NullObserver):
    """Counts everything (tests, the benchmark)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.states: list[tuple[ViewState, str]] = []
        self.lags: list[float] = []

    def reloaded(self, bucket: Bucket, source: str, seconds: float) -> None:
        self.counts[f"reload_{source}"] += 1

    def fallback(self, outcome: str) -> None:
        self.counts[f"fallback_{outcome}"] += 1

    def state(self, state: ViewState, detail: str) -> None:
        self.states.append((state, detail))

    def rebuilt(self, bucket: Bucket, outcome: str, seconds: float, lag_s: float | None) -> None:
        self.counts[f"rebuild_{outcome}"] += 1
        if lag_s is not None:
            self.lags.append(lag_s)
