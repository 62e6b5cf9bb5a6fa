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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from accounts.errors import ValidationFailed
from accounts.model import Platform, QuotaWindow
from accounts.rules import AccountRuntime
from snapshot.redis import RedisStore

from . import fields as F

_HERE = Path(__file__).resolve().parent
ACQUIRE_LUA = _HERE / "acquire.lua"
RELEASE_LUA = _HERE / "release.lua"
RENEW_LUA = _HERE / "renew.lua"
READ_LUA = _HERE / "runtime_read.lua"

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
    """

    leases: int = 0
    error_rate: float = 0.0
    latency_ms: float | None = None
    ttft_ms: float | None = None


EMPTY = RuntimeState()
_window_decoder = msgspec.json.Decoder(QuotaWindow)


def parse_state(leases: int, flat: Sequence[str]) -> RuntimeState:
    """A RuntimeState from a Redis HGETALL reply (flat field/value list)."""
    h = dict(zip(flat[::2], flat[1::2], strict=True))
    windows = []
    for field in F.WINDOW_FIELDS:
        raw = h.get(field)
        if raw:
            # A reading we cannot read is no reading: never a crash on the hot path.
            with contextlib.suppress(msgspec.DecodeError):
                windows.append(_window_decoder.decode(raw))
    return RuntimeState(
        leases=int(leases),
        rate_limited_until=F.ms_to_s(h.get(F.RATE_LIMITED_UNTIL)),
        overloaded_until=F.ms_to_s(h.get(F.OVERLOADED_UNTIL)),
        unschedulable_until=F.ms_to_s(h.get(F.UNSCHEDULABLE_UNTIL)),
        unschedulable_reason=h.get(F.UNSCHEDULABLE_REASON) or None,
        last_used_at=F.ms_to_s(h.get(F.LAST_USED)),
        error_rate=float(h.get(F.EWMA_ERROR) or 0.0),
        latency_ms=_float(h.get(F.EWMA_LATENCY)),
        ttft_ms=_float(h.get(F.EWMA_TTFT)),
        windows=tuple(windows),
    )


def _float(raw: str | None) -> float | None:
    return float(raw) if raw else None


def encode_reading(reading: QuotaWindow) -> tuple[str, str]:
    """The state-hash field and value storing one quota reading."""
    return F.window_field(reading.window), msgspec.json.encode(reading).decode()


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
    """The Redis side: scripts and plain commands on runtime keys. Counts its round trips."""

    def __init__(self, redis: RedisStore) -> None:
        self.redis = redis
        self.keys = Keys(redis)
        self.round_trips = 0
        # Tags this store's release messages: its own Reporter already applied them.
        self.origin = secrets.token_hex(6)

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
        reply = await self.redis.script(ACQUIRE_LUA)(
            keys=[k.leases(platform, account_id), k.state(platform, account_id), binding],
            args=[
                lease_id,
                concurrency,
                int(ttl_s * 1000),
                account_id,
                str(bind_mode if session_hash else 0),
                max(1, int(bind_ttl_s * 1000)),
            ],
        )
        code = int(reply[0])
        if code == 1:
            bound = reply[5] if len(reply) > 5 and reply[5] else None
            state = parse_state(int(reply[1]), reply[4])
            return Acquired(lease_id, int(reply[2]) / 1000.0, state, bound)
        if code == -1:
            return Refused(_DEADLINE_KIND[int(reply[1])], until=int(reply[2]) / 1000.0)
        if code == -2:
            return Refused("full", leases=int(reply[1]))
        return Refused("rebound", bound_to=str(reply[1]))

    async def release(
        self,
        ref: LeaseRef,
        *,
        alpha: float,
        fields: dict[str, str],
        samples: Sequence[str],
        response_key: str | None,
        response_ttl_s: float,
    ) -> RuntimeState | None:
        """Remove the lease and apply the outcome atomically; the account's state after it.

        None (nothing changed) when the lease was unknown.
        """
        k = self.keys
        self.round_trips += 1
        flat: list[str] = [x for kv in fields.items() for x in kv]
        done: Any = await self.redis.script(RELEASE_LUA)(
            keys=[
                k.leases(ref.platform, ref.account_id),
                k.state(ref.platform, ref.account_id),
                response_key or k.response(ref.platform, ref.group, "-"),
            ],
            args=[
                ref.lease_id,
                ref.account_id,
                k.released_channel(ref.platform),
                alpha,
                *samples,
                int(response_ttl_s * 1000) if response_key else 0,
                self.origin,
                *flat,
            ],
        )
        if not isinstance(done, list | tuple):
            return None
        return parse_state(int(done[1]), done[2])

    async def renew(self, ref: LeaseRef, ttl_s: float) -> float | None:
        """New expiry (epoch s, server time) or None if the lease is gone or expired."""
        self.round_trips += 1
        reply = await self.redis.script(RENEW_LUA)(
            keys=[self.keys.leases(ref.platform, ref.account_id)],
            args=[ref.lease_id, int(ttl_s * 1000)],
        )
        return int(reply) / 1000.0 if int(reply) else None

    async def read_many(self, platform: str, account_ids: Sequence[str]) -> dict[str, RuntimeState]:
        """Runtime state of many accounts of one platform: one script call."""
        if not account_ids:
            return {}
        k = self.keys
        keys = [x for a in account_ids for x in (k.leases(platform, a), k.state(platform, a))]
        self.round_trips += 1
        reply = await self.redis.script(READ_LUA)(keys=keys, args=[])
        return {
            a: parse_state(int(item[0]), item[1])
            for a, item in zip(account_ids, reply[1:], strict=True)
        }

    async def bindings(self, keys: Sequence[str]) -> list[str | None]:
        self.round_trips += 1
        return list(await self.redis.client.mget(keys))

    async def delete(self, *keys: str) -> None:
        self.round_trips += 1
        await self.redis.client.delete(list(keys))
