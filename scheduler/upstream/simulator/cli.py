"""``stationmaster simulate`` (also ``python -m scheduler.upstream.simulator``).

Prints ``stationmaster simulate: serving on http://HOST:PORT`` once it listens
(the first line on stdout, flushed, so a parent process can read the URL),
then serves until SIGTERM or SIGINT. Bad knobs exit 2 naming the knob.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from accounts.errors import ConfigError

from .app import open_simulator
from .knobs import Knobs, build_knobs, load_knobs_file, parse_assignments

EXIT_OK, EXIT_USAGE = 0, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="port (default 8090; 0 picks a free one)")
    p.add_argument("--knobs", metavar="FILE", help="TOML file of knobs (top level or [knobs])")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help='set one knob (repeatable; VALUE read as TOML: 0.3, true, ["fetch"])',
    )


def knobs_from_args(args: argparse.Namespace) -> Knobs:
    """File knobs, then ``--set`` ones; ConfigError names the knob and the reason."""
    values: dict[str, Any] = {}
    if args.knobs:
        values.update(load_knobs_file(args.knobs))
    values.update(parse_assignments(args.set))
    return build_knobs(values)


async def serve(knobs: Knobs, host: str, port: int) -> None:
    async with open_simulator(knobs, host=host, port=port) as (_sim, url):
        print(f"stationmaster simulate: serving on {url}", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _signum in signals:
                return


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print("stationmaster simulate: --port: must be between 0 and 65535", file=sys.stderr)
        return EXIT_USAGE
    try:
        knobs = knobs_from_args(args)
    except ConfigError as exc:
        print(f"stationmaster simulate: invalid knob: {exc.key}: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    try:
        trio.run(serve, knobs, args.host, args.port)
    except OSError as exc:
        print(f"stationmaster simulate: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stationmaster simulate", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
