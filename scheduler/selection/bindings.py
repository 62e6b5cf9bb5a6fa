"""The local cache of sticky bindings (session hash / response id -> account id)."""

from __future__ import annotations

import time


class BindingCache:
    """Bound account ids read from Redis, trusted locally for ``ttl_s``.

    The acquire script re-checks a session binding, so a stale entry costs a
    retry, never a wrong pick. ``None`` is cached too (no binding).
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[str | None, float]] = {}

    def lookup(self, key: str, now: float) -> tuple[bool, str | None]:
        """``(True, account_id)`` for a live entry, ``(False, None)`` when missing or expired."""
        hit = self._entries.get(key)
        if hit is not None and hit[1] > now:
            return True, hit[0]
        return False, None

    def put(self, key: str, account_id: str | None) -> None:
        self._entries[key] = (account_id, time.monotonic() + self.ttl_s)

    def __len__(self) -> int:
        return len(self._entries)
