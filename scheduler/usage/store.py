"""The prober's shared state in Redis: per-account probe locks and records, probe rates.

Every key carries the hash tag ``{usage}`` so the claim script can check the
account's lock and record and both rate cells atomically (on a Redis Cluster
the prober's keys live on one shard; probes are a few per second at most).

* ``lock:<account>``: who is probing the account now (owner token, short TTL);
* ``rec:<account>``: last probe time, consecutive failures, not-before, last
  result (Redis server time), expiring when an account is no longer probed;
* ``rate:*`` and ``rate:<platform>``: GCRA cells of the global and per-platform
  probe rates, shared by every instance.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from snapshot.redis import RedisStore
from snapshot.settings import UsageSettings

from .rules import ProbeRecord

_HERE = Path(__file__).resolve().parent
CLAIM_LUA = _HERE / "claim.lua"
FINISH_LUA = _HERE / "finish.lua"
RECORDS_LUA = _HERE / "records.lua"
_TAG = "{usage}"
# The probe record hash's fields, declared once: claim.lua, finish.lua and records.lua
# use exactly these (tests/scheduler/selection/test_fields.py checks every script).
RECORD_FIELDS = ("last_us", "not_before_us", "fails", "result")
# A record outlives every interval the settings allow (30 days) and then goes.
RECORD_TTL_MS = 35 * 86400 * 1000
# One records script call at most this many keys (a bigger batch is split).
RECORDS_CHUNK = 500


class Claimed(msgspec.Struct, frozen=True):
    """The lock is ours (``token``); ``fails`` from the record; ``now`` in Redis time (s)."""

    token: str
    now: float
    fails: int


class Locked(msgspec.Struct, frozen=True):
    """Another probe holds the account; its lock lapses within ``wait_s``."""

    wait_s: float


class NotDue(msgspec.Struct, frozen=True):
    """The shared record says not before ``not_before`` (epoch s, Redis time)."""

    not_before: float


class OverRate(msgspec.Struct, frozen=True):
    """A rate is used up; nothing was taken; try again in ``wait_s``."""

    wait_s: float


Claim = Claimed | Locked | NotDue | OverRate


def _interval_us(rate_per_s: float) -> int:
    # Rounded up: a rounded interval may make probes slower than the rate, never faster.
    return max(1, math.ceil(1_000_000 / rate_per_s))


class ProbeStore:
    """Claims and records of usage probes (one script call each)."""

    def __init__(self, redis: RedisStore) -> None:
        self.redis = redis

    def _key(self, *parts: str) -> str:
        return self.redis.key("usage", _TAG, *parts)

    def lock_key(self, account_id: str) -> str:
        return self._key("lock", account_id)

    def record_key(self, account_id: str) -> str:
        return self._key("rec", account_id)

    def rate_key(self, platform: str | None) -> str:
        return self._key("rate", platform or "*")

    async def claim(
        self, account_id: str, platform: str, cfg: UsageSettings, *, force: bool = False
    ) -> Claim:
        """Take the account's probe lock if it is due and both rates allow a probe now."""
        token = secrets.token_hex(8)
        reply: Any = await self.redis.script(CLAIM_LUA)(
            keys=[
                self.lock_key(account_id),
                self.record_key(account_id),
                self.rate_key(None),
                self.rate_key(platform),
            ],
            args=[
                token,
                max(1, math.ceil(cfg.lock_ttl_s * 1000)),
                int(cfg.min_interval_s * 1_000_000),
                _interval_us(cfg.global_rate_per_s),
                _interval_us(cfg.platform_rate(platform)),
                cfg.burst,
                "1" if force else "0",
            ],
        )
        code = int(reply[0])
        if code == 1:
            return Claimed(token, int(reply[1]) / 1e6, int(reply[2]))
        if code == -1:
            return Locked(max(int(reply[1]), 1) / 1000.0)
        if code == -2:
            return NotDue(int(reply[1]) / 1e6)
        return OverRate(int(reply[1]) / 1e6)

    async def finish(
        self, account_id: str, token: str, *, result: str, fails: int, delay_s: float
    ) -> bool:
        """Release our lock and record the outcome; False (nothing written) if the lock lapsed."""
        reply = await self.redis.script(FINISH_LUA)(
            keys=[self.lock_key(account_id), self.record_key(account_id)],
            args=[token, result, fails, max(0, math.ceil(delay_s * 1000)), RECORD_TTL_MS],
        )
        return bool(int(reply))

    async def records(self, account_ids: Sequence[str]) -> dict[str, ProbeRecord]:
        """The probe records of many accounts (absent ones: an empty record)."""
        out: dict[str, ProbeRecord] = {}
        for i in range(0, len(account_ids), RECORDS_CHUNK):
            ids = account_ids[i : i + RECORDS_CHUNK]
            reply: Any = await self.redis.script(RECORDS_LUA)(
                keys=[self.record_key(a) for a in ids], args=[]
            )
            for account_id, (last, not_before, fails, result) in zip(ids, reply, strict=True):
                out[account_id] = ProbeRecord(
                    last_at=int(last) / 1e6 if last else None,
                    not_before=int(not_before) / 1e6 if not_before else None,
                    fails=int(fails) if fails else 0,
                    result=result or None,
                )
        return out
