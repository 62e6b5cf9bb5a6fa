"""``stationmaster simulate``: the upstream simulator (see :mod:`scheduler.upstream.simulator`)."""

from __future__ import annotations

import argparse

from ..core.config import Config
from ..upstream.simulator import cli as simulator_cli
from .registry import command


@command(
    "simulate",
    "serve the upstream simulator (DashScope, Kling, chat usage headers) with knobs",
    simulator_cli.add_arguments,
)
def _simulate(args: argparse.Namespace, config: Config) -> int:
    return simulator_cli.run(args)
