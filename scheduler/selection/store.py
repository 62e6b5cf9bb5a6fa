"""Per-account runtime state in Redis: key names, leases, bindings, the scripts that touch them.

Everything that changes per request and must be shared by every instance lives
here: concurrency leases (a sorted set of lease ids scored by expiry, in Redis
server time), rate-limited / overloaded / temporarily-unschedulable deadlines,
the latest quota readings, last use, and EWMAs of error rate, latency and time
to first token; plus the sticky bindings (session hash → account,
previous_response_id → account).

Hash tags: every runtime key of one **platform** carries the tag ``{rt.<platform>}``.
Not per bucket: an account belongs to several groups (buckets) but to one
platform, and its lease set must be one set whatever bucket selected it, while
the acquire script must touch the bucket's session binding in the same call. A
platform tag is the finest one under which both always share a Redis Cluster
slot. The cost: on a cluster, one platform's runtime state lives on one shard.

Lease ids are self-describing (``platform~group~account~<random>-<grant ms>``,
the grant time in Redis server time appended by the acquire script), so
releasing or renewing needs no lookup key and costs one script call, and renew
can cap a lease's total lifetime. Changing any part of an id makes it an
unknown lease.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from accounts.errors import ValidationFailed
from accounts.model import Platform, QuotaWindow
from accounts.rules import AccountRuntime
from snapshot.redis import RedisStore, translated

from . import fields as F

_HERE = Path(__file__).resolve().parent
ACQUIRE_LUA = _HERE / "acquire.lua"
RELEASE_LUA = _HERE / "release.lua"
RENEW_LUA = _HERE / "renew.lua"
READ_LUA = _HERE / "runtime_read.lua"
UNBIND_LUA = _HERE / "unbind.lua"
READINGS_LUA = _HERE / "readings.lua"

_SEP = "~"  # not allowed in group names, platforms, uuids or hex: splits lease ids safely
# Every lease id this service issues matches this (published in the API schema as well);
# the grant time is absent only from ids issued before it was added.
LEASE_ID_PATTERN = (
    r"^(?:" + "|".join(p.value for p in Platform) + r")~[A-Za-z0-9_.-]{1,64}~[A-Za-z0-9-]{1,64}"
    r"~[0-9a-f]{1,32}(?:-[0-9]{1,15})?$"
)
_LEASE_ID = re.compile(LEASE_ID_PATTERN)


class Keys:
    """Every runtime key name, built from the store's prefix. One place, per STYLE."""

    def __init__(self, redis: RedisStore) -> None:
        self._redis = redis

    @staticmethod
    def tag(platform: str) -> str:
        return "{rt." + platform + "}"

    def leases(self, platform: str, account_id: str) -> str:
        return self._redis.key("rt", self.tag(platform), "lease", account_id)

    def state(self, platform: str, account_id: str) -> str:
        return self._redis.key("rt", self.tag(platform), "state", account_id)

    def session(self, platform: str, group: str, session_hash: str) -> str:
        return self._redis.key("rt", self.tag(platform), "sess", group, session_hash)

    def response(self, platform: str, group: str, response_id: str) -> str:
        return self._redis.key("rt", self.tag(platform), "resp", group, response_id)

    def released_channel(self, platform: str) -> str:
        """Pub/sub channel of ``platform``'s releases: ``"<account_id> <origin>"`` each."""
        return self._redis.key("rt", "released", platform)

    def readings_channel(self, platform: str) -> str:
        """Pub/sub channel of readings written outside releases: ``"<account_id> <origin>"``."""
        return self._redis.key("rt", "readings", platform)


class LeaseRef(msgspec.Struct, frozen=True):
    """What a lease id encodes; ``granted_ms`` is None for ids issued before it was added."""

    platform: Platform
    group: str
    account_id: str
    lease_id: str
    granted_ms: int | None = None


def new_lease_id(platform: str, group: str, account_id: str) -> str:
    return _SEP.join((platform, group, account_id, secrets.token_hex(8)))


def parse_lease_id(lease_id: str) -> LeaseRef:
    """Decode a lease id; ValidationFailed (422) on one this service cannot have issued."""
    if len(lease_id) > 200 or _LEASE_ID.fullmatch(lease_id) is None:
        raise ValidationFailed.one("lease_id", "not a lease id issued by this service")
    platform, group, account_id, tail = lease_id.split(_SEP)
    _random, _, granted = tail.partition("-")
    return LeaseRef(
        Platform(platform), group, account_id, lease_id, int(granted) if granted else None
    )


class RuntimeState(AccountRuntime, frozen=True, kw_only=True):
    """One account's shared runtime state as last read (times in epoch seconds).

    Extends the rules' :class:`~accounts.rules.AccountRuntime` (deadlines, quota
    readings, last use) with what scoring needs, so the filter takes it as is.

    Redis keeps every time in its own clock (``TIME``); a state read from it is
    moved onto this instance's clock by the offset measured with the very reply
    that carried it (:func:`parse_state`'s ``shift_s``), so the filter compares
    deadlines with its own ``now`` and still agrees with Redis to the millisecond,
    however far this instance's clock is off.
    """

    leases: int = 0
    error_rate: float = 0.0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    # What is left of the tightest upstream rate limit (0..1, OpenAI x-ratelimit-*),
    # and until when that reading holds.
    ratelimit_room: float | None = None
    ratelimit_room_until: float | None = None


EMPTY = RuntimeState()
_window_decoder = msgspec.json.Decoder(QuotaWindow)


def parse_state(leases: int, flat: Sequence[str], shift_s: float = 0.0) -> RuntimeState:
    """A RuntimeState from a Redis HGETALL reply (flat field/value list).

    ``shift_s`` (this instance's clock minus Redis's, at the reply) moves every
    time onto this instance's clock.
    """
    h = dict(zip(flat[::2], flat[1::2], strict=True))
    windows = []
    for field in F.WINDOW_FIELDS:
        raw = h.get(field)
        if raw:
            # A reading we cannot read is no reading: never a crash on the hot path.
            with contextlib.suppress(msgspec.DecodeError):
                windows.append(_shift_reading(_window_decoder.decode(raw), shift_s))
    return RuntimeState(
        leases=int(leases),
        rate_limited_until=_at(h.get(F.RATE_LIMITED_UNTIL), shift_s),
        overloaded_until=_at(h.get(F.OVERLOADED_UNTIL), shift_s),
        unschedulable_until=_at(h.get(F.UNSCHEDULABLE_UNTIL), shift_s),
        unschedulable_reason=h.get(F.UNSCHEDULABLE_REASON) or None,
        last_used_at=_at(h.get(F.LAST_USED), shift_s),
        error_rate=float(h.get(F.EWMA_ERROR) or 0.0),
        latency_ms=_float(h.get(F.EWMA_LATENCY)),
        ttft_ms=_float(h.get(F.EWMA_TTFT)),
        ratelimit_room=_float(h.get(F.RATE_LIMIT_ROOM)),
        ratelimit_room_until=_at(h.get(F.RATE_LIMIT_ROOM_UNTIL), shift_s),
        windows=tuple(windows),
    )


def _at(raw: str | None, shift_s: float) -> float | None:
    seconds = F.ms_to_s(raw)
    return None if seconds is None else seconds + shift_s


def _shift_reading(reading: QuotaWindow, shift_s: float) -> QuotaWindow:
    if not shift_s:
        return reading
    reset_at = None if reading.reset_at is None else reading.reset_at + shift_s
    return msgspec.structs.replace(
        reading, observed_at=reading.observed_at + shift_s, reset_at=reset_at
    )


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:  # a value we cannot read is no value: never a crash on the hot path
        return None


def _relative(reading: QuotaWindow, now: float) -> QuotaWindow:
    """The reading with its times relative to ``now`` (the scripts add Redis TIME)."""
    reset_at = None if reading.reset_at is None else reading.reset_at - now
    return msgspec.structs.replace(
        reading, observed_at=reading.observed_at - now, reset_at=reset_at
    )


def encode_reading(reading: QuotaWindow) -> tuple[str, str]:
    """The state-hash field and value storing one quota reading."""
    return F.window_field(reading.window), msgspec.json.encode(reading).decode()


class Effects(msgspec.Struct, frozen=True, kw_only=True):
    """What a reported outcome does to the account's state, in durations.

    ``release.lua`` turns each into a time by adding Redis ``TIME``. Readings
    are in this instance's clock; they travel relative to its now and the script
    puts them on Redis ``TIME`` too.
    """

    rate_limited_s: float | None = None
    overloaded_s: float | None = None
    # What is left of a rate limit (OpenAI x-ratelimit-*: remaining / limit), until when.
    headroom: float | None = None
    headroom_s: float | None = None
    unschedulable_s: float | None = None
    unschedulable_reason: str = ""
    readings: tuple[QuotaWindow, ...] = ()
    # EWMA samples: 1/0 for a failed/successful request (None: not a sample), latencies.
    error: bool | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    last_used: bool = True


def _ms_arg(seconds: float | None) -> str:
    return "" if seconds is None else str(F.s_to_ms(seconds))


def _sample(value: float | None) -> str:
    return "" if value is None else repr(value)


class Released(msgspec.Struct, frozen=True):
    """What a release script did: ``live`` False when the lease was already gone."""

    live: bool
    state: RuntimeState


class Acquired(msgspec.Struct, frozen=True):
    """A granted lease; ``bound`` is the session's binding after the call (None: none)."""

    lease_id: str
    expires_at: float
    state: RuntimeState
    bound: str | None = None


class RenewReply(msgspec.Struct, frozen=True):
    """What renew.lua did (epoch seconds, Redis server time)."""

    expires_at: float
    now: float
    previous: float


class Refused(msgspec.Struct, frozen=True):
    """``kind``: full | rate_limited | overloaded | temp_unschedulable | rebound."""

    kind: str
    leases: int = 0
    until: float | None = None
    bound_to: str | None = None


_DEADLINE_KIND = {1: "rate_limited", 2: "overloaded", 3: "temp_unschedulable"}


class RuntimeStore:
    """The Redis side: scripts and plain commands on runtime keys. Counts its round trips.

    Every Redis failure leaves as :class:`~accounts.errors.StoreUnavailable` (503).
    ``clock`` is this instance's wall clock (epoch s; tests inject a skewed one):
    states read are moved onto it (see :class:`RuntimeState`).
    """

    def __init__(self, redis: RedisStore, *, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.keys = Keys(redis)
        self.clock = clock
        self.round_trips = 0
        # Tags this store's release messages: its own Reporter already applied them.
        self.origin = secrets.token_hex(6)

    async def _call(self, script: Path, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with translated():
            return await self.redis.script(script)(keys=keys, args=args)

    def _shift(self, redis_now_ms: Any) -> float:
        """This instance's clock minus Redis's, from a reply's ``TIME`` (ms)."""
        return self.clock() - int(redis_now_ms) / 1000.0

    async def acquire(
        self,
        platform: str,
        group: str,
        account_id: str,
        *,
        concurrency: int,
        ttl_s: float,
        session_hash: str | None = None,
        bind_mode: int = 0,
        bind_ttl_s: float = 0.0,
    ) -> Acquired | Refused:
        """One EVALSHA: prune, check deadlines and a free slot, add the lease, maybe bind."""
        lease_id = new_lease_id(platform, group, account_id)
        k = self.keys
        binding = k.session(platform, group, session_hash or "-")
        self.round_trips += 1
        reply = await self._call(
            ACQUIRE_LUA,
            [k.leases(platform, account_id), k.state(platform, account_id), binding],
            [
                lease_id,
                concurrency,
                F.s_to_ms(ttl_s),
                account_id,
                str(bind_mode if session_hash else 0),
                max(1, F.s_to_ms(bind_ttl_s)),
            ],
        )
        code = int(reply[0])
        if code == 1:
            bound = reply[5] if len(reply) > 5 and reply[5] else None
            state = parse_state(int(reply[1]), reply[4], self._shift(reply[3]))
            # The script appends the grant time to the id (older scripts did not). The
            # lease expiry stays in Redis time: the gateway renews against it.
            issued = str(reply[6]) if len(reply) > 6 else lease_id
            return Acquired(issued, int(reply[2]) / 1000.0, state, bound)
        if code == -1:
            until = int(reply[2]) / 1000.0 + self._shift(reply[3])
            return Refused(_DEADLINE_KIND[int(reply[1])], until=until)
        if code == -2:
            return Refused("full", leases=int(reply[1]))
        return Refused("rebound", bound_to=str(reply[1]))

    async def release(
        self,
        ref: LeaseRef,
        effects: Effects,
        *,
        alpha: float,
        response_key: str | None = None,
        response_ttl_s: float = 0.0,
        when_gone: bool = False,
    ) -> Released | None:
        """Remove the lease and apply ``effects`` atomically; the account's state after it.

        A lease that is gone (expired, released, never granted) changes nothing and
        answers None, unless ``when_gone``: then the account-level effects apply all
        the same (``live`` False) and only the lease bookkeeping is skipped.
        """
        k = self.keys
        readings: list[str] = []
        now = self.clock()
        for reading in effects.readings:
            readings.extend(encode_reading(_relative(reading, now)))
        error = None if effects.error is None else (1.0 if effects.error else 0.0)
        self.round_trips += 1
        done: Any = await self._call(
            RELEASE_LUA,
            [
                k.leases(ref.platform, ref.account_id),
                k.state(ref.platform, ref.account_id),
                response_key or k.response(ref.platform, ref.group, "-"),
            ],
            [
                ref.lease_id,
                ref.account_id,
                k.released_channel(ref.platform),
                alpha,
                _sample(error),
                _sample(effects.latency_ms),
                _sample(effects.ttft_ms),
                F.s_to_ms(response_ttl_s) if response_key else 0,
                self.origin,
                "1" if when_gone else "0",
                _ms_arg(effects.rate_limited_s),
                _ms_arg(effects.overloaded_s),
                _ms_arg(effects.unschedulable_s),
                effects.unschedulable_reason,
                "1" if effects.last_used else "0",
                "" if effects.headroom is None else repr(effects.headroom),
                _ms_arg(effects.headroom_s),
                *readings,
            ],
        )
        if not isinstance(done, list | tuple):
            return None
        shift = self._shift(done[3])
        return Released(bool(int(done[0])), parse_state(int(done[1]), done[2], shift))

    async def renew(
        self, ref: LeaseRef, ttl_s: float, *, max_lifetime_s: float | None = None
    ) -> RenewReply | None:
        """Extend to now + ttl_s, never past grant + ``max_lifetime_s``, never shorter.

        None if the lease is gone or expired.
        """
        end_ms = 0
        if max_lifetime_s is not None and ref.granted_ms is not None:
            end_ms = ref.granted_ms + int(max_lifetime_s * 1000)
        self.round_trips += 1
        reply = await self._call(
            RENEW_LUA,
            [self.keys.leases(ref.platform, ref.account_id)],
            [ref.lease_id, F.s_to_ms(ttl_s), end_ms],
        )
        new, now, old = (int(x) for x in reply)
        if not new:
            return None
        return RenewReply(new / 1000.0, now / 1000.0, old / 1000.0)

    async def read_many(self, platform: str, account_ids: Sequence[str]) -> dict[str, RuntimeState]:
        """Runtime state of many accounts of one platform: one script call."""
        if not account_ids:
            return {}
        k = self.keys
        keys = [x for a in account_ids for x in (k.leases(platform, a), k.state(platform, a))]
        self.round_trips += 1
        reply = await self._call(READ_LUA, keys, [])
        shift = self._shift(reply[0])
        return {
            a: parse_state(int(item[0]), item[1], shift)
            for a, item in zip(account_ids, reply[1:], strict=True)
        }

    async def bindings(self, keys: Sequence[str]) -> list[str | None]:
        self.round_trips += 1
        with translated():
            return list(await self.redis.client.mget(keys))

    async def unbind(self, key: str, account_id: str) -> bool:
        """Delete a sticky binding only if it still names ``account_id``; True if deleted.

        Compare-and-delete in one script: another instance may have re-bound the
        session since this one read the binding (its cache is up to 2 s old).
        """
        self.round_trips += 1
        return bool(await self._call(UNBIND_LUA, [key], [account_id]))

    async def write_readings(
        self,
        platform: str,
        account_id: str,
        windows: Sequence[QuotaWindow],
        *,
        now: float | None = None,
    ) -> RuntimeState | None:
        """Store quota readings the way a release stores those of its usage headers.

        The same fields (``q:5h`` / ``q:7d``, the reading as JSON) in the same hash,
        so the rules and every instance read them alike. ``now`` is this instance's
        clock when the readings were taken (default: now): their times are sent
        relative to it and the script puts them on Redis TIME, as a release does.
        Every other instance is told on :meth:`Keys.readings_channel` (its release
        watcher re-reads the account), so an account the readings unpause is
        schedulable everywhere at once. Returns the account's state after the write
        (None when there was nothing to write). One script call.
        """
        if not windows:
            return None
        at = self.clock() if now is None else now
        flat = [x for w in windows for x in encode_reading(_relative(w, at))]
        self.round_trips += 1
        reply = await self._call(
            READINGS_LUA,
            [self.keys.leases(platform, account_id), self.keys.state(platform, account_id)],
            [self.keys.readings_channel(platform), account_id, self.origin, *flat],
        )
        return parse_state(int(reply[0]), reply[1], self._shift(reply[2]))

    async def apply(
        self, platform: str, account_id: str, effects: Effects, *, alpha: float
    ) -> RuntimeState:
        """Apply account-level effects without a lease (a 401 the usage prober met, say).

        The release script with a lease id no lease has: nothing of the lease
        bookkeeping happens, every deadline is Redis TIME + its duration.
        """
        ref = LeaseRef(Platform(platform), "-", account_id, "-")
        released = await self.release(ref, effects, alpha=alpha, when_gone=True)
        assert released is not None  # when_gone: the script always applies and answers
        return released.state

    async def set_state(self, platform: str, account_id: str, fields: dict[str, str]) -> None:
        """HSET fields on one account's state hash as they are (tests; another writer's write)."""
        self.round_trips += 1
        with translated():
            await self.redis.client.hset(self.keys.state(platform, account_id), fields)
