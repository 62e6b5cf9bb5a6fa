"""The simulator's world: its clock, tasks, per-account counters and fault draws.

Everything here is plain synchronous code called from request handlers on one
trio thread, so no locks are needed. A task's status is a function of the clock:
nothing runs in the background, and advancing the clock (``POST
/_sim/clock/advance``) moves every task and usage window at once.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from .knobs import Knobs

State = Literal["pending", "running", "succeeded", "failed", "cancelled"]
TaskFate = Literal["succeeded", "failed", "partial", "never"]
Fault = Literal["hang", "5xx", "429", "malformed", "truncated"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class SimTask:
    id: str
    platform: str
    account: str
    kind: str
    model: str
    client_key: str | None
    created: float
    running_at: float
    done_at: float | None  # None: never finishes
    outcome: TaskFate
    outputs: int  # outputs asked for (images, samples)
    seconds: float  # video length asked for (0 for images)
    params: dict[str, Any] = field(default_factory=dict)
    cancelled_at: float | None = None
    fetches: int = 0
    fetches_after_terminal: int = 0
    cancels: int = 0
    terminal_served: bool = False

    def state(self, now: float) -> State:
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return "cancelled"
        if now < self.running_at:
            return "pending"
        if self.done_at is None or now < self.done_at:
            return "running"
        return "failed" if self.outcome == "failed" else "succeeded"

    def progress(self, now: float) -> float:
        if self.done_at is None:
            return min(99.0, (now - self.created) % 100)
        span = max(self.done_at - self.created, 1e-9)
        return max(0.0, min(100.0, 100.0 * (now - self.created) / span))

    def produced(self) -> int:
        """Outputs that exist at the end: all, or (partial) at least one fewer."""
        if self.outcome == "partial" and self.outputs > 1:
            return max(1, self.outputs // 2)
        return self.outputs if self.outcome in ("succeeded", "partial") else 0


@dataclass
class AccountStats:
    submits: int = 0
    fetches: int = 0
    cancels: int = 0
    lookups: int = 0
    chats: int = 0
    usage_reads: int = 0
    requests: int = 0
    refused_429: int = 0
    in_flight: int = 0
    concurrent_peak: int = 0
    qps_peak: int = 0
    _second: int = -1
    _in_second: int = 0
    # Request times of the last second, for the qps_limit knob (a sliding window).
    _recent: deque[float] = field(default_factory=deque)

    def public(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class World:
    """Clock, knobs, tasks and counters of one simulator."""

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.rng = random.Random(knobs.seed)
        self._offset = 0.0
        self._ids = itertools.count(1)
        self.tasks: dict[str, SimTask] = {}
        self.by_client: dict[tuple[str, str], list[str]] = {}
        self.accounts: dict[str, AccountStats] = {}
        self.injections: list[dict[str, Any]] = []
        self.totals: dict[str, int] = {}
        # Chat usage windows per account (see _chat.py): account -> (5h, 7d).
        self.usage_windows: dict[str, Any] = {}

    # --- clock ---------------------------------------------------------------
    def now(self) -> float:
        """Simulated monotonic seconds (advanced by the control endpoint)."""
        return time.monotonic() + self._offset

    def wall(self) -> float:
        """Simulated epoch seconds, for reset headers and timestamps."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    def set_knobs(self, knobs: Knobs) -> None:
        if knobs.seed is not None and knobs.seed != self.knobs.seed:
            self.rng.seed(knobs.seed)
        self.knobs = knobs

    # --- tasks ---------------------------------------------------------------
    def new_id(self, prefix: str = "") -> str:
        return f"{prefix}{next(self._ids):08d}-{self.rng.getrandbits(48):012x}"

    def create_task(
        self,
        *,
        platform: str,
        account: str,
        kind: str,
        model: str,
        client_key: str | None,
        outputs: int,
        seconds: float,
        params: dict[str, Any],
        task_id: str | None = None,
    ) -> SimTask:
        k = self.knobs
        now = self.now()
        duration = self._duration()
        outcome = self._outcome()
        task = SimTask(
            id=task_id or self.new_id(),
            platform=platform,
            account=account,
            kind=kind,
            model=model,
            client_key=client_key,
            created=now,
            running_at=now + duration * k.pending_fraction,
            done_at=None if outcome == "never" else now + duration,
            outcome=outcome,
            outputs=outputs,
            seconds=seconds,
            params=params,
        )
        self.tasks[task.id] = task
        if client_key is not None:
            self.by_client.setdefault((platform, client_key), []).append(task.id)
        return task

    def _duration(self) -> float:
        k = self.knobs
        lo, hi = k.duration_min_s, k.duration_max_s
        if k.duration_dist == "fixed" or hi <= lo:
            return lo if k.duration_dist != "fixed" else hi
        if k.duration_dist == "uniform":
            return self.rng.uniform(lo, hi)
        return min(hi, lo + self.rng.expovariate(2.0 / (hi - lo)))

    def _outcome(self) -> TaskFate:
        k = self.knobs
        r = self.rng.random()
        for outcome, rate in (
            ("failed", k.failure_rate),
            ("never", k.never_finish_rate),
            ("partial", k.partial_rate),
        ):
            if r < rate:
                return outcome  # type: ignore[return-value]  # the literal of this row
            r -= rate
        return "succeeded"

    def find(self, platform: str, account: str, task_id: str) -> SimTask | None:
        """The account's task, or None (unknown, another account's, or past retention)."""
        task = self.tasks.get(task_id)
        if task is None or task.platform != platform or task.account != account:
            return None
        end = task.cancelled_at or task.done_at
        if end is not None and self.now() - end > self.knobs.retention_s:
            return None
        return task

    def find_by_client(self, platform: str, account: str, key: str) -> SimTask | None:
        for task_id in reversed(self.by_client.get((platform, key), [])):
            task = self.find(platform, account, task_id)
            if task is not None:
                return task
        return None

    def observe_fetch(self, task: SimTask) -> str:
        """Count a fetch and return the state it reports."""
        state = task.state(self.now())
        task.fetches += 1
        if task.terminal_served:
            task.fetches_after_terminal += 1
        if state in TERMINAL:
            task.terminal_served = True
        return state

    # --- accounts and faults ---------------------------------------------------
    def stats(self, account: str) -> AccountStats:
        found = self.accounts.get(account)
        if found is None:
            found = self.accounts[account] = AccountStats()
        return found

    def begin(self, account: str, op: str) -> AccountStats:
        s = self.stats(account)
        s.requests += 1
        s.in_flight += 1
        s.concurrent_peak = max(s.concurrent_peak, s.in_flight)
        second = math.floor(self.now())
        if second != s._second:
            s._second, s._in_second = second, 0
        s._in_second += 1
        s.qps_peak = max(s.qps_peak, s._in_second)
        attr = {"submit": "submits", "fetch": "fetches", "cancel": "cancels"}.get(op, op + "s")
        if attr == "usages":
            attr = "usage_reads"
        setattr(s, attr, getattr(s, attr, 0) + 1)
        self.totals[op] = self.totals.get(op, 0) + 1
        return s

    def over_qps(self, s: AccountStats) -> bool:
        """Record this request in the account's last second; True when over qps_limit."""
        limit = self.knobs.qps_limit
        if limit is None:
            return False
        now = self.now()
        while s._recent and now - s._recent[0] >= 1.0:
            s._recent.popleft()
        if len(s._recent) >= limit:
            return True
        s._recent.append(now)
        return False

    def draw_fault(self) -> Fault | None:
        k = self.knobs
        if k.burst_5xx > 0:
            self.knobs = _replace(k, burst_5xx=k.burst_5xx - 1)
            return "5xx"
        r = self.rng.random()
        for fault, rate in (
            ("hang", k.hang_rate),
            ("5xx", k.rate_5xx),
            ("429", k.rate_429),
            ("malformed", k.malformed_rate),
            ("truncated", k.truncated_rate),
        ):
            if r < rate:
                return fault  # type: ignore[return-value]  # the literal of this row
            r -= rate
        return None

    def take_injection(self, platform: str, op: str) -> dict[str, Any] | None:
        for item in self.injections:
            if item.get("platform") in (None, platform) and item.get("op") in (None, op):
                item["count"] -= 1
                if item["count"] <= 0:
                    self.injections.remove(item)
                return item
        return None

    def counters(self) -> dict[str, Any]:
        return {
            "totals": dict(self.totals),
            "accounts": {a: s.public() for a, s in self.accounts.items()},
            "tasks": {t.id: task_counters(t, self.now()) for t in self.tasks.values()},
            "clients": {
                f"{platform}:{key}": {"submits": len(ids), "upstream_ids": list(ids)}
                for (platform, key), ids in self.by_client.items()
            },
        }


def task_counters(task: SimTask, now: float) -> dict[str, Any]:
    return {
        "platform": task.platform,
        "account": task.account,
        "client_key": task.client_key,
        "state": task.state(now),
        "outcome": task.outcome,
        "fetches": task.fetches,
        "fetches_after_terminal": task.fetches_after_terminal,
        "cancels": task.cancels,
    }


def _replace(knobs: Knobs, **changes: Any) -> Knobs:
    import msgspec

    return msgspec.structs.replace(knobs, **changes)
