"""The ``stationmaster`` command: the entry point and one module per command group.

Top layer: may import every room and the composition root (``daemon``); nothing
imports it. ``dev`` and ``embedded`` run the daemon on private servers.
"""

from .entry import main

__all__ = ["main"]
