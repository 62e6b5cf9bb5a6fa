"""The task state machine and its pure rules: transitions, settlement, poll schedule.

Nothing here does I/O or reads a clock: callers pass ``now`` and a random source,
so the rules are tested exhaustively (hypothesis) without servers::

    SUBMITTING ──► PENDING ──► RUNNING ──► SUCCEEDED | FAILED | CANCELLED | TIMED_OUT
        │             └───────────┴──────► (any terminal)
        └──► FAILED  (submit rejected, or its outcome unknown)

Terminal states are final: :func:`plan` never leaves one, and the migration's
trigger refuses it in the database too. A change that reaches a terminal state
carries its :class:`Settlement`; only the writer whose compare-and-set wins
commits it, so a task settles exactly once.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class TaskStatus(enum.StrEnum):
    SUBMITTING = "submitting"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT}
)
IN_FLIGHT = frozenset({TaskStatus.SUBMITTING, TaskStatus.PENDING, TaskStatus.RUNNING})

# The whole table. A status not listed as a source has no way out (the terminal ones).
TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.SUBMITTING: frozenset({TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.FAILED}),
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, *TERMINAL}),
    TaskStatus.RUNNING: frozenset(TERMINAL),
}


def allowed(old: TaskStatus, new: TaskStatus) -> bool:
    """True if ``old -> new`` is a legal move (staying put is not a move)."""
    return new in TRANSITIONS.get(old, frozenset())


# --- what happened to a task ------------------------------------------------------


class Event(enum.Enum):
    """Where a proposed change comes from (a poll, the submit, a user, the sweeper)."""

    SUBMITTED = "submitted"  # the upstream accepted the submit (or a lookup found it)
    OBSERVED = "observed"  # a poll (or a refresh) read the upstream status
    CANCELLED = "cancelled"  # the owner asked to cancel
    DEADLINE = "deadline"  # the sweeper found the task past its deadline
    SUBMIT_FAILED = "submit_failed"  # rejected, or outcome unknown past the bound


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fields of a task that a poll may change: compared to decide "unchanged"."""

    status: TaskStatus
    progress: float | None = None
    result_urls: tuple[str, ...] = ()
    failure_reason: str | None = None
    upstream_id: str | None = None


@dataclass(frozen=True, slots=True)
class Billing:
    """The billing context stored at submit, so settlement never re-derives a price.

    ``price`` is credits per billing unit, ``ratio_permille`` the group's ratio
    (1000 = 1.0), ``hold`` what is held now (the estimate, adjusted once if the
    submit answer changed it). Integers only: no floats in money.
    """

    price: int
    ratio_permille: int
    hold: int

    def credits(self, units: int) -> int:
        """Credits for ``units`` billing units, rounded up (never undercharge by rounding)."""
        return -(-units * self.price * self.ratio_permille // 1000)

    def as_json(self) -> dict[str, int]:
        return {"price": self.price, "ratio_permille": self.ratio_permille, "hold": self.hold}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Billing:
        return cls(int(data["price"]), int(data["ratio_permille"]), int(data["hold"]))


@dataclass(frozen=True, slots=True)
class Settlement:
    """Ledger entries of a terminal transition: the hold lifted, the final cost charged.

    ``release`` is always the whole hold (+ on the balance); ``capture`` the charge
    (- on the balance, SUCCEEDED only, 0 otherwise), never more than the hold: the
    hold is the most an owner can be charged. Net effect: balance = top-ups minus
    captures once nothing is held.
    """

    release: int
    capture: int


def settlement(status: TaskStatus, billing: Billing, final_units: int | None) -> Settlement:
    """What settles a task ending in ``status``: a success charges its final units."""
    if not status.terminal:
        raise ValueError(f"{status} is not terminal: nothing to settle")
    if status is TaskStatus.SUCCEEDED:
        units = max(0, final_units or 0)
        return Settlement(release=billing.hold, capture=min(billing.credits(units), billing.hold))
    return Settlement(release=billing.hold, capture=0)


@dataclass(frozen=True, slots=True)
class Change:
    """A proposed new snapshot; ``settles`` is True iff it enters a terminal state."""

    before: Snapshot
    after: Snapshot
    event: Event

    @property
    def settles(self) -> bool:
        return self.after.status.terminal and not self.before.status.terminal

    @property
    def status_changed(self) -> bool:
        return self.after.status is not self.before.status


@dataclass(frozen=True, slots=True)
class Proposal:
    """What an event says the task should look like (fields left None are kept)."""

    event: Event
    status: TaskStatus
    progress: float | None = None
    result_urls: tuple[str, ...] = ()
    failure_reason: str | None = None
    upstream_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def plan(current: Snapshot, proposal: Proposal) -> Change | None:
    """The change ``proposal`` makes to ``current``; None when it changes nothing.

    None also when the move is illegal: a terminal task stays as it is (a late
    poll, a cancel after success), and an upstream that goes back from running
    to pending does not move the task back; its progress is still taken.
    """
    if current.status.terminal:
        return None
    status = proposal.status
    if status is not current.status and not allowed(current.status, status):
        status = current.status
    after = Snapshot(
        status=status,
        progress=_progress(current, proposal, status),
        result_urls=proposal.result_urls or current.result_urls,
        failure_reason=(proposal.failure_reason if status.terminal else None)
        or current.failure_reason,
        upstream_id=proposal.upstream_id or current.upstream_id,
    )
    if after == current:
        return None
    return Change(current, after, proposal.event)


def _progress(current: Snapshot, proposal: Proposal, status: TaskStatus) -> float | None:
    if status is TaskStatus.SUCCEEDED:
        return 100.0
    if proposal.progress is None or math.isnan(proposal.progress):
        return current.progress
    value = min(100.0, max(0.0, proposal.progress))
    # Progress never goes backwards: an upstream replica a moment behind must not
    # make a stored 60 % read 40 % (and cost a write).
    if current.progress is not None and value < current.progress:
        return current.progress
    return value


# --- when to poll next ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """Backoff by age: young tasks are polled at the platform's pace, old ones less.

    ``steps`` maps an age (s) to a multiplier of the base interval; consecutive
    errors double the delay up to ``max_interval_s``; jitter spreads a batch of
    tasks claimed together so they do not poll in lock step.
    """

    base_interval_s: float = 2.0
    max_interval_s: float = 60.0
    steps: tuple[tuple[float, float], ...] = ((60.0, 1.0), (300.0, 2.0), (1800.0, 4.0))
    old_multiplier: float = 8.0
    jitter: float = 0.2

    def delay(
        self,
        age_s: float,
        *,
        platform_interval_s: float | None = None,
        retry_after_s: float | None = None,
        errors: int = 0,
        rand: Callable[[], float],
    ) -> float:
        """Seconds until the next poll; never less than ``retry_after_s``.

        ``platform_interval_s`` is the platform's recommended interval (it replaces
        the base when larger); ``errors`` counts consecutive failed polls.
        """
        base = max(self.base_interval_s, platform_interval_s or 0.0)
        mult = next((m for limit, m in self.steps if age_s < limit), self.old_multiplier)
        delay = base * mult * (2.0 ** min(max(errors, 0), 16))
        delay = min(delay, max(self.max_interval_s, base))
        delay *= 1.0 - self.jitter + 2.0 * self.jitter * rand()
        if retry_after_s is not None and retry_after_s > delay:
            delay = retry_after_s
        return max(delay, 0.0)
