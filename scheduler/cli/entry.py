"""The ``stationmaster`` command.

Exit codes: 0 done (or stopped by SIGTERM/SIGINT after draining), 1 runtime
failure (a store unreachable at start, an essential actor crashing past the
restart limit), 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import trio

from accounts.db import PostgresError
from accounts.errors import ConfigError, StationmasterError

from ..core.config import Config, find_config_file, load_config
from ..core.logs import configure_logging
from . import accounts, buckets, explain, outbox, settings, simulate, tasks
from .profile import find_profile, profile_note
from .registry import COMMANDS, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command
from .running import first_domain_error, run_daemon

# Imported for their @command registrations.
_COMMAND_MODULES = (accounts, buckets, explain, outbox, settings, simulate, tasks)
# Commands that never read the `dev` profile: `run` and `dev` start a daemon of their
# own (on dev's stores and port they would only collide), `simulate` is a server of
# its own, keygen needs no config.
_NO_PROFILE = frozenset({"run", "dev", "simulate", "keygen"})


@command("run", "run the daemon (foreground; systemd Type=notify aware)")
def _run(args: argparse.Namespace, config: Config) -> int:
    return run_daemon(config)


@command("migrate", "apply pending database migrations and exit")
def _migrate(args: argparse.Namespace, config: Config) -> int:
    from accounts.db import open_database, open_loop
    from accounts.migrate import applied_versions, migrate

    async def main() -> None:
        async with open_loop(), open_database(config.database) as db:
            applied = await migrate(db)
            print(
                f"applied: {applied or 'nothing (up to date)'}; "
                f"schema at {max(await applied_versions(db), default=0):04d}"
            )

    trio.run(main)
    return EXIT_OK


@command("check", "validate the configuration and reach PostgreSQL and Redis")
def _check(args: argparse.Namespace, config: Config) -> int:
    from .check import run_check

    return run_check(config, getattr(args, "config_source", "defaults"))


@command("keygen", "print a new Fernet key for crypto.keys")
def _keygen(args: argparse.Namespace, config: Config) -> int:
    from accounts.crypto import generate_key

    print(generate_key())
    return EXIT_OK


def _add_dev_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir", help="where the embedded servers keep data (env STATIONMASTER_STATE_DIR)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="data-plane port (default 8080; the control plane takes the next; 0: free ones)",
    )
    p.add_argument(
        "--simulator-port",
        type=int,
        default=None,
        help="port of the upstream simulator started beside it (default 8090; 0 picks a free one)",
    )
    p.add_argument(
        "--no-demo", action="store_true", help="do not seed the demo accounts (group `demo`)"
    )


@command(
    "dev",
    "run with a private embedded PostgreSQL and Redis (no servers needed)",
    _add_dev_arguments,
)
def _dev(args: argparse.Namespace, config: Config) -> int:
    from .dev import run_dev

    return run_dev(args, config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stationmaster", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--config",
        help="TOML config file (default: $STATIONMASTER_CONFIG, ./stationmaster.toml, "
        "/etc/stationmaster/stationmaster.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, add_args, _fn) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_)
        # Also after the subcommand (`stationmaster run --config FILE`, as in the
        # systemd unit); SUPPRESS keeps a value given before it.
        command_parser.add_argument(
            "--config", default=argparse.SUPPRESS, help="TOML config file (as above)"
        )
        add_args(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        path, args.config_source = _config_path(args)
        config = load_config(path)
    except ConfigError as exc:
        print(f"stationmaster: invalid config: {exc.key}: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(level=config.log.level, fmt=config.log.format)
    _help, _add, fn = COMMANDS[args.command]
    try:
        return fn(args, config)
    except ConfigError as exc:
        print(f"stationmaster: invalid config: {exc.key}: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    except StationmasterError as exc:
        print(f"stationmaster: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except PostgresError as exc:
        print(f"stationmaster: {_postgres_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except BaseExceptionGroup as group:
        # Store errors raised inside a nursery (coredis' pool, the asyncio bridge)
        # arrive wrapped; an operator wants the one line, not the traceback.
        first = first_domain_error(group)
        if first is not None:
            print(f"stationmaster: {first.message}", file=sys.stderr)
            return EXIT_USAGE if isinstance(first, ConfigError) else EXIT_FAILURE
        matched, _rest = group.split(PostgresError)
        if matched is None:
            raise
        print(f"stationmaster: {_postgres_line(_leaves(matched)[0])}", file=sys.stderr)
        return EXIT_FAILURE


def _config_path(args: argparse.Namespace) -> tuple[str | None, str]:
    """The config file to load and a description of where it came from.

    With no file given or found, a command other than ``run``/``dev``/``keygen``
    uses the ``dev`` profile when there is one, and says so on stderr.
    """
    env = os.environ
    found = find_config_file(args.config, env)
    if found is not None:
        return str(found), f"from {found}"
    if args.command not in _NO_PROFILE:
        profile = find_profile(env)
        if profile is not None:
            print(f"stationmaster: {profile_note(profile)}", file=sys.stderr)
            return str(profile), f"from the dev profile {profile}"
    return None, "defaults: no config file"


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _postgres_line(exc: BaseException) -> str:
    # The class name says what went wrong; the server's message can quote values.
    hint = (
        "; has `stationmaster migrate` run?" if type(exc).__name__ == "UndefinedTableError" else ""
    )
    return f"PostgreSQL refused the command ({type(exc).__name__}){hint}"


if __name__ == "__main__":
    sys.exit(main())
