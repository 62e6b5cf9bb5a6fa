"""Selection over HTTP: select, release, renew (gateway) and explain (admin).

``POST /v1/select`` is the only answer that carries an account's decrypted
credentials, and only to a gateway token. Decrypted values are registered with
:func:`scheduler.core.logs.register_secret` the first time they are seen
(:mod:`scheduler.selection.credentials`), so they never reach a log line or an
error message. A select whose answer cannot be built (credentials no key opens)
gives its lease back before answering the error.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

import msgspec
import trio

from accounts.errors import NoAccountAvailable, StoreUnavailable
from accounts.model import Kind, Platform

from ..selection.reports import RELEASE_HEADERS_DOC, Released, ReleaseOutcome, Renewed
from ..selection.select import SelectRequest
from ..selection.store import LEASE_ID_PATTERN, parse_lease_id
from .endpoints import (
    DATA,
    Call,
    Endpoint,
    Scope,
    UtcTime,
    error_response,
    utc,
    utc_or_none,
)

LeaseId = Annotated[str, msgspec.Meta(pattern=LEASE_ID_PATTERN, max_length=200)]
# The largest TTL a renew can ask for: the highest leases.max_ttl_s settings allow.
MAX_RENEW_TTL_S = 7 * 86400

# Giving back a lease whose answer failed is one script call; never hold the error longer.
_GIVE_BACK_S = 2.0


class SelectedAccount(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    platform: Platform
    kind: Kind
    base_url: str | None
    credentials: Any


class SelectAnswer(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: str
    # RFC 3339, UTC (Redis server time); renew before it for long streams.
    lease_expires_at: UtcTime
    # The same deadline as a duration from the grant, for gateways that prefer one.
    ttl_ms: int
    account: SelectedAccount
    sticky: bool
    path: str
    attempts: int
    waited_ms: int


class RenewBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Seconds from now; absent = leases.ttl_s. Capped (and the cap reported) at
    # leases.max_ttl_s and at the lease's lifetime cap; a lease is never shortened.
    ttl_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_RENEW_TTL_S)] | None = None


class RenewAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The renewed lease. ``clamped_by`` names the cap that cut the TTL asked for."""

    lease_id: str
    expires_at: UtcTime
    # What was granted: from now (Redis time) to expires_at.
    ttl_ms: int
    requested_ttl_ms: int
    clamped_by: Literal["max_ttl_s", "max_lifetime_s"] | None
    max_ttl_s: float
    max_lifetime_s: float
    # Grant + max_lifetime_s: no renewal goes past it (None for leases granted before
    # the grant time was recorded in the id).
    lifetime_ends_at: UtcTime | None


def selection_services(call: Call) -> Any:
    s = call.services
    if getattr(s, "selector", None) is None:
        raise NoAccountAvailable(
            "selection is not running", bucket="", exclusions={}, retry_after_s=5
        )
    return s


async def select(call: Call) -> Any:
    s = selection_services(call)
    try:
        sel = await s.selector.select(call.body)
    except NoAccountAvailable as exc:
        return error_response(exc)
    account = sel.account
    try:
        credentials = s.credentials.get(account)
    except BaseException:
        # The lease is taken but the answer cannot be built (a credential no configured
        # key opens, mid-rotation): give the slot back now rather than after ttl_s.
        with trio.move_on_after(_GIVE_BACK_S, shield=True), contextlib.suppress(StoreUnavailable):
            await s.selector.give_back(sel.lease_id)
        raise
    granted_ms = parse_lease_id(sel.lease_id).granted_ms
    ttl_ms = round(sel.expires_at * 1000) - granted_ms if granted_ms is not None else 0
    return SelectAnswer(
        lease_id=sel.lease_id,
        lease_expires_at=utc(sel.expires_at),
        ttl_ms=ttl_ms,
        account=SelectedAccount(
            id=account.id,
            name=account.name,
            platform=account.platform,
            kind=account.kind,
            base_url=account.base_url,
            credentials=credentials,
        ),
        sticky=sel.sticky,
        path=sel.path,
        attempts=sel.attempts,
        waited_ms=round(sel.waited_s * 1000),
    )


async def release(call: Call) -> Released:
    lease_id = call.path_params["lease_id"]
    released: Released = await selection_services(call).reporter.release(lease_id, call.body)
    return released


async def renew(call: Call) -> RenewAnswer:
    lease_id = call.path_params["lease_id"]
    r: Renewed = await selection_services(call).reporter.renew(lease_id, call.body.ttl_s)
    return RenewAnswer(
        lease_id=r.lease_id,
        expires_at=utc(r.expires_at),
        ttl_ms=round((r.expires_at - r.now) * 1000),
        requested_ttl_ms=round(r.requested_ttl_s * 1000),
        clamped_by=r.clamped_by,  # type: ignore[arg-type]  # one of the two cap names
        max_ttl_s=r.max_ttl_s,
        max_lifetime_s=r.max_lifetime_s,
        lifetime_ends_at=utc_or_none(r.lifetime_ends_at),
    )


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/select",
        select,
        "Pick an account and lease one of its concurrency slots",
        scope=Scope.GATEWAY,
        body=SelectRequest,
        response=SelectAnswer,
        errors=(404, 503),
        tags=("selection",),
        description="404 `not_found`: the bucket (group/platform) has no account; 404 "
        "`model_not_served`: no account of the bucket supports the model "
        "(`details.served_models` lists what it serves), so retrying cannot help; 503 "
        "`no_available_accounts`: some account could serve it but none can now "
        "(`Retry-After` and `details.retry_after_s` say when to try again).",
        stores=("redis",),
        planes=DATA,
    ),
    Endpoint(
        "POST",
        "/v1/leases/{lease_id}/release",
        release,
        "Release a lease and report the request's outcome",
        scope=Scope.GATEWAY,
        body=ReleaseOutcome,
        response=Released,
        errors=(404, 503),
        tags=("selection",),
        path_types={"lease_id": LeaseId},
        description=RELEASE_HEADERS_DOC,
        stores=("redis",),
        planes=DATA,
    ),
    Endpoint(
        "POST",
        "/v1/leases/{lease_id}/renew",
        renew,
        "Extend a lease (long streams)",
        scope=Scope.GATEWAY,
        body=RenewBody,
        response=RenewAnswer,
        errors=(404, 503),
        tags=("selection",),
        path_types={"lease_id": LeaseId},
        description="Extends the lease to now + `ttl_s` (default `leases.ttl_s`), capped at "
        "`leases.max_ttl_s` and at grant + `leases.max_lifetime_s`; never earlier than "
        "its current expiry. `clamped_by` names the cap that cut the TTL asked for.",
        stores=("redis",),
        planes=DATA,
    ),
]
