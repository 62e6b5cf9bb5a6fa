"""Async upstream tasks: recorded first, polled by nurseries, settled exactly once.

Public surface (implementation in private modules):

- :class:`TaskStore` — the only caller of the SQL (``_queries``); record first,
  the compare-and-set write path, settlement with ledger and outbox in one
  transaction, leases, reads, credits.
- :class:`Tasks` and :func:`build` — the facade the API uses and the actors
  (submitter, poller, sweeper) the daemon starts.
- the pure rules: :class:`TaskStatus`, :func:`plan`, :func:`settlement`,
  :class:`PollSchedule` (``_states``).
"""

from ._model import TaskView, uuid7
from ._states import TERMINAL, Billing, PollSchedule, TaskStatus, plan, settlement
from .errors import InsufficientCredit, TaskFinished, TooManyInFlight
from .service import Tasks, build, standalone
from .store import TaskStore

__all__ = [
    "TERMINAL",
    "Billing",
    "InsufficientCredit",
    "PollSchedule",
    "TaskFinished",
    "TaskStatus",
    "TaskStore",
    "TaskView",
    "Tasks",
    "TooManyInFlight",
    "build",
    "plan",
    "settlement",
    "standalone",
    "uuid7",
]
