"""``stationmaster tasks list|show|cancel`` and ``stationmaster credits show|list|topup``.

Straight to PostgreSQL (no daemon needed), through the same store and write
path the daemon uses: ``tasks cancel`` asks the upstream where the platform can
and ends the task CANCELLED with its hold released, in one transaction, exactly
as ``POST /v1/tasks/{id}/cancel`` does. Output is JSON. Exit codes: 0 done,
1 not found / conflict (a finished task) / store or upstream unreachable,
2 bad input (nothing changed).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

import msgspec
import trio

from accounts.crypto import Cipher
from accounts.errors import NotFound, ValidationFailed
from accounts.repository import AccountRepository

from ..core.config import Config
from ..selection.credentials import Credentials
from ..tasks import TaskStatus, TaskStore, standalone
from ..upstream import open_upstream
from .registry import EXIT_OK, command, with_database


def _print(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


def _task_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationFailed.one("task_id", "not a task id (UUID)") from None


def _tasks_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="tasks, newest first (filters, pages)")
    ls.add_argument("--owner")
    ls.add_argument("--status", choices=[s.value for s in TaskStatus])
    ls.add_argument("--platform")
    ls.add_argument("--cursor", help="next_cursor of the previous page")
    ls.add_argument("--limit", type=int, default=50)
    show = sub.add_parser("show", help="one task and its ledger entries")
    show.add_argument("task_id")
    cancel = sub.add_parser("cancel", help="cancel a live task (upstream too where supported)")
    cancel.add_argument("task_id")


def _credits_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="one owner's balance, top-ups, captures, holds")
    show.add_argument("owner")
    ls = sub.add_parser("list", help="every owner's balance")
    ls.add_argument("--cursor")
    ls.add_argument("--limit", type=int, default=100)
    top = sub.add_parser("topup", help="add credit (idempotent per --key)")
    top.add_argument("owner")
    top.add_argument("amount", type=int)
    top.add_argument("--key", required=True, help="the same key twice adds credit once")
    top.add_argument("--note")


async def _main(args: argparse.Namespace, config: Config, act: Any) -> int:
    return await with_database(
        config,
        lambda db: act(
            args, config, TaskStore(db, max_in_flight=config.tasks.max_in_flight_per_owner)
        ),
    )


async def _tasks(args: argparse.Namespace, config: Config, store: TaskStore) -> int:
    if args.action == "list":
        if not 1 <= args.limit <= 500:
            raise ValidationFailed.one("limit", "must be 1..500")
        cursor = _task_id(args.cursor) if args.cursor else None
        items = await store.list_tasks(
            owner=args.owner, status=args.status, platform=args.platform,
            before=cursor, limit=args.limit,
        )  # fmt: skip
        nxt = items[-1].id if len(items) == args.limit else None
        _print({"items": items, "next_cursor": nxt})
        return EXIT_OK
    task_id = _task_id(args.task_id)
    if args.action == "show":
        task = await store.get(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        ledger = [{"kind": k, "amount": a} for k, a in await store.ledger_of(task_id)]
        _print({"task": task, "ledger": ledger})
        return EXIT_OK
    cipher = Cipher(config.crypto)
    async with open_upstream(config.upstream) as upstream:
        repo = AccountRepository(store.db, cipher)
        tasks = standalone(store, upstream, repo, Credentials(cipher).get, config.tasks)
        _print(await tasks.cancel(task_id))
    return EXIT_OK


async def _credits(args: argparse.Namespace, config: Config, store: TaskStore) -> int:
    if args.action == "show":
        _print(await store.credit(args.owner))
    elif args.action == "list":
        if not 1 <= args.limit <= 500:
            raise ValidationFailed.one("limit", "must be 1..500")
        rows = await store.balances(after=args.cursor, limit=args.limit)
        nxt = rows[-1][0] if len(rows) == args.limit else None
        _print({"items": [{"owner": o, "balance": b} for o, b in rows], "next_cursor": nxt})
    else:
        if args.amount < 1:
            raise ValidationFailed.one("amount", "must be at least 1")
        try:
            applied = await store.topup(args.owner, args.amount, args.key, args.note)
        except ValueError as exc:
            field, _, reason = str(exc).partition(": ")
            raise ValidationFailed.one(field, reason) from None
        _print({"applied": applied, "credit": await store.credit(args.owner)})
    return EXIT_OK


@command("tasks", "list, show or cancel async tasks", _tasks_arguments)
def _tasks_command(args: argparse.Namespace, config: Config) -> int:
    code: int = trio.run(_main, args, config, _tasks)
    return code


@command("credits", "owners' credit: show, list, top up", _credits_arguments)
def _credits_command(args: argparse.Namespace, config: Config) -> int:
    code: int = trio.run(_main, args, config, _credits)
    return code
