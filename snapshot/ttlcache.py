"""A small map whose entries expire after a fixed time and whose size is capped.

Used where a process remembers answers it got from a store for a short while
(selection's sticky bindings, the schedule view's unknown buckets): each entry
is trusted for ``ttl_s`` after it was put, and at most ``max_entries`` are kept,
so neither a million distinct sessions nor a flood of made-up bucket names can
grow the process.

Every entry has the same lifetime, so the order entries were (last) put in is
also the order they expire in: expired entries are dropped from the front on
each put (amortised O(1)), and past the cap the oldest live ones go first. A
dropped entry costs its next user a store read, never a wrong answer.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """``key -> value`` trusted for ``ttl_s`` after its put; at most ``max_entries`` kept.

    ``clock`` is monotonic seconds (tests pass their own).
    """

    def __init__(
        self, ttl_s: float, max_entries: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries: must be at least 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        # key -> (value, expires at); insertion order is expiry order (see the module doc).
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def lookup(self, key: K, now: float | None = None) -> tuple[bool, V | None]:
        """``(True, value)`` for a live entry, ``(False, None)`` when missing or expired."""
        hit = self._entries.get(key)
        if hit is not None and hit[1] > (self.clock() if now is None else now):
            return True, hit[0]
        return False, None

    def put(self, key: K, value: V) -> None:
        now = self.clock()
        entries = self._entries
        entries.pop(key, None)  # a re-put moves to the back: it now expires last
        entries[key] = (value, now + self.ttl_s)
        while entries:
            first = next(iter(entries.values()))
            if first[1] > now and len(entries) <= self.max_entries:
                break
            entries.popitem(last=False)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
