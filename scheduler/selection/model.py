"""Selection's messages: what the gateway asks, what it gets, one round's bookkeeping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Protocol

import msgspec

from accounts.model import Account, GroupName, Platform
from accounts.rules import Reason
from snapshot.keys import Bucket
from snapshot.schedule import BucketSnapshot

SessionHash = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
ResponseId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[!-~]+$")]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[!-~]+$")]


class SelectRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the gateway asks: an account for this group, platform and model."""

    group: Annotated[GroupName, msgspec.Meta(examples=["default"])]
    platform: Annotated[Platform, msgspec.Meta(examples=["openai"])]
    model: Annotated[ModelName, msgspec.Meta(examples=["gpt-4o"])]
    session_hash: SessionHash | None = None
    previous_response_id: ResponseId | None = None
    # Accounts the gateway already tried for this request.
    exclude: Annotated[tuple[str, ...], msgspec.Meta(max_length=1000)] = ()
    # How long the gateway lets us wait for a free slot (capped by settings).
    wait_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 0


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    """A granted lease on the chosen account, and how it was found."""

    lease_id: str
    expires_at: float
    account: Account
    # "response" (previous_response_id binding), "session" (session binding) or "pool".
    path: str
    sticky: bool
    attempts: int
    waited_s: float


class BucketSnapshots(Protocol):
    """Where bucket snapshots come from (``snapshot.view.ScheduleView`` in the daemon)."""

    def get(self, bucket: Bucket) -> BucketSnapshot | None: ...

    async def ensure(self, bucket: Bucket) -> BucketSnapshot: ...


class Round(msgspec.Struct, kw_only=True):
    """One pass over bindings and pool: its result and what it learned.

    ``excluded`` holds this request's own exclusions (its ``exclude`` list, bound
    accounts that failed, acquire refusals); the pool filter's verdicts live in
    the pool cache and ``pool_reasons`` points at them for the "none" answer.
    """

    excluded: dict[str, Reason] = msgspec.field(default_factory=dict)
    pool_reasons: Mapping[str, Reason] = msgspec.field(default_factory=dict)
    # The same verdicts counted by reason (kept by the pool cache, so no pass over them).
    pool_counts: Mapping[Reason, int] = msgspec.field(default_factory=dict)
    attempts: int = 0
    selection: Selection | None = None
    sticky_reasons: list[tuple[str, Reason]] = msgspec.field(default_factory=list)

    def all_exclusions(self) -> dict[str, Reason]:
        """Every excluded candidate with its reason (the request's own reason wins)."""
        return {**self.pool_reasons, **self.excluded}


def selection_of(lease_id: str, expires_at: float, account: Account, path: str) -> Selection:
    return Selection(
        lease_id=lease_id,
        expires_at=expires_at,
        account=account,
        path=path,
        sticky=path != "pool",
        attempts=0,
        waited_s=0.0,
    )
