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

Which client: every command here goes through the lean hot-path client
(``RedisStore.lean``, :mod:`snapshot.lean_redis`): these are the calls each
select, release and renew pays for, and the runtime reads of the view refresher.
coredis (``RedisStore.client``) stays for what is off the request path: the
release/readings pub/sub (:mod:`.watcher`), snapshot builds, admin. The lean
client raises StoreUnavailable itself (connect, timeout, lost connection,
LOADING/BUSY, a Cluster's MOVED/ASK); any other error reply is a bug here
(a wrong script or key type) and leaves as ``RedisReplyError``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from accounts.model import Platform, QuotaWindow
from snapshot.redis import RedisStore

from . import fields as F
from .state import (
    DEADLINE_KIND,
    EMPTY,
    LEASE_ID_PATTERN,
    Acquired,
    Effects,
    LeaseRef,
    Refused,
    Released,
    RenewReply,
    RuntimeState,
    encode_reading,
    ms_arg,
    new_lease_id,
    parse_lease_id,
    parse_state,
    relative_reading,
    sample_arg,
)

_HERE = Path(__file__).resolve().parent
ACQUIRE_LUA = _HERE / "acquire.lua"
RELEASE_LUA = _HERE / "release.lua"
RENEW_LUA = _HERE / "renew.lua"
READ_LUA = _HERE / "runtime_read.lua"
UNBIND_LUA = _HERE / "unbind.lua"
READINGS_LUA = _HERE / "readings.lua"
_SCRIPTS = (ACQUIRE_LUA, RELEASE_LUA, RENEW_LUA, READ_LUA, UNBIND_LUA, READINGS_LUA)


class _Prefixes(dict[str, str]):
    """``platform -> "<prefix>rt:{rt.<platform>}:<kind>:"``, built on first use."""

    def __init__(self, redis: RedisStore, kind: str) -> None:
        super().__init__()
        self._redis = redis
        self._kind = kind

    def __missing__(self, platform: str) -> str:
        prefix = self[platform] = self._redis.key("rt", Keys.tag(platform), self._kind, "")
        return prefix


class Keys:
    """Every runtime key name, built from the store's prefix. One place, per STYLE."""

    def __init__(self, redis: RedisStore) -> None:
        self._redis = redis
        # Per platform, every key name up to the account id (or group): a select builds
        # three names, a release three, so one concatenation each instead of a join.
        self._lease = _Prefixes(redis, "lease")
        self._state = _Prefixes(redis, "state")
        self._sess = _Prefixes(redis, "sess")
        self._resp = _Prefixes(redis, "resp")

    @staticmethod
    def tag(platform: str) -> str:
        return "{rt." + platform + "}"

    def leases(self, platform: str, account_id: str) -> str:
        return self._lease[platform] + account_id

    def state(self, platform: str, account_id: str) -> str:
        return self._state[platform] + account_id

    def session(self, platform: str, group: str, session_hash: str) -> str:
        return self._sess[platform] + group + ":" + session_hash

    def response(self, platform: str, group: str, response_id: str) -> str:
        return self._resp[platform] + group + ":" + response_id

    def released_channel(self, platform: str) -> str:
        """Pub/sub channel of ``platform``'s releases: ``"<account_id> <origin>"`` each."""
        return self._redis.key("rt", "released", platform)

    def readings_channel(self, platform: str) -> str:
        """Pub/sub channel of readings written outside releases: ``"<account_id> <origin>"``."""
        return self._redis.key("rt", "readings", platform)


class RuntimeStore:
    """The Redis side: scripts and plain commands on runtime keys. Counts its round trips.

    Every Redis failure leaves as :class:`~accounts.errors.StoreUnavailable` (503).
    ``clock`` is this instance's wall clock (epoch s; tests inject a skewed one):
    states read are moved onto it (see :class:`RuntimeState`). Commands go through
    ``redis.lean`` (a benchmark swaps in a coredis stand-in there to compare).
    """

    def __init__(self, redis: RedisStore, *, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.hot = redis.lean
        self.keys = Keys(redis)
        self.clock = clock
        self.round_trips = 0
        # Tags this store's release messages: its own Reporter already applied them.
        self.origin = secrets.token_hex(6)
        # Resolved once: a path lookup per call would cost more than the packing.
        self._scripts = {path: self.hot.script(path) for path in _SCRIPTS}

    async def _call(self, script: Path, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self.hot.evalsha(self._scripts[script], keys, args)

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
        # The client directly (not through _call): one coroutine less on the hot path.
        reply = await self.hot.evalsha(
            self._scripts[ACQUIRE_LUA],
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
            return Refused(DEADLINE_KIND[int(reply[1])], until=until)
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
            readings.extend(encode_reading(relative_reading(reading, now)))
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
                sample_arg(error),
                sample_arg(effects.latency_ms),
                sample_arg(effects.ttft_ms),
                F.s_to_ms(response_ttl_s) if response_key else 0,
                self.origin,
                "1" if when_gone else "0",
                ms_arg(effects.rate_limited_s),
                ms_arg(effects.overloaded_s),
                ms_arg(effects.unschedulable_s),
                effects.unschedulable_reason,
                "1" if effects.last_used else "0",
                "" if effects.headroom is None else repr(effects.headroom),
                ms_arg(effects.headroom_s),
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
        return list(await self.hot.execute("MGET", *keys))

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
        flat = [x for w in windows for x in encode_reading(relative_reading(w, at))]
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
        if not fields:
            return
        self.round_trips += 1
        flat = [x for item in fields.items() for x in item]
        await self.hot.execute("HSET", self.keys.state(platform, account_id), *flat)


__all__ = [
    "EMPTY",
    "LEASE_ID_PATTERN",
    "Acquired",
    "Effects",
    "Keys",
    "LeaseRef",
    "Refused",
    "Released",
    "RenewReply",
    "RuntimeState",
    "RuntimeStore",
    "encode_reading",
    "new_lease_id",
    "parse_lease_id",
    "parse_state",
]
