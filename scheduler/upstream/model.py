"""The seam between tasks and upstream platforms: records and the adapter protocol.

Every platform's statuses map into :class:`UpstreamState`; every answer is one of
three frozen records. Adapters are stateless apart from caches that can be
rebuilt (a Kling JWT), so one instance serves every account of its platform.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

import msgspec

from accounts.model import Account

__all__ = ["Adapter", "UpstreamRequest", "UpstreamState", "UpstreamStatus", "UpstreamTask"]


class UpstreamState(enum.StrEnum):
    """Our mapping of every upstream status."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # The upstream does not know the id (never existed, or expired after retention).
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({UpstreamState.SUCCEEDED, UpstreamState.FAILED, UpstreamState.CANCELLED})


class UpstreamRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What to submit. ``task_id`` is OUR id, sent as the external id where supported."""

    task_id: str
    platform: str
    model: str
    kind: str  # "video" | "image" | ...
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class UpstreamTask(msgspec.Struct, frozen=True, kw_only=True):
    """Answer to submit and lookup: the upstream's id and where the task stands."""

    upstream_id: str
    state: UpstreamState
    # Billing units, when the answer changes what the request will cost.
    estimate: int | None = None


class UpstreamStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Answer to fetch."""

    state: UpstreamState
    progress: float | None = None  # 0..100
    result_urls: tuple[str, ...] = ()
    failure_reason: str | None = None
    # What was actually produced: video_duration (s), video_count, image_count, ...
    usage: dict[str, float] = msgspec.field(default_factory=dict)
    # The platform's recommended delay before the next poll, when it says.
    poll_after_s: float | None = None


class Adapter(Protocol):
    """One platform. Every method raises only :mod:`scheduler.upstream.errors` classes."""

    platform: str
    supports_cancel: bool
    # Can find a task by OUR id (Kling's external_task_id): a crashed submit is recoverable.
    supports_lookup: bool
    poll_interval_s: float
    qps_per_account: float | None

    async def submit(
        self, account: Account, credentials: Any, req: UpstreamRequest
    ) -> UpstreamTask: ...

    async def fetch(
        self, account: Account, credentials: Any, upstream_id: str
    ) -> UpstreamStatus: ...

    async def cancel(self, account: Account, credentials: Any, upstream_id: str) -> None:
        """Cancel now; ``Rejected`` when the platform cannot (any more, or at all)."""
        ...

    async def lookup(self, account: Account, credentials: Any, task_id: str) -> UpstreamTask | None:
        """The task submitted with OUR ``task_id``; None when the upstream has none."""
        ...

    def estimate_cost(self, req: UpstreamRequest) -> int:
        """Billing units (integer) the request will cost if everything asked is produced."""
        ...

    def final_cost(self, req: UpstreamRequest, status: UpstreamStatus) -> int:
        """Billing units for what was actually produced (partial success costs less)."""
        ...
