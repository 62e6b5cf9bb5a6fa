"""Tunable numbers: a fixed value, or a callable answering the current one.

The daemon wires the snapshot's periods and limits to the settings snapshot
(``lambda: settings.get().snapshot.grace_s``), so an operator's change applies
without a restart; tools and tests pass plain numbers.
"""

from __future__ import annotations

from collections.abc import Callable

Tunable = float | Callable[[], float]


def current(tunable: Tunable) -> float:
    """The value ``tunable`` stands for right now."""
    return float(tunable() if callable(tunable) else tunable)
