"""The subcommand registry: each command module registers its commands with :func:`command`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable

from accounts.db import Database, PostgresError, open_database, open_loop
from accounts.errors import StationmasterError, ValidationFailed

from ..core.config import Config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


async def with_database(config: Config, act: Callable[[Database], Awaitable[int]]) -> int:
    """Run ``act`` on a database of ``config``; its errors become messages and exit codes.

    Errors are turned into exit codes inside the loop: leaving it, they would arrive
    wrapped in the bridge's exception group.
    """
    async with open_loop(), open_database(config.database, retry_for_s=0) as db:
        try:
            return int(await act(db))
        except ValidationFailed as exc:
            for field, reason in exc.errors:
                print(f"stationmaster: {field}: {reason}", file=sys.stderr)
            return EXIT_USAGE
        except StationmasterError as exc:
            print(f"stationmaster: {exc.message}", file=sys.stderr)
            return EXIT_FAILURE
        except PostgresError as exc:
            # Most likely the schema is older than this release.
            print(
                f"stationmaster: PostgreSQL refused ({type(exc).__name__}); "
                "has `stationmaster migrate` run?",
                file=sys.stderr,
            )
            return EXIT_FAILURE


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
