"""A daemon subprocess with one extra, deliberately slow route (for drain tests).

``GET /test/slow`` logs ``slow request entered`` and then waits until the file
named by ``$SMTEST_RELEASE_FILE`` exists, so a test in another process decides
exactly when the in-flight request may finish. Started with
:class:`SlowDaemonProcess`; the child runs :func:`main` through the real
:func:`scheduler.cli.running.run_daemon` (signals, exit codes and all).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from scheduler.core.logs import get_logger
from scheduler.http.endpoints import Call, Endpoint

from ..support import DaemonProcess

log = get_logger("test")

# How often the slow handler looks for the release file: short, the file is local.
_POLL_S = 0.02


def file_gated_endpoint(path: Path) -> Endpoint:
    """``GET /test/slow``: answers 200 once ``path`` exists."""

    async def slow(call: Call) -> dict[str, bool]:
        log.info("slow request entered")
        while not path.exists():
            await trio.sleep(_POLL_S)
        return {"ok": True}

    return Endpoint("GET", "/test/slow", slow, "test only: waits for a file")


def main() -> None:
    from scheduler.cli.running import run_daemon
    from scheduler.core.config import load_config
    from scheduler.core.logs import configure_logging

    config = load_config()
    configure_logging(level=config.log.level, fmt=config.log.format)
    release = Path(os.environ["SMTEST_RELEASE_FILE"])
    sys.exit(run_daemon(config, extra_endpoints=[file_gated_endpoint(release)]))


class SlowDaemonProcess(DaemonProcess):
    """Like :class:`DaemonProcess`, but the child runs :func:`main` of this module."""

    def __init__(self, config: Mapping[str, Mapping[str, Any]], *, release_file: Path) -> None:
        super().__init__(
            config,
            extra_env={"SMTEST_RELEASE_FILE": str(release_file)},
            python_args=("-c", "from tests.scheduler.slow_daemon import main; main()"),
        )
