"""``stationmaster settings show|set KEY=VALUE …|reset KEY …`` (no daemon needed).

Keys are dotted (``quota.default_5h_threshold``, ``scoring.top_k``); values are
read as TOML scalars (``0.9``, ``true``, ``"text"``, ``[1, 2]``), else as text.
``reset`` takes a field or a whole section back to its default.

Writes go straight to PostgreSQL (compare-and-set on ``--if-match VERSION``
when given, otherwise on whatever version is current, still atomically) and
then PUBLISH the new version, so running daemons reload within milliseconds;
if Redis is down they pick it up by their periodic version check.

Output is JSON: ``version``, the full effective ``settings`` and the
``document`` of what was set. Exit codes: 0 done, 1 conflict or store
unreachable, 2 bad key or value (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec
import trio

from snapshot.redis import open_redis
from snapshot.settings import (
    SettingsRecord,
    SettingsStore,
    assignment_patch,
    publish_invalidation,
    reset_patch,
    to_document,
)

from ..core.config import Config
from .registry import EXIT_OK, command, with_database


def _add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("show", help="print the stored version and effective settings")
    set_ = sub.add_parser("set", help="change one or more keys")
    set_.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    reset = sub.add_parser("reset", help="reset keys (or whole sections) to their defaults")
    reset.add_argument("keys", nargs="+", metavar="KEY")
    for parser in (set_, reset):
        parser.add_argument(
            "--if-match",
            type=int,
            default=None,
            metavar="VERSION",
            help="fail (exit 1) unless the stored version is VERSION",
        )


def _print(record: SettingsRecord, *, published: bool | None = None) -> None:
    out: dict[str, Any] = {
        "version": record.version,
        "settings": to_document(record.settings),
        "document": record.document,
    }
    if published is not None:
        out["published"] = published
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(out)).decode() + "\n")


async def _main(args: argparse.Namespace, config: Config) -> int:
    return await with_database(config, lambda db: _act(args, config, SettingsStore(db)))


async def _act(args: argparse.Namespace, config: Config, store: SettingsStore) -> int:
    if args.action == "show":
        _print(await store.load())
        return EXIT_OK
    patch = assignment_patch(args.assignments) if args.action == "set" else reset_patch(args.keys)
    record = await store.write(patch, expected_version=args.if_match)
    async with open_redis(config.redis) as redis:
        published = await publish_invalidation(redis, record)
    _print(record, published=published)
    return EXIT_OK


@command("settings", "show or change the settings document", _add_arguments)
def _settings(args: argparse.Namespace, config: Config) -> int:
    code: int = trio.run(_main, args, config)
    return code
