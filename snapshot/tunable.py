"""Tunables: a setting given as a number or as a callable read at each use.

The daemon wires tunables to the settings snapshot (``lambda: settings.get().x``),
so a settings change takes effect on the next use without restarting the actor.
"""

from __future__ import annotations

from collections.abc import Callable

# A number, or a callable returning the current value (wired to the settings snapshot).
Tunable = float | Callable[[], float]


def current(tunable: Tunable) -> float:
    """The tunable's value now."""
    return float(tunable() if callable(tunable) else tunable)
