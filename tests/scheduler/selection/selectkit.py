"""Helpers for the selection tests: accounts published as a real Redis snapshot, a Selector."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from accounts.model import Account, Kind, Platform, QuotaWindow, Window
from scheduler.selection.select import Selector
from scheduler.selection.store import RuntimeStore, encode_reading
from snapshot.keys import Bucket
from snapshot.redis import RedisStore
from snapshot.schedule import set_snapshot
from snapshot.settings import Settings
from snapshot.view import ScheduleView

GROUP = "g1"
BUCKET = Bucket(GROUP, Platform.OPENAI)


def make_account(name: str, **kw: Any) -> Account:
    base: dict[str, Any] = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
        "name": name,
        "platform": Platform.OPENAI,
        "kind": Kind.APIKEY,
        "groups": (GROUP,),
        "concurrency": 1,
    }
    base.update(kw)
    return Account(**base)


class StaticSource:
    """The PostgreSQL fallback seam of ScheduleView, answering from a list (Redis is primary)."""

    def __init__(self, accounts: Sequence[Account]) -> None:
        self.accounts = list(accounts)

    async def bucket_accounts(self, bucket: Bucket) -> list[Account]:
        return [a for a in self.accounts if bucket.group in a.groups]

    async def buckets(self) -> list[Bucket]:
        return [BUCKET]


class SettingsBox:
    """A settings source whose value a test can change (the daemon's is SettingsSnapshot)."""

    def __init__(self, **sections: dict[str, Any]) -> None:
        self.value = msgspec.convert(sections, Settings)

    def __call__(self) -> Settings:
        return self.value

    def set(self, **sections: dict[str, Any]) -> None:
        self.value = msgspec.convert(sections, Settings)


async def publish(redis: RedisStore, accounts: Sequence[Account], bucket: Bucket = BUCKET) -> None:
    ordered = sorted(accounts, key=lambda a: (a.priority, a.id))
    await set_snapshot(redis, bucket, ordered, grace_s=5)


async def open_selector(
    redis: RedisStore,
    accounts: Sequence[Account],
    settings: SettingsBox,
    *,
    clock: Callable[[], float] = time.time,
) -> Selector:
    """Publish ``accounts`` as the bucket's snapshot and build a Selector reading it.

    ``clock`` is the instance's wall clock (a skewed one stands for a machine whose
    clock is off).
    """
    await publish(redis, accounts)
    view = ScheduleView(redis, StaticSource(accounts))
    await view.ensure(BUCKET)
    return Selector(redis, view, settings, clock=clock)


def reading(used: float, now: float, window: Window = Window.FIVE_HOURS) -> dict[str, str]:
    """State-hash fields for one fresh quota reading."""
    name, value = encode_reading(
        QuotaWindow(window=window, used_ratio=used, observed_at=now, reset_after_s=3600)
    )
    return {name: value}


async def set_state(
    runtime: RuntimeStore, platform: str, account_id: str, fields: dict[str, str]
) -> None:
    """HSET fields on one account's runtime state hash, as another instance's write would."""
    await runtime.redis.client.hset(runtime.keys.state(platform, account_id), fields)


def top_k(scored: Sequence[Any], k: int) -> list[Any]:
    """Reference ranking for the pool cache: the ``k`` best by score, ties in snapshot order."""
    ranked = sorted(range(len(scored)), key=lambda i: (-scored[i].score, i))
    return [scored[i] for i in ranked[: max(0, k)]]
