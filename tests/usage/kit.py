"""Helpers for the prober tests: accounts in PostgreSQL, instances (selection + usage) in process.

An :class:`Instance` is what one daemon runs of selection and usage: its own
Redis client, schedule view, selector, reporter, release watcher and view
refresher, and (optionally) the usage probe service and prober actor, all
started in a nursery as the daemon's supervisor would. Several instances in
one test share the test's Redis prefix and database, nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from accounts.crypto import Cipher, CryptoConfig
from accounts.inputs import AccountCreate
from accounts.model import Account, Kind, Platform
from accounts.repository import AccountRepository
from scheduler.core.metrics import Metrics
from scheduler.selection.credentials import Credentials
from scheduler.selection.refresher import ViewRefresher
from scheduler.selection.reports import Reporter
from scheduler.selection.select import Selector
from scheduler.selection.watcher import ReleaseWatcher
from scheduler.usage import Prober, ProbeStore, UsageProbe
from snapshot.keys import Bucket
from snapshot.redis import RedisConfig, RedisStore, open_redis
from snapshot.schedule import set_snapshot
from snapshot.view import ScheduleView
from tests.scheduler.selection.selectkit import SettingsBox
from tests.support import CRYPTO_KEY

CIPHER = Cipher(CryptoConfig(keys=[CRYPTO_KEY]))
GROUP = "g1"
# Fast probe settings: tests run in seconds, not hours. Rates high unless a test lowers them.
FAST: dict[str, Any] = {
    "after_reset_s": 0.2,
    "paused_interval_s": 0.5,
    "near_interval_s": 0.5,
    "idle_interval_s": 3600.0,
    "min_interval_s": 0.2,
    "failure_backoff_s": 30.0,
    "failure_backoff_max_s": 600.0,
    "start_spread_s": 0.1,
    "jitter": 0.05,
    "timeout_s": 2.0,
    "lock_ttl_s": 5.0,
    "global_rate_per_s": 1000.0,
    "platform_rate_per_s": 1000.0,
    "burst": 20,
    "accounts_refresh_s": 1.0,
}


def settings(*, threshold: float | None = 0.9, **usage: Any) -> SettingsBox:
    quota = {} if threshold is None else {"default_5h_threshold": threshold}
    return SettingsBox(quota=quota, usage={**FAST, **usage})


def oauth(name: str, platform: str, base_url: str, token: str) -> AccountCreate:
    creds = {"access_token": token}
    if platform == "openai":
        creds["account_id"] = f"ws-{name}"
    return AccountCreate(
        name=name,
        platform=Platform(platform),
        kind=Kind.OAUTH,
        groups=[GROUP],
        base_url=base_url,
        credentials=creds,
    )


async def create(repo: AccountRepository, items: Sequence[AccountCreate]) -> list[Account]:
    ids = await repo.create_many(list(items))
    return [await repo.get(i) for i in ids]


async def publish(redis: RedisStore, accounts: Sequence[Account]) -> None:
    """Each platform's accounts as the active snapshot of its bucket (group GROUP)."""
    for platform in {a.platform for a in accounts}:
        mine = sorted((a for a in accounts if a.platform == platform), key=lambda a: a.id)
        await set_snapshot(redis, Bucket(GROUP, platform), mine, grace_s=5)


class _Source:
    """The view's PostgreSQL fallback seam, answering from the repository."""

    def __init__(self, repo: AccountRepository) -> None:
        self.repo = repo

    async def bucket_accounts(self, bucket: Bucket) -> list[Account]:
        return await self.repo.bucket_accounts(bucket.group, bucket.platform)

    async def buckets(self) -> list[Bucket]:
        return [Bucket(g, Platform(p)) for g, p in await self.repo.buckets()]


@dataclass
class Instance:
    redis: RedisStore
    selector: Selector
    reporter: Reporter
    watcher: ReleaseWatcher
    probe: UsageProbe
    prober: Prober
    metrics: Metrics


@contextlib.asynccontextmanager
async def open_instance(
    redis_url: str,
    prefix: str,
    box: SettingsBox,
    repo: AccountRepository,
    *,
    prober: bool = True,
) -> AsyncIterator[Instance]:
    """One instance's selection (and prober), running until the block ends."""
    async with open_redis(RedisConfig(url=redis_url, key_prefix=prefix)) as redis:
        selector = Selector(redis, ScheduleView(redis, _Source(repo)), box)
        metrics = Metrics()
        probe = UsageProbe(
            runtime=selector.runtime,
            store=ProbeStore(redis),
            accounts=repo,
            credentials=Credentials(CIPHER).get,
            settings=box,
            metrics=metrics,
            on_state=selector.on_release,
        )
        inst = Instance(
            redis,
            selector,
            Reporter(selector, box, repo),
            ReleaseWatcher(selector),
            probe,
            Prober(probe, repo),
            metrics,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(inst.watcher.run)
            await nursery.start(ViewRefresher(selector).run)
            if prober:
                await nursery.start(inst.prober.run)
            yield inst
            nursery.cancel_scope.cancel()


async def state_of(inst: Instance, account: Account) -> Any:
    return (await inst.selector.runtime.read_many(account.platform.value, [account.id]))[account.id]
