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
from typing import Any

import msgspec
import trio

from accounts.errors import NoAccountAvailable, StoreUnavailable
from accounts.model import Kind, Platform

from ..selection.reports import Released, ReleaseOutcome, Renewed
from ..selection.select import SelectRequest
from .endpoints import Call, Endpoint, Scope, error_response

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
    # Epoch seconds (Redis server time); renew before it for long streams.
    lease_expires_at: float
    account: SelectedAccount
    sticky: bool
    path: str
    attempts: int
    waited_ms: int


class RenewBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ttl_s: float | None = None


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
    return SelectAnswer(
        lease_id=sel.lease_id,
        lease_expires_at=sel.expires_at,
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
    lease_id = call.request.path_params["lease_id"]
    released: Released = await selection_services(call).reporter.release(lease_id, call.body)
    return released


async def renew(call: Call) -> Renewed:
    lease_id = call.request.path_params["lease_id"]
    renewed: Renewed = await selection_services(call).reporter.renew(lease_id, call.body.ttl_s)
    return renewed


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/select",
        select,
        "Pick an account and lease one of its concurrency slots",
        scope=Scope.GATEWAY,
        body=SelectRequest,
        response=SelectAnswer,
        errors=(404, 422, 503),
        tags=("selection",),
        stores=("redis",),
    ),
    Endpoint(
        "POST",
        "/v1/leases/{lease_id}/release",
        release,
        "Release a lease and report the request's outcome",
        scope=Scope.GATEWAY,
        body=ReleaseOutcome,
        response=Released,
        errors=(404, 422),
        tags=("selection",),
        stores=("redis",),
    ),
    Endpoint(
        "POST",
        "/v1/leases/{lease_id}/renew",
        renew,
        "Extend a lease (long streams)",
        scope=Scope.GATEWAY,
        body=RenewBody,
        response=Renewed,
        errors=(404, 422),
        tags=("selection",),
        stores=("redis",),
    ),
]
