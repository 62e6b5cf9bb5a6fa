"""A separate process that publishes one bucket over and over (schedule race tests).

``python -m tests.snapshot.schedule_worker URL PREFIX GROUP ROUNDS SIZE TTLS GRACE_S``

TTLS is a comma-separated list of lock TTLs (seconds) used in turn.

Each round publishes SIZE accounts that all carry the same tag in ``name``
(``<pid>-<round>``), so a reader can tell a mixed read from a whole one. BUSY
rounds are retried until the round is published (activated, or lost a fair
race: stale / fenced). Prints one JSON line of outcome counts at the end.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import trio

from accounts.model import Account, Kind, Platform
from snapshot.keys import Bucket
from snapshot.redis import RedisConfig, open_redis
from snapshot.schedule import PublishOutcome, set_snapshot


def tagged_accounts(group: str, tag: str, size: int) -> list[Account]:
    return [
        Account(
            id=f"acct-{i:05d}",
            name=tag,
            platform=Platform.OPENAI,
            kind=Kind.APIKEY,
            groups=(group,),
            priority=i,
            credentials_enc="gAAAA-ciphertext",
        )
        for i in range(size)
    ]


async def publish_rounds(
    url: str, prefix: str, group: str, rounds: int, size: int, ttls: list[float], grace_s: float
) -> Counter[str]:
    bucket = Bucket(group, Platform.OPENAI)
    counts: Counter[str] = Counter()
    async with open_redis(RedisConfig(url=url, key_prefix=prefix)) as store:
        for n in range(rounds):
            accounts = tagged_accounts(group, f"{os.getpid()}-{n}", size)
            while True:
                result = await set_snapshot(
                    store, bucket, accounts, grace_s=grace_s, lock_ttl_s=ttls[n % len(ttls)]
                )
                counts[result.outcome.value] += 1
                if result.outcome is not PublishOutcome.BUSY:
                    break
                await trio.sleep(0.001)
    return counts


def main() -> None:
    url, prefix, group, rounds, size, ttl, grace = sys.argv[1:8]
    counts = trio.run(
        publish_rounds,
        url,
        prefix,
        group,
        int(rounds),
        int(size),
        [float(t) for t in ttl.split(",")],
        float(grace),
    )
    print(json.dumps(dict(counts)), flush=True)


if __name__ == "__main__":
    main()
