"""``stationmaster accounts …``: manage accounts straight in PostgreSQL (no daemon needed).

Actions: ``list``, ``show``, ``add``, ``update``, ``disable``, ``delete``,
``import FILE``, ``reencrypt`` and ``probe`` (read the usage now; see
:mod:`scheduler.cli.usage`). ``--json`` prints what the admin API would
answer (credentials masked). Credentials are read from a file or stdin
(``--credentials-file``), never from the command line, where ``ps`` and shell
history would keep them.

``update`` without ``--version`` changes the version it reads just before
writing (an operator's explicit overwrite; a write landing in between still
conflicts). ``import`` reads a JSON list of account objects or a CSV file
whose columns are field names (lists ``;``-separated, ``credentials`` a JSON
object or ``credentials.<key>`` columns) and writes every row in one
transaction, or none, naming the first bad row.

Exit codes: 0 done, 1 not found / conflict / store unreachable, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
import trio

from accounts.crypto import Cipher
from accounts.db import open_database, open_loop
from accounts.errors import StationmasterError, ValidationFailed
from accounts.inputs import AccountCreate, AccountPatch, account_view, parse_import
from accounts.model import Account, Kind, Platform, Status
from accounts.repository import MAX_PAGE, AccountRepository
from accounts.validation import convert

from ..core.config import Config
from .registry import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command
from .usage import probe_account

Action = Callable[[AccountRepository, argparse.Namespace], Awaitable[int]]
_ACTIONS: dict[str, Action] = {}


def _action(name: str) -> Callable[[Action], Action]:
    def register(fn: Action) -> Action:
        _ACTIONS[name] = fn
        return fn

    return register


# --- arguments -------------------------------------------------------------------------


def _field_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name")
    p.add_argument("--platform", choices=[x.value for x in Platform])
    p.add_argument("--kind", choices=[x.value for x in Kind])
    p.add_argument("--group", dest="groups", action="append", help="repeat for several")
    p.add_argument("--model", dest="models", action="append", help="name or * pattern; repeat")
    p.add_argument("--priority", type=int)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--base-url", dest="base_url")
    p.add_argument(
        "--credentials-file", help="JSON object of credentials ('-' reads stdin; never argv)"
    )
    p.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other field; VALUE is read as JSON (true, 0.8, null, [..]) else as text",
    )


def _add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="list accounts (all pages unless --limit)")
    ls.add_argument("--group")
    ls.add_argument("--platform", choices=[x.value for x in Platform])
    ls.add_argument("--status", choices=[x.value for x in Status])
    ls.add_argument("--limit", type=int, help="one page of this size")
    ls.add_argument("--cursor", help="next_cursor of the previous page")
    show = sub.add_parser("show", help="one account (credentials masked)")
    show.add_argument("id")
    add = sub.add_parser("add", help="create an account")
    _field_flags(add)
    upd = sub.add_parser("update", help="change fields of an account")
    upd.add_argument("id")
    upd.add_argument("--version", type=int, help="the version you change (compare-and-set)")
    _field_flags(upd)
    for name, help_ in (("disable", "soft-disable an account"), ("delete", "delete an account")):
        q = sub.add_parser(name, help=help_)
        q.add_argument("id")
        q.add_argument("--version", type=int, help="only if still at this version")
    imp = sub.add_parser("import", help="create many accounts from a JSON or CSV file, atomically")
    imp.add_argument("file", help="path, or '-' for stdin")
    imp.add_argument("--format", choices=["json", "csv"], help="default: from the file suffix")
    sub.add_parser("reencrypt", help="rewrite every credential under the newest crypto key")
    probe = sub.add_parser("probe", help="read the account's usage now and show the reading")
    probe.add_argument("id")
    for sp in sub.choices.values():
        sp.add_argument("--json", action="store_true", help="machine-readable output")


@command("accounts", "manage upstream accounts in the database", _add_arguments)
def accounts_command(args: argparse.Namespace, config: Config) -> int:
    return trio.run(_main, args, config)


async def _main(args: argparse.Namespace, config: Config) -> int:
    async with open_loop():
        try:
            async with open_database(config.database, retry_for_s=0) as db:
                repo = AccountRepository(db, Cipher(config.crypto))
                if args.action == "probe":
                    return await probe_account(db, repo, config, args.id, as_json=args.json)
                return await _ACTIONS[args.action](repo, args)
        except ValidationFailed as exc:
            print(f"stationmaster accounts {args.action}: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
        except StationmasterError as exc:
            print(f"stationmaster accounts {args.action}: {exc.message}", file=sys.stderr)
            return EXIT_FAILURE


# --- output ----------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _show(repo: AccountRepository, account: Account, as_json: bool) -> None:
    view = account_view(account, repo.cipher)
    if as_json:
        _print_json(view)
        return
    for field, value in msgspec.structs.asdict(view).items():
        print(f"{field:24} {_cell(value)}")


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return msgspec.json.encode(value).decode()
    return "-" if value is None else str(value)


def _table(accounts: list[Account]) -> None:
    header = ("ID", "NAME", "PLATFORM", "STATUS", "GROUPS", "PRIO", "CONC", "VER")
    rows = [header] + [
        (a.id, a.name, a.platform, a.status, _cell(a.groups), a.priority, a.concurrency, a.version)
        for a in accounts
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


# --- input -----------------------------------------------------------------------------


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationFailed.one(path, f"cannot read: {exc.strerror}") from None


def _document(args: argparse.Namespace) -> dict[str, Any]:
    """The fields given on the command line, as an input document."""
    doc: dict[str, Any] = {}
    for field in ("name", "platform", "kind", "groups", "models", "priority", "concurrency"):
        if getattr(args, field) is not None:
            doc[field] = getattr(args, field)
    if args.base_url is not None:
        doc["base_url"] = args.base_url
    if args.credentials_file is not None:
        try:
            doc["credentials"] = msgspec.json.decode(_read(args.credentials_file))
        except msgspec.DecodeError:
            # The reason names the position only: the text may be a secret.
            raise ValidationFailed.one("credentials", "the file is not valid JSON") from None
    for item in args.extra:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise ValidationFailed.one("--set", f"expected FIELD=VALUE, got {field!r}")
        try:
            doc[field] = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            doc[field] = raw
    return doc


# --- actions ---------------------------------------------------------------------------


@_action("list")
async def _list(repo: AccountRepository, args: argparse.Namespace) -> int:
    filters: dict[str, Any] = {
        "group": args.group,
        "platform": Platform(args.platform) if args.platform else None,
        "status": Status(args.status) if args.status else None,
    }
    if args.limit is not None:
        page = await repo.list_accounts(**filters, cursor=args.cursor, limit=args.limit)
        items, cursor = page.items, page.next_cursor
    else:
        items, cursor = [], args.cursor
        while True:
            page = await repo.list_accounts(**filters, cursor=cursor, limit=MAX_PAGE)
            items += page.items
            cursor = page.next_cursor
            if cursor is None:
                break
    if args.json:
        _print_json({"items": [account_view(a, repo.cipher) for a in items], "next_cursor": cursor})
    else:
        _table(items)
        if cursor is not None:
            print(f"next page: --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


@_action("show")
async def _show_one(repo: AccountRepository, args: argparse.Namespace) -> int:
    _show(repo, await repo.get(args.id), args.json)
    return EXIT_OK


@_action("add")
async def _add(repo: AccountRepository, args: argparse.Namespace) -> int:
    account = await repo.create(convert(_document(args), AccountCreate))
    _show(repo, account, args.json)
    return EXIT_OK


@_action("update")
async def _update(repo: AccountRepository, args: argparse.Namespace) -> int:
    patch = convert(_document(args), AccountPatch)
    version = args.version if args.version is not None else (await repo.get(args.id)).version
    _show(repo, await repo.update(args.id, patch, expected_version=version), args.json)
    return EXIT_OK


@_action("disable")
async def _disable(repo: AccountRepository, args: argparse.Namespace) -> int:
    _show(repo, await repo.disable(args.id, expected_version=args.version), args.json)
    return EXIT_OK


@_action("delete")
async def _delete(repo: AccountRepository, args: argparse.Namespace) -> int:
    await repo.delete(args.id, expected_version=args.version)
    if args.json:
        _print_json({"deleted": args.id})
    else:
        print(f"deleted {args.id}")
    return EXIT_OK


@_action("import")
async def _import(repo: AccountRepository, args: argparse.Namespace) -> int:
    fmt: Literal["json", "csv"] = args.format or (
        "csv" if args.file.lower().endswith(".csv") else "json"
    )
    creates = parse_import(_read(args.file), fmt)
    ids = await repo.create_many(creates)
    if args.json:
        _print_json({"imported": len(ids), "ids": ids})
    else:
        print(f"imported {len(ids)} accounts")
    return EXIT_OK


@_action("reencrypt")
async def _reencrypt(repo: AccountRepository, args: argparse.Namespace) -> int:
    count = await repo.reencrypt()
    if args.json:
        _print_json({"reencrypted": count})
    else:
        print(f"re-encrypted {count} accounts under the newest key")
    return EXIT_OK
