"""The ``stationmaster`` command.

Exit codes: 0 done (or stopped by SIGTERM/SIGINT after draining), 1 runtime
failure (a store unreachable at start, an essential actor crashing past the
restart limit), 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import trio

from accounts.db import PostgresError
from accounts.errors import ConfigError, StationmasterError

from ..core.config import Config, load_config
from ..core.logs import configure_logging, get_logger

log = get_logger("cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Subcommands register here: name -> (help, add_arguments, run(args, config) -> exit code).
Command = tuple[
    str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, Config], int]
]
COMMANDS: dict[str, Command] = {}


def command(
    name: str, help_: str, add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None
) -> Callable[
    [Callable[[argparse.Namespace, Config], int]], Callable[[argparse.Namespace, Config], int]
]:
    def register(
        fn: Callable[[argparse.Namespace, Config], int],
    ) -> Callable[[argparse.Namespace, Config], int]:
        COMMANDS[name] = (help_, add_arguments, fn)
        return fn

    return register


async def run_until_signal(daemon: Any) -> None:
    """Run ``daemon`` and call its ``shutdown()`` on the first SIGTERM or SIGINT."""
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal received", signal=signal.Signals(signum).name)
                    daemon.shutdown()
                    return

        nursery.start_soon(watch_signals)
        await daemon.run()
        nursery.cancel_scope.cancel()


def run_daemon(config: Config, **daemon_options: Any) -> int:
    """Run the daemon in this process until a signal; the exit code.

    ``daemon_options`` go to :class:`~scheduler.daemon.Daemon` (tests inject
    ``extra_actors`` / ``extra_endpoints`` this way).
    """
    from accounts.errors import SupervisorError

    from ..daemon import Daemon

    try:
        trio.run(run_until_signal, Daemon(config, **daemon_options))
    except BaseExceptionGroup as group:
        # The nursery wraps what the daemon raised; the first deliberate error explains it.
        first = _first_domain_error(group)
        if first is None:
            raise
        log.error(
            "giving up" if isinstance(first, SupervisorError) else "cannot run", reason=str(first)
        )
        return EXIT_FAILURE
    except StationmasterError as exc:
        log.error("cannot run", reason=exc.message)
        return EXIT_FAILURE
    return EXIT_OK


def _first_domain_error(group: BaseExceptionGroup[Any]) -> StationmasterError | None:
    for exc in group.exceptions:
        if isinstance(exc, StationmasterError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_domain_error(exc)
            if found is not None:
                return found
    return None


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

    return run_check(config)


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
        "--port", type=int, default=None, help="HTTP port (default 8080; 0 picks a free one)"
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
    _load_command_modules()
    for name, (help_, add_args, _fn) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_)
        # Also after the subcommand (`stationmaster run --config FILE`, as in the
        # systemd unit); SUPPRESS keeps a value given before it.
        command_parser.add_argument(
            "--config", default=argparse.SUPPRESS, help="TOML config file (as above)"
        )
        add_args(command_parser)
    return parser


def _load_command_modules() -> None:
    """Import the modules whose subcommands register themselves (accounts, settings …)."""
    import importlib

    for module in _COMMAND_MODULES:
        importlib.import_module(module)


# Modules defining further subcommands with @command; imported before parsing.
_COMMAND_MODULES: list[str] = [
    "scheduler.cli.accounts",
    "scheduler.cli.settings",
    "scheduler.cli.buckets",
    "scheduler.cli.explain",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
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
        first = _first_domain_error(group)
        if first is not None:
            print(f"stationmaster: {first.message}", file=sys.stderr)
            return EXIT_USAGE if isinstance(first, ConfigError) else EXIT_FAILURE
        matched, _rest = group.split(PostgresError)
        if matched is None:
            raise
        print(f"stationmaster: {_postgres_line(_leaves(matched)[0])}", file=sys.stderr)
        return EXIT_FAILURE


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
