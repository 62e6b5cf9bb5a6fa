"""The settings snapshot: a synchronous, never-blocking ``get()`` kept fresh by an actor.

``get()`` is one attribute read plus one flag test. Freshness comes from four
sources, all funnelled into the same version-gated :meth:`SettingsSnapshot._apply`:

1. **write-through** — :meth:`SettingsSnapshot.write` commits in PostgreSQL and
   installs the new value locally before it returns;
2. **invalidation** — the actor listens on the Redis settings channel; a
   message naming a newer version is a *hint*: it triggers a reload from
   PostgreSQL, and nothing it carries is installed. Anything that can publish on
   the channel could otherwise set thresholds on every instance, or freeze them
   with a huge version; now a forged message costs one read and changes nothing;
3. **version check** — every ``check_interval_s`` a ``SELECT version`` covers lost
   messages and Redis outages, and a stored version that *differs* from the one
   held (a restored or recreated row, lower than before) reloads too;
4. **stale-while-revalidate** — once the value is older than ``ttl_s`` (``error_ttl_s``
   after a failed refresh), the next ``get()`` asks for a reload and still
   answers at once with the value it has.

Reloads are single-flight: requests coalesce into one pending wake-up of one
refresh task. PostgreSQL is the record, so what is installed is the value read
*last*, not the highest version: every read and every write-through takes a
ticket (a read when it starts, a write once committed) and a value is installed
only if its ticket is newer than the installed one's. A refresh that read an old
row before a write committed can never replace the write's value, while a row
restored to an older version is followed, without a restart.

Redis outages never crash the actor (the listener reconnects with backoff and
the version check keeps propagation going), so readiness does not flap with
Redis; PostgreSQL outages keep the last good value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import structlog
import trio

from accounts.errors import StoreUnavailable, ValidationFailed
from snapshot.redis import UNAVAILABLE, RedisStore

from ._settings_model import DEFAULT_SETTINGS, Settings
from ._settings_store import (
    Invalidation,
    SettingsRecord,
    SettingsStore,
    publish_invalidation,
    settings_channel,
)

log = structlog.get_logger("settings")

# coredis' pub/sub cleanup can raise anyio's ClosedResourceError when its
# connection was torn down first (an abrupt cancel of the whole daemon): the
# channel is gone either way, so it counts as "unavailable".
_CHANNEL_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE, anyio.ClosedResourceError)
# What a refresh or a version check may fail with without crashing the actor.
_REFRESH_ERRORS = (StoreUnavailable, ValidationFailed, trio.TooSlowError)
# First and longest pause between pub/sub reconnect attempts: short enough to be
# back quickly after a Redis restart, capped so a long outage costs nothing.
_RECONNECT_INITIAL_S = 0.1
_RECONNECT_MAX_S = 5.0


@dataclass(slots=True)
class SnapshotStats:
    """Counters for tests and metrics (the scheduler exports them; this layer cannot)."""

    refreshes: int = 0
    refresh_failures: int = 0
    applied: int = 0
    stale_discarded: int = 0
    invalidations: int = 0
    version_checks: int = 0
    version_check_failures: int = 0
    publish_failures: int = 0
    subscriptions: int = 0


class SettingsSnapshot:
    """Actor holding the current :class:`Settings`; ``get()`` is the hot-path read.

    ``run()`` loads once (``warm``), then calls ``task_status.started(version)``;
    it raises StoreUnavailable / ValidationFailed if that first load fails (the
    supervisor restarts it; readiness stays 503 meanwhile). Cancelling ``run``
    stops every background task. Call ``get()`` from the trio thread.

    ``on_event(event, version)`` is called with each :class:`SnapshotStats` field
    name as it is counted, and the version held then (the daemon feeds metrics).
    """

    name = "settings"
    essential = True

    def __init__(
        self,
        store: SettingsStore,
        redis: RedisStore | None = None,
        *,
        ttl_s: float = 60.0,
        error_ttl_s: float = 5.0,
        check_interval_s: float = 2.0,
        load_timeout_s: float = 5.0,
        on_event: Callable[[str, int], None] | None = None,
    ) -> None:
        self._store = store
        self._redis = redis
        self._ttl_s = ttl_s
        self._error_ttl_s = error_ttl_s
        self._check_interval_s = check_interval_s
        self._load_timeout_s = load_timeout_s
        self._on_event = on_event
        self._value: Settings = DEFAULT_SETTINGS
        self._version = -1  # below every stored version: nothing loaded yet
        self._document: dict[str, Any] | None = None
        # Order of reads and writes (see the module doc): the installed value's ticket.
        self._tickets = itertools.count(1)
        self._ticket = 0
        self._stale = False
        self._refreshing = False
        self._wake = trio.Event()
        self._stale_at = math.inf
        self._rescheduled = trio.Event()
        self._retry_at = -math.inf
        self.warmed = False
        self.subscribed = False
        self.stats = SnapshotStats()

    # --- the hot path --------------------------------------------------------

    def get(self) -> Settings:
        """The current value, at once. Stale? Ask for one background reload."""
        if self._stale and not self._refreshing:
            self._refreshing = True
            self._wake.set()
        return self._value

    @property
    def version(self) -> int:
        """The version ``get()`` answers from (-1 before the first load)."""
        return self._version

    # --- writes ---------------------------------------------------------------

    async def write(
        self, patch: Mapping[str, Any], *, expected_version: int | None = None
    ) -> SettingsRecord:
        """Write-through: CAS in PostgreSQL, install locally, publish the version.

        Raises Conflict, ValidationFailed or StoreUnavailable from the store;
        nothing changes then. A failed publish is logged, not raised.
        """
        record = await self._store.write(patch, expected_version=expected_version)
        self._apply(record, "write", next(self._tickets))
        if self._redis is not None and not await publish_invalidation(self._redis, record):
            self._count("publish_failures")
        return record

    def _apply(self, record: SettingsRecord, source: str, ticket: int) -> bool:
        """Install ``record`` unless a later read or write was installed already.

        ``ticket``: when the read started, or when the write committed. True if
        the value changed.
        """
        if ticket < self._ticket:
            self._count("stale_discarded")
            return False
        self._ticket = ticket
        if record.version == self._version and record.document == self._document:
            return False  # confirmed: what we hold is current
        self._value, self._version = record.settings, record.version
        self._document = record.document
        self._count("applied")
        # Rare (an operator's change) and useful: when each instance switched.
        log.info("settings applied", version=record.version, source=source)
        self._schedule_stale(self._ttl_s)
        return True

    # --- the actor --------------------------------------------------------------

    async def warm(self) -> int:
        """Load now (start-up); returns the version. Raises if the store fails."""
        ticket = next(self._tickets)
        with trio.fail_after(self._load_timeout_s):
            record = await self._store.load()
        self._apply(record, "warm", ticket)
        self._schedule_stale(self._ttl_s)
        self.warmed = True
        return record.version

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        # The stale timer runs first so warm()'s schedule is never missed.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stale_timer)
            version = await self.warm()
            nursery.start_soon(self._refresh_loop)
            nursery.start_soon(self._check_loop)
            if self._redis is not None:
                # Returns after the first subscription attempt, so a healthy
                # instance is listening before it reports ready; a dead Redis
                # does not hold start-up (the version check covers it).
                await nursery.start(self._listen_loop, self._redis)
            task_status.started(version)

    def request_refresh(self) -> None:
        """Ask for one reload soon (coalesces with any pending request)."""
        self._wake.set()

    async def _refresh_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._refreshing = True
            try:
                await self._refresh_once()
            finally:
                self._refreshing = False

    async def _refresh_once(self) -> None:
        self._count("refreshes")
        ticket = next(self._tickets)
        try:
            with trio.fail_after(self._load_timeout_s):
                record = await self._store.load()
        except _REFRESH_ERRORS as exc:
            self._count("refresh_failures")
            self._retry_at = trio.current_time() + self._error_ttl_s
            self._schedule_stale(self._error_ttl_s)
            log.warning(
                "settings refresh failed; keeping the last good value",
                version=self._version,
                retry_in_s=self._error_ttl_s,
                reason=getattr(exc, "message", type(exc).__name__),
            )
            return
        if not self._apply(record, "refresh", ticket):
            # Unchanged (or overtaken by a write): the value we hold is current.
            self._schedule_stale(self._ttl_s)

    def _schedule_stale(self, after_s: float) -> None:
        self._stale = False
        self._stale_at = trio.current_time() + after_s
        self._rescheduled.set()

    async def _stale_timer(self) -> None:
        """Raise the stale flag when ``_stale_at`` passes; get() reads only the flag."""
        while True:
            self._rescheduled = trio.Event()
            with trio.move_on_at(self._stale_at):
                await self._rescheduled.wait()
                continue
            self._stale = True
            await self._rescheduled.wait()

    async def _check_loop(self) -> None:
        next_at = trio.current_time()
        while True:
            # Drift-corrected: a slow check does not push every later one back.
            next_at = max(next_at + self._check_interval_s, trio.current_time())
            await trio.sleep_until(next_at)
            await self.check_version()

    async def check_version(self) -> None:
        """``SELECT version``; request a reload if PostgreSQL holds another one.

        Another, not only a newer one: a restored (or deleted and recreated) row
        goes back to a lower version, and PostgreSQL is the record.
        """
        self._count("version_checks")
        try:
            with trio.fail_after(self._load_timeout_s):
                stored = await self._store.version()
        except _REFRESH_ERRORS as exc:
            self._count("version_check_failures")
            log.debug("settings version check failed", reason=type(exc).__name__)
            return
        # After a failed refresh, wait out the short TTL instead of retrying every check.
        if stored != self._version and trio.current_time() >= self._retry_at:
            self.request_refresh()

    def on_message(self, data: str | bytes) -> None:
        """One invalidation: a hint. If it names a newer version, reload from PostgreSQL.

        Nothing in the message is installed (a document it carries is ignored):
        the channel is not a trusted source, the settings row is.
        """
        self._count("invalidations")
        try:
            decoded = msgspec.json.decode(data, type=Invalidation | int)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed settings invalidation")
            return
        version = decoded if isinstance(decoded, int) else decoded.version
        if version > self._version:
            self.request_refresh()

    async def _listen_loop(
        self, redis: RedisStore, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe and dispatch messages; on Redis errors, back off and resubscribe.

        ``started()`` after the first attempt, whether it subscribed or not.
        """
        channel = settings_channel(redis)
        delay = _RECONNECT_INITIAL_S
        pending_start: trio.TaskStatus[None] | None = task_status
        while True:
            try:
                # retry_policy=None: reconnecting is ours, so we know when messages
                # may have been missed and check the version right after resubscribing.
                async with redis.client.pubsub(
                    channels=[channel], ignore_subscribe_messages=True, retry_policy=None
                ) as pubsub:
                    self.subscribed = True
                    self._count("subscriptions")
                    delay = _RECONNECT_INITIAL_S
                    if pending_start is not None:
                        pending_start.started()
                        pending_start = None
                    await self.check_version()
                    async for message in pubsub:
                        data = message["data"]
                        if message["type"] == "message" and isinstance(data, (str, bytes)):
                            self.on_message(data)
            except* _CHANNEL_ERRORS as group:
                # While being cancelled (shutdown) the channel's teardown errors say nothing.
                shutting_down = trio.current_effective_deadline() == -math.inf
                if (self.subscribed or pending_start is not None) and not shutting_down:
                    log.warning(
                        "settings channel lost; relying on the version check until it is back",
                        reason=type(group.exceptions[0]).__name__,
                    )
            self.subscribed = False
            if pending_start is not None:
                pending_start.started()
                pending_start = None
            await trio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    def _count(self, event: str) -> None:
        setattr(self.stats, event, getattr(self.stats, event) + 1)
        if self._on_event is not None:
            self._on_event(event, self._version)
