"""Component health, readiness and liveness, shared by the actors and the HTTP server.

Each component (a store, an actor, a warm-up step) reports a :class:`State`.
Readiness is: not draining, and every *essential* component UP. Components that
are DEGRADED (a fallback path is serving) keep the daemon ready but are shown in
the ``/readyz`` body. Liveness is: the supervisor is not failing and the event
loop answered recently.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .metrics import Metrics


class State(enum.Enum):
    STARTING = "starting"
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"
    STOPPED = "stopped"


@dataclass(slots=True)
class Component:
    name: str
    essential: bool
    state: State = State.STARTING
    detail: str = ""
    since: float = field(default_factory=time.time)


class Phase(enum.Enum):
    """The daemon's lifecycle, in order."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    FAILING = "failing"
    STOPPED = "stopped"


class Health:
    """The one place readiness and liveness are decided."""

    def __init__(self, metrics: Metrics, *, max_loop_lag_s: float) -> None:
        self._components: dict[str, Component] = {}
        self._metrics = metrics
        self.phase = Phase.STARTING
        self.max_loop_lag_s = max_loop_lag_s
        self.loop_lag_s = 0.0

    def register(self, name: str, *, essential: bool) -> None:
        if name not in self._components:
            self._components[name] = Component(name, essential)

    def set(self, name: str, state: State, detail: str = "") -> None:
        comp = self._components.get(name)
        if comp is None:
            comp = self._components[name] = Component(name, essential=False)
        if comp.state is not state or comp.detail != detail:
            comp.state, comp.detail, comp.since = state, detail, time.time()
        self._metrics.ready.set(1 if self.ready() else 0)

    def get(self, name: str) -> Component | None:
        return self._components.get(name)

    def ready(self) -> bool:
        if self.phase is not Phase.RUNNING:
            return False
        return all(
            c.state in (State.UP, State.DEGRADED) for c in self._components.values() if c.essential
        )

    def live(self) -> bool:
        return self.phase is not Phase.FAILING and self.loop_lag_s <= self.max_loop_lag_s

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self._metrics.ready.set(1 if self.ready() else 0)

    def snapshot(self) -> dict[str, object]:
        """The body of ``/readyz``: phase and each component's state."""
        return {
            "ready": self.ready(),
            "phase": self.phase.value,
            "components": {
                c.name: {
                    "state": c.state.value,
                    "essential": c.essential,
                    "detail": c.detail,
                    "since": round(c.since, 3),
                }
                for c in sorted(self._components.values(), key=lambda c: c.name)
            },
        }

    def summary(self) -> str:
        """One line for systemd STATUS=."""
        down = [
            c.name for c in self._components.values() if c.state not in (State.UP, State.DEGRADED)
        ]
        degraded = [c.name for c in self._components.values() if c.state is State.DEGRADED]
        parts = [self.phase.value]
        if down:
            parts.append("waiting for " + ", ".join(sorted(down)))
        if degraded:
            parts.append("degraded: " + ", ".join(sorted(degraded)))
        return "; ".join(parts)
