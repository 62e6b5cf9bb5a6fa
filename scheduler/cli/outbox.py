"""``stationmaster outbox list [--status S] [--after ID] [--limit N] | retry ID``.

No daemon needed: it talks to PostgreSQL directly.

``list`` prints the events as JSON lines (destinations without userinfo or query
values), oldest first, then a summary line on stderr with the id to pass as
``--after`` for the next page. ``retry`` sends a dead event again (attempts reset)
or makes a pending one due now, and wakes running dispatchers through NOTIFY; a
consumed or in-flight event is refused. Exit codes: 0 done, 1 refused (not found,
wrong state) or store unreachable, 2 bad argument (nothing changed).
"""

from __future__ import annotations

import argparse
import sys

import msgspec
import trio

from accounts.errors import ValidationFailed

from ..core.config import Config
from ..outbox import OutboxStore, Status
from .registry import EXIT_OK, command, with_database

_STATUSES = [s.value for s in Status]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="list events (JSON lines), oldest first")
    ls.add_argument("--status", choices=_STATUSES, default=None, help="only this status")
    ls.add_argument("--after", type=int, default=0, metavar="ID", help="start after this id")
    ls.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (1..1000)")
    retry = sub.add_parser("retry", help="deliver a dead event again (attempts reset)")
    retry.add_argument("id", type=int, metavar="ID")


async def _act(args: argparse.Namespace, store: OutboxStore) -> int:
    if args.action == "list":
        if not 1 <= args.limit <= 1000:
            raise ValidationFailed.one("--limit", "must be 1..1000")
        status = None if args.status is None else Status(args.status)
        items = await store.list(status, after_id=args.after, limit=args.limit)
        for item in items:
            sys.stdout.write(msgspec.json.encode(item).decode() + "\n")
        more = f"; next: --after {items[-1].id}" if len(items) == args.limit else ""
        print(f"{len(items)} event(s){more}", file=sys.stderr)
        return EXIT_OK
    event = await store.retry(args.id)
    sys.stdout.write(msgspec.json.encode(event).decode() + "\n")
    return EXIT_OK


async def _main(args: argparse.Namespace, config: Config) -> int:
    return await with_database(config, lambda db: _act(args, OutboxStore(db)))


@command("outbox", "list outbox events or retry a dead one", _add_arguments)
def _outbox(args: argparse.Namespace, config: Config) -> int:
    code: int = trio.run(_main, args, config)
    return code
