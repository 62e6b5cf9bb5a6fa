"""Supervision: start actors in order, restart crashes, shut down in reverse.

Strategy ``one_for_one_with_backoff``: each actor runs in its own cancel scope.
A crash (any ``Exception`` escaping ``run``) restarts only that actor, after a
delay that starts at ``backoff_initial_s``, doubles per consecutive crash, is
capped at ``backoff_max_s`` and jittered (±25 %) so several instances that lost
the same store do not reconnect in lock step. An *essential* actor that crashes
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
import time
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
        base = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (consecutive - 1))
        return base * (0.75 + 0.5 * rand())


@dataclass(slots=True)
class _Running:
    actor: Actor
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class Supervisor:
    """Starts, restarts and stops actors; reports their state to :class:`Health`."""

    def __init__(self, policy: RestartPolicy, health: Health, metrics: Metrics) -> None:
        self.policy = policy
        self._health = health
        self._metrics = metrics
        self._running: list[_Running] = []
        self.restarts: dict[str, list[float]] = {}

    async def start(self, nursery: trio.Nursery, actor: Actor) -> Any:
        """Start ``actor`` under supervision; returns what its ``started()`` passed.

        Waits until the actor reports started (retrying crashes under the policy).
        Raises SupervisorError if an essential actor cannot start within the policy.
        """
        self._health.register(actor.name, essential=actor.essential)
        entry = _Running(actor)
        self._running.append(entry)
        return await nursery.start(self._supervise, entry)

    async def _supervise(self, entry: _Running, *, task_status: trio.TaskStatus[Any]) -> None:
        actor = entry.actor
        crashes: deque[float] = deque()
        consecutive = 0
        reported = False
        try:
            with entry.scope:
                while True:
                    bind(actor=actor.name)
                    try:
                        async with trio.open_nursery() as inner:
                            value = await inner.start(actor.run)
                            self._up(actor)
                            consecutive = 0
                            if not reported:
                                reported = True
                                task_status.started(value)
                        # run() returned: the actor finished its work on purpose.
                        self._health.set(actor.name, State.STOPPED)
                        if not reported:
                            task_status.started(None)
                        return
                    except Exception as exc:
                        consecutive += 1
                        if not self._may_restart(actor, exc, crashes):
                            if not reported:
                                task_status.started(None)
                            return
                    await trio.sleep(self.policy.delay(consecutive))
        finally:
            self._metrics.actor_up.labels(actor.name).set(0)
            entry.done.set()

    def _up(self, actor: Actor) -> None:
        self._health.set(actor.name, State.UP)
        self._metrics.actor_up.labels(actor.name).set(1)

    def _may_restart(self, actor: Actor, exc: Exception, crashes: deque[float]) -> bool:
        """Log and count the crash; False (or raise, if essential) past the limit."""
        now = time.monotonic()
        crashes.append(now)
        while crashes and crashes[0] < now - self.policy.window_s:
            crashes.popleft()
        self.restarts.setdefault(actor.name, []).append(now)
        self._metrics.actor_up.labels(actor.name).set(0)
        self._health.set(actor.name, State.DOWN, f"crashed: {type(exc).__name__}")
        over = len(crashes) > self.policy.max_restarts
        log.error(
            "actor crashed",
            actor=actor.name,
            crashes_in_window=len(crashes),
            giving_up=over,
            exc_info=exc,
        )
        if not over:
            self._metrics.actor_restarts.labels(actor.name).inc()
            return True
        if actor.essential:
            raise SupervisorError(
                actor.name, f"crashed {len(crashes)} times in {self.policy.window_s}s"
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
