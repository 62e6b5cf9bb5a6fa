"""The tasks subsystem's errors, under the one root (see :mod:`accounts.errors`)::

StationmasterError
├── InsufficientCredit   the owner's balance cannot cover the hold; 402
├── TooManyInFlight      the owner's in-flight limit is reached; 429
└── TaskFinished         the task is terminal (cancel of a finished task); 409
"""

from __future__ import annotations

from accounts.errors import StationmasterError


class InsufficientCredit(StationmasterError):
    code = "insufficient_credit"
    status = 402

    def __init__(self, owner: str, *, balance: int, needed: int) -> None:
        super().__init__(
            f"balance {balance} cannot cover the hold of {needed}",
            details={"owner": owner, "balance": balance, "needed": needed},
        )


class TooManyInFlight(StationmasterError):
    code = "too_many_tasks"
    status = 429

    def __init__(self, owner: str, *, in_flight: int, limit: int) -> None:
        super().__init__(
            f"{in_flight} tasks in flight (limit {limit})",
            details={"owner": owner, "in_flight": in_flight, "limit": limit, "retry_after_s": 5},
        )


class TaskFinished(StationmasterError):
    code = "task_finished"
    status = 409

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(
            f"task {task_id} is {status}: nothing to change",
            details={"task_id": task_id, "status": status},
        )
