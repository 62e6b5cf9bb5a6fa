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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from accounts.errors import ValidationFailed
from accounts.model import Platform, QuotaWindow, Window
from accounts.rules import AccountRuntime
from snapshot.redis import RedisStore

_HERE = Path(__file__).resolve().parent
ACQUIRE_LUA = _HERE / "acquire.lua"
RELEASE_LUA = _HERE / "release.lua"
RENEW_LUA = _HERE / "renew.lua"
READ_LUA = _HERE / "runtime_read.lua"
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
_WINDOW_FIELDS = {"q:" + w.value: w for w in Window}
_window_decoder = msgspec.json.Decoder(QuotaWindow)


def _ms(value: str | None) -> float | None:
    return float(value) / 1000.0 if value else None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def parse_state(leases: int, flat: Sequence[str]) -> RuntimeState:
    """A RuntimeState from a Redis HGETALL reply (flat field/value list)."""
    h = dict(zip(flat[::2], flat[1::2], strict=True))
    windows = []
    for field in _WINDOW_FIELDS:
        raw = h.get(field)
        if raw:
            # A reading we cannot read is no reading: never a crash on the hot path.
            with contextlib.suppress(msgspec.DecodeError):
                windows.append(_window_decoder.decode(raw))
    return RuntimeState(
        leases=int(leases),
        rate_limited_until=_ms(h.get("rl_until")),
        overloaded_until=_ms(h.get("ol_until")),
        unschedulable_until=_ms(h.get("tu_until")),
        unschedulable_reason=h.get("tu_reason") or None,
        last_used_at=_ms(h.get("last_used")),
        error_rate=float(h.get("ewma_err") or 0.0),
        latency_ms=float(h["ewma_lat"]) if h.get("ewma_lat") else None,
        ttft_ms=float(h["ewma_ttft"]) if h.get("ewma_ttft") else None,
        ratelimit_room=_float(h.get("rl_room")),
        ratelimit_room_until=_ms(h.get("rl_room_until")),
        windows=tuple(windows),
    )


def window_field(window: QuotaWindow) -> tuple[str, str]:
    """The state-hash field and value storing one quota reading."""
    return "q:" + window.window.value, msgspec.json.encode(window).decode()


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
            # The script appends the grant time to the id (older scripts did not).
            issued = str(reply[6]) if len(reply) > 6 else lease_id
            return Acquired(issued, int(reply[2]) / 1000.0, state, bound)
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
        reply = await self.redis.script(RENEW_LUA)(
            keys=[self.keys.leases(ref.platform, ref.account_id)],
            args=[ref.lease_id, int(ttl_s * 1000), end_ms],
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

    async def write_readings(
        self, platform: str, account_id: str, windows: Sequence[QuotaWindow]
    ) -> RuntimeState | None:
        """Store quota readings the way a release stores those of its usage headers.

        The same fields (:func:`window_field`: ``q:5h`` / ``q:7d``, the reading as
        JSON) in the same hash, so the rules and every instance read them alike;
        the freshness stamp is the readings' own ``observed_at``, which the caller
        takes from the clock the release path uses (``time.time()`` when the
        answer arrived). Every other instance is told on
        :meth:`Keys.readings_channel` (its release watcher re-reads the account), so
        an account the readings unpause is schedulable everywhere at once. Returns
        the account's state after the write (None when there was nothing to
        write). One script call.
        """
        if not windows:
            return None
        flat = [x for w in windows for x in window_field(w)]
        self.round_trips += 1
        reply = await self.redis.script(READINGS_LUA)(
            keys=[self.keys.leases(platform, account_id), self.keys.state(platform, account_id)],
            args=[self.keys.readings_channel(platform), account_id, self.origin, *flat],
        )
        return parse_state(int(reply[0]), reply[1])

    async def set_state(self, platform: str, account_id: str, fields: dict[str, str]) -> None:
        """HSET fields on one account's state hash (the account-error path outside a release)."""
        self.round_trips += 1
        await self.redis.client.hset(self.keys.state(platform, account_id), fields)
