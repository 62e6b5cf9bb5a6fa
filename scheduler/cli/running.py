"""Running the daemon in the foreground until a signal (``run`` and ``dev``)."""

from __future__ import annotations

import signal
from typing import Any

import trio

from accounts.errors import StationmasterError

from ..core.config import Config
from ..core.logs import get_logger
from .registry import EXIT_FAILURE, EXIT_OK

log = get_logger("cli")


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
        first = first_domain_error(group)
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


def first_domain_error(group: BaseExceptionGroup[Any]) -> StationmasterError | None:
    for exc in group.exceptions:
        if isinstance(exc, StationmasterError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_domain_error(exc)
            if found is not None:
                return found
    return None
