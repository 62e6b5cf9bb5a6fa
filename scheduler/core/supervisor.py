"""Supervision: start actors in order, restart crashes, shut down in reverse.

Strategy ``one_for_one_with_backoff``: each actor runs in its own cancel scope.
A crash (any ``Exception``, or group of them, escaping ``run``) restarts only
that actor, after a delay that starts at ``backoff_initial_s``, doubles with each
crash inside the last ``window_s`` (so an actor that starts fine and then dies at
once still backs off, and a quiet window resets it), is capped at
``backoff_max_s`` and jittered (±25 %) so several instances that lost the same
store do not reconnect in lock step. Times come from trio's clock, so tests can
use ``autojump_clock``. An *essential* actor that crashes
more than ``max_restarts`` times within ``window_s`` ends the supervisor with
:class:`~accounts.errors.SupervisorError`; the CLI exits 1 and systemd restarts
the process. A non-essential actor past the limit stays down (logged, counted,
shown in ``/readyz``) and the daemon goes on.

Cancellation (``trio.Cancelled``) and other ``BaseException`` are never treated
as crashes: they propagate, so shutdown always wins over restart.

Shutdown is ordered by lifetime: :meth:`Supervisor.stop` cancels actors in the
reverse of their start order, waiting for each to finish before the next, so the
HTTP server (started last) stops taking requests before the stores it uses go.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from accounts.errors import SupervisorError

from .health import Health, State
from .logs import bind, get_logger
from .metrics import Metrics

log = get_logger("supervisor")


class Actor(Protocol):
    """A long-lived component. ``run`` calls ``task_status.started()`` once it can serve."""

    name: str
    essential: bool

    async def run(
        self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 30.0
    max_restarts: int = 5
    window_s: float = 60.0

    def delay(self, consecutive: int, rand: Callable[[], float] = random.random) -> float:
        """Backoff before restart number ``consecutive`` (1-based), jittered ±25 %."""
        # Past 2**60 every realistic base is capped anyway; bounding the exponent
        # keeps the float from overflowing for absurd restart counts.
        exponent = min(max(consecutive, 1) - 1, 60)
        base = min(self.backoff_max_s, self.backoff_initial_s * 2.0**exponent)
        return base * (0.75 + 0.5 * rand())


@dataclass(slots=True)
class _Running:
    actor: Actor
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    # Crash times (trio clock) inside the policy window; its length drives the backoff.
    crashes: deque[float] = field(default_factory=deque)


def _unwrap(exc: BaseException) -> BaseException:
    """The single exception inside (nested) one-member groups, else ``exc`` itself.

    The actor runs in a nursery with strict exception groups, so its crash arrives
    wrapped; logs and ``/readyz`` should name what actually went wrong.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Supervisor:
    """Starts, restarts and stops actors; reports their state to :class:`Health`."""

    def __init__(self, policy: RestartPolicy, health: Health, metrics: Metrics) -> None:
        self.policy = policy
        self._health = health
        self._metrics = metrics
        self._running: list[_Running] = []
        # Crash times per actor (trio clock), for tests and diagnostics.
        self.restarts: dict[str, list[float]] = {}

    async def start(self, nursery: trio.Nursery, actor: Actor) -> Any:
        """Start ``actor`` under supervision; returns what its ``started()`` passed.

        Waits until the actor reports started, restarting it under the policy if it
        crashes first. A non-essential actor that gives up before starting returns
        None. Raises SupervisorError if an essential actor cannot start within the
        policy. Cancelling the caller cancels the start.
        """
        self._health.register(actor.name, essential=actor.essential)
        entry = _Running(actor)
        self._running.append(entry)
        return await nursery.start(self._supervise, entry)

    async def _supervise(self, entry: _Running, *, task_status: trio.TaskStatus[Any]) -> None:
        actor = entry.actor
        # Once the caller of start() got its value, later starts report nothing.
        status: trio.TaskStatus[Any] | None = task_status
        bind(actor=actor.name)
        try:
            with entry.scope:
                while True:
                    try:
                        async with trio.open_nursery() as inner:
                            value = await inner.start(actor.run)
                            self._up(actor)
                            if status is not None:
                                status.started(value)
                                status = None
                        # run() returned: the actor finished its work on purpose.
                        self._health.set(actor.name, State.STOPPED, "finished")
                        break
                    except Exception as exc:
                        # Only Exception (and groups of them) is a crash; Cancelled,
                        # KeyboardInterrupt and mixed groups propagate so shutdown wins.
                        if entry.scope.cancel_called:
                            # Crashed while being stopped: nothing to restart.
                            log.warning("actor failed while stopping", exc_info=_unwrap(exc))
                            break
                        if not self._may_restart(entry, _unwrap(exc)):
                            break
                    await trio.sleep(self.policy.delay(len(entry.crashes)))
                    self._health.set(actor.name, State.STARTING, "restarting")
            if status is not None:
                # Gave up (non-essential) or finished before ever reporting started.
                status.started(None)
        finally:
            self._metrics.actor_up.labels(actor.name).set(0)
            entry.done.set()

    def _up(self, actor: Actor) -> None:
        self._health.set(actor.name, State.UP)
        self._metrics.actor_up.labels(actor.name).set(1)

    def _may_restart(self, entry: _Running, exc: BaseException) -> bool:
        """Log and count the crash; False (or raise, if essential) past the limit."""
        actor, crashes = entry.actor, entry.crashes
        now = trio.current_time()
        crashes.append(now)
        while crashes and crashes[0] < now - self.policy.window_s:
            crashes.popleft()
        self.restarts.setdefault(actor.name, []).append(now)
        self._metrics.actor_up.labels(actor.name).set(0)
        over = len(crashes) > self.policy.max_restarts
        log.error(
            "actor crashed",
            crashes_in_window=len(crashes),
            giving_up=over,
            exc_info=exc,
        )
        if not over:
            self._metrics.actor_restarts.labels(actor.name).inc()
            self._health.set(actor.name, State.DOWN, f"crashed: {type(exc).__name__}")
            return True
        self._health.set(
            actor.name,
            State.DOWN,
            f"gave up after {len(crashes)} crashes in {self.policy.window_s:g}s "
            f"(last: {type(exc).__name__})",
        )
        if actor.essential:
            raise SupervisorError(
                actor.name, f"crashed {len(crashes)} times in {self.policy.window_s:g}s"
            ) from exc
        return False

    async def stop(self, *, timeout_s: float) -> None:
        """Cancel actors newest first, each given up to ``timeout_s`` to finish."""
        for entry in reversed(self._running):
            entry.scope.cancel()
            with trio.move_on_after(timeout_s):
                await entry.done.wait()
            self._health.set(entry.actor.name, State.STOPPED)

    def names(self) -> Sequence[str]:
        return [e.actor.name for e in self._running]
