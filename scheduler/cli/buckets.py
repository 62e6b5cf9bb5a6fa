"""``stationmaster buckets list|rebuild [BUCKET]`` (no daemon needed).

``list`` prints, as JSON lines, every bucket PostgreSQL knows with its active
Redis version, size and age. ``rebuild`` publishes one bucket
(``group/platform``) or, without an argument, every bucket, straight from
PostgreSQL under each bucket's rebuild lock; running daemons pick the new
versions up by pub/sub (or their periodic check). The old version's keys
expire after the grace period (``--grace-s``, default 60 s).

Exit codes: 0 done, 1 a store unreachable or a bucket busy/stale, 2 bad bucket name.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import trio

from accounts.crypto import Cipher
from accounts.db import open_database, open_loop
from accounts.errors import ValidationFailed
from accounts.repository import AccountRepository
from snapshot.keys import Bucket
from snapshot.redis import open_redis
from snapshot.schedule import PublishOutcome, describe, set_snapshot
from snapshot.source import RepositorySource

from ..core.config import Config
from .registry import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command


def _add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="buckets with active version, size and age")
    rebuild = sub.add_parser("rebuild", help="publish one bucket (group/platform) or all")
    rebuild.add_argument("bucket", nargs="?", default=None, metavar="GROUP/PLATFORM")
    rebuild.add_argument("--grace-s", type=float, default=60.0, help="old version's grace period")


async def _main(args: argparse.Namespace, config: Config) -> int:
    target = Bucket.parse(args.bucket) if getattr(args, "bucket", None) else None
    async with open_loop(), open_database(config.database) as db:
        source = RepositorySource(AccountRepository(db, Cipher(config.crypto)))
        async with open_redis(config.redis) as redis:
            buckets = [target] if target is not None else await source.buckets()
            if args.action == "list":
                now = time.time()
                for info in await describe(redis, buckets):
                    age = None if info.built_at is None else round(now - info.built_at, 3)
                    _print(
                        bucket=str(info.bucket),
                        active_version=info.active_version,
                        active_epoch=info.active.epoch,
                        size=info.size,
                        age_s=age,
                    )
                return EXIT_OK
            code = EXIT_OK
            for bucket in buckets:

                async def load(b: Bucket = bucket) -> Any:
                    return await source.bucket_accounts(b)

                r = await set_snapshot(redis, bucket, load, grace_s=args.grace_s)
                _print(
                    bucket=str(bucket),
                    outcome=r.outcome.value,
                    version=r.active.number,
                    epoch=r.active.epoch,
                    size=r.size,
                    seconds=round(r.seconds, 4),
                )
                if r.outcome is not PublishOutcome.ACTIVATED:
                    code = EXIT_FAILURE
            return code


def _print(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


@command("buckets", "list schedule buckets or rebuild their Redis snapshots", _add_arguments)
def _buckets(args: argparse.Namespace, config: Config) -> int:
    try:
        result: int = trio.run(_main, args, config)
    except ValidationFailed as exc:
        print(f"stationmaster: {exc.message}")
        return EXIT_USAGE
    return result
