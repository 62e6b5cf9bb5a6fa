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

Lease ids are self-describing (``platform~group~account~random``), so releasing
or renewing needs no lookup key and costs one script call.
"""

from __future__ import annotations

import contextlib
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

_SEP = "~"  # not allowed in group names, platforms, uuids or hex: splits lease ids safely


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


class LeaseRef(msgspec.Struct, frozen=True):
    """What a lease id encodes."""

    platform: Platform
    group: str
    account_id: str
    lease_id: str


def new_lease_id(platform: str, group: str, account_id: str) -> str:
    return _SEP.join((platform, group, account_id, secrets.token_hex(8)))


def parse_lease_id(lease_id: str) -> LeaseRef:
    """Decode a lease id; ValidationFailed (422) on a malformed one."""
    parts = lease_id.split(_SEP)
    if len(parts) != 4 or not all(parts) or len(lease_id) > 200:
        raise ValidationFailed.one("lease_id", "not a lease id issued by this service")
    try:
        platform = Platform(parts[0])
    except ValueError:
        raise ValidationFailed.one("lease_id", "not a lease id issued by this service") from None
    return LeaseRef(platform, parts[1], parts[2], lease_id)


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
    return float(raw) if raw else None


def encode_reading(reading: QuotaWindow) -> tuple[str, str]:
    """The state-hash field and value storing one quota reading."""
    return F.window_field(reading.window), msgspec.json.encode(reading).decode()


class Effects(msgspec.Struct, frozen=True, kw_only=True):
    """What a reported outcome does to the account's state, in durations.

    ``release.lua`` turns each into a time by adding Redis ``TIME``; readings
    carry ``observed_at`` / ``reset_at`` relative to the report (0 = now).
    """

    rate_limited_s: float | None = None
    overloaded_s: float | None = None
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
            # The lease expiry stays in Redis time: the gateway renews against it.
            return Acquired(lease_id, int(reply[2]) / 1000.0, state, bound)
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
        for reading in effects.readings:
            readings.extend(encode_reading(reading))
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
                *readings,
            ],
        )
        if not isinstance(done, list | tuple):
            return None
        shift = self._shift(done[3])
        return Released(bool(int(done[0])), parse_state(int(done[1]), done[2], shift))

    async def renew(self, ref: LeaseRef, ttl_s: float) -> float | None:
        """New expiry (epoch s, server time) or None if the lease is gone or expired."""
        self.round_trips += 1
        reply = await self._call(
            RENEW_LUA,
            [self.keys.leases(ref.platform, ref.account_id)],
            [ref.lease_id, F.s_to_ms(ttl_s)],
        )
        return int(reply) / 1000.0 if int(reply) else None

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
