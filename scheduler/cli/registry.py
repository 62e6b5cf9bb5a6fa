"""The subcommand registry: each command module registers its commands with :func:`command`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..core.config import Config

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
