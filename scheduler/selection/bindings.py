"""The local cache of sticky bindings (session hash / response id -> account id)."""

from __future__ import annotations

import time
from collections.abc import Callable

from snapshot.ttlcache import TtlCache

# Bindings read from Redis are trusted this long; the acquire script re-checks a
# session binding, so a stale entry costs a retry, never a wrong pick.
BINDING_CACHE_S = 2.0
# Twice the entries live at 4,000 selects/s with both keys for BINDING_CACHE_S:
# about 9 MB at most, whatever the number of distinct sessions.
BINDING_CACHE_MAX = 32_768


class BindingCache(TtlCache[str, str | None]):
    """Bound account ids read from Redis, trusted locally for ``ttl_s``, at most ``max_entries``.

    ``None`` is cached too (no binding). Expired entries are dropped as new ones
    come in; past the cap the oldest go first (their next select reads Redis).
    """

    def __init__(
        self,
        ttl_s: float = BINDING_CACHE_S,
        max_entries: int = BINDING_CACHE_MAX,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ttl_s, max_entries, clock=clock)
