"""This instance's local, short-lived copy of candidates' runtime state (the runtime view)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import msgspec
import trio

from .store import EMPTY, RuntimeState, RuntimeStore

# The change log is cut back once this long; caches older than the cut rebuild
# (about as costly as the rebuild every view refresh causes anyway).
CHANGE_LOG_MAX = 20_000
# A request reads a bucket itself once its copy is this many ttls old: the
# refresher keeps active buckets within one ttl, so only a bucket idle for a while
# (or a refresher that is down) pays for a read on the request path.
REQUEST_MAX_AGE_TTLS = 10


class RuntimeView:
    """This instance's short-lived copy of candidates' runtime state, per platform.

    Refreshed in batches (one script call for a bucket) every ``ttl_s`` by the
    :class:`~scheduler.selection.refresher.ViewRefresher` actor, off the request path; a
    request reads a bucket itself only when it was never loaded, is older than
    ``request_max_age_s`` (the refresher is down, or the bucket was idle) or must
    be re-read (before a 503). Acquire replies and release messages patch it in
    between. It only guides the filter and the score: the acquire script is the
    authority on deadlines and slots, and the state an acquire returns is checked
    again before use.

    Every change is appended to a change log (account ids, read by the pool
    caches to re-check only what changed) and every refresh of a bucket bumps its
    ``generation`` (its pool caches rebuild). Positions in the log are absolute:
    ``log_end`` now, ``changed_since(pos)`` the ids after ``pos``, or None when
    the log was cut back past it.
    """

    def __init__(self, store: RuntimeStore, *, ttl_s: float = 0.5) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._states: dict[str, RuntimeState] = {}
        self._loaded_at: dict[tuple[str, str], float] = {}
        self._refreshing: dict[tuple[str, str], trio.Event] = {}
        # Reads started per bucket (see mark()), and local writes: a counter, and the
        # value it had at each account's latest write (a read never undoes a newer one).
        self._started: dict[tuple[str, str], int] = {}
        self._writes = 0
        self._touched: dict[str, int] = {}
        # Batch reads done (tests and the benchmark check who paid for them).
        self.reads = 0
        self._generation: dict[tuple[str, str], int] = {}
        self._log: list[str] = []
        self._log_base = 0

    def get(self, account_id: str) -> RuntimeState:
        return self._states.get(account_id, EMPTY)

    @property
    def request_max_age_s(self) -> float:
        """Age past which a request reads the bucket itself instead of trusting the copy."""
        return REQUEST_MAX_AGE_TTLS * self.ttl_s

    def stale(self, bucket: tuple[str, str], now: float, max_age_s: float | None = None) -> bool:
        """Whether ``bucket`` was never loaded or is older than ``max_age_s`` (default ttl)."""
        limit = self.ttl_s if max_age_s is None else max_age_s
        return now - self._loaded_at.get(bucket, float("-inf")) > limit

    def generation(self, bucket: tuple[str, str]) -> int:
        """How many times ``bucket`` was refreshed (a pool cache of an older one rebuilds)."""
        return self._generation.get(bucket, 0)

    @property
    def log_end(self) -> int:
        return self._log_base + len(self._log)

    def changed_since(self, position: int) -> list[str] | None:
        """Account ids changed after log ``position``; None if the log no longer reaches it."""
        if position < self._log_base:
            return None
        return self._log[position - self._log_base :]

    def _changed(self, account_id: str) -> None:
        if len(self._log) >= CHANGE_LOG_MAX:
            self._log_base += len(self._log)
            self._log = []
        self._log.append(account_id)

    def current(self, bucket: tuple[str, str], max_age_s: float | None = None) -> bool:
        """Whether a plain ``refresh(bucket, max_age_s=...)`` would return without reading.

        True while a read of the bucket is under way, or when the copy is younger than
        ``max_age_s``: the hot path tests this before paying for the call.
        """
        return bucket in self._refreshing or not self.stale(bucket, time.monotonic(), max_age_s)

    def mark(self, bucket: tuple[str, str]) -> int:
        """How many reads of ``bucket`` have started: pass it to a later ``refresh(since=)``."""
        return self._started.get(bucket, 0)

    async def refresh(
        self,
        bucket: tuple[str, str],
        platform: str,
        account_ids: Iterable[str],
        *,
        force: bool = False,
        since: int | None = None,
        max_age_s: float | None = None,
        chunk: int = 0,
    ) -> None:
        """Reload the bucket's states when older than ``max_age_s`` (default ttl), or as asked.

        ``since`` (a :meth:`mark` taken earlier) asks for a read that *started* after
        that mark: one under way or done since then serves the caller, so any number
        of waiters woken together cost one read (``force`` is ``since=mark()`` now).
        Without either, a caller keeps using the old copy while a read is under way
        (a slightly old load figure costs nothing the acquire script does not catch).

        ``chunk`` > 0 reads that many accounts per script call: parsing a 500-account
        reply holds the event loop for milliseconds, in chunks other tasks run between.
        One read at a time per bucket.
        """
        if force and since is None:
            since = self.mark(bucket)
        if since is None:
            if self.current(bucket, max_age_s):
                return
        else:
            while True:
                ongoing = self._refreshing.get(bucket)
                if self.mark(bucket) > since:
                    # Started after the mark: its result is what the caller asked for.
                    if ongoing is not None:
                        await ongoing.wait()
                    return
                if ongoing is None:
                    break
                await ongoing.wait()
        await self._read(bucket, platform, list(account_ids), chunk)

    async def _read(
        self, bucket: tuple[str, str], platform: str, ids: list[str], chunk: int
    ) -> None:
        self._started[bucket] = self.mark(bucket) + 1
        done = self._refreshing[bucket] = trio.Event()
        try:
            self.reads += 1
            step = chunk if chunk > 0 else max(1, len(ids))
            for i in range(0, len(ids), step):
                # A put() made while this chunk's reply was on its way (a release
                # reply, a refusal) is newer than the reply: it must survive it.
                sent = self._writes
                states = await self.store.read_many(platform, ids[i : i + step])
                touched = self._touched
                for account_id, state in states.items():
                    if touched.get(account_id, 0) <= sent:
                        self._states[account_id] = state
            self._loaded_at[bucket] = time.monotonic()
            # Other buckets sharing these accounts see them as changed; this one rebuilds.
            for account_id in ids:
                self._changed(account_id)
            self._generation[bucket] = self._generation.get(bucket, 0) + 1
        finally:
            del self._refreshing[bucket]
            done.set()

    def put(self, account_id: str, state: RuntimeState) -> None:
        self._states[account_id] = state
        self._written(account_id)

    def patch(self, account_id: str, **changes: Any) -> None:
        self._states[account_id] = msgspec.structs.replace(self.get(account_id), **changes)
        self._written(account_id)

    def hold(self, account_id: str) -> int:
        """Count one more lease locally while an acquire is in flight; the count it set."""
        state = self._states.get(account_id, EMPTY)
        leases = state.leases + 1
        self._states[account_id] = msgspec.structs.replace(state, leases=leases)
        self._written(account_id)
        return leases

    def unhold(self, account_id: str, held: int) -> None:
        """Undo :meth:`hold` when the acquire failed without an answer (unless rewritten since)."""
        if self.get(account_id).leases == held:
            self.patch(account_id, leases=held - 1)

    def _written(self, account_id: str) -> None:
        """A local write: newer than any read whose request was sent before it."""
        self._writes += 1
        self._touched[account_id] = self._writes
        self._changed(account_id)

    def note_release(self, account_id: str) -> None:
        """A lease of ``account_id`` was released (any instance): one slot is free now."""
        state = self._states.get(account_id)
        if state is not None and state.leases > 0:
            self._states[account_id] = msgspec.structs.replace(state, leases=state.leases - 1)
            self._written(account_id)
