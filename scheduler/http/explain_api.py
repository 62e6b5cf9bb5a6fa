"""Explain over HTTP (admin): why a request would pick an account, or none."""

from __future__ import annotations

from typing import Annotated

import msgspec

from accounts.model import GroupName, Platform

from ..selection.explain import Explanation
from ..selection.explain import explain as explain_request
from ..selection.model import ModelName, ResponseId, SelectRequest, SessionHash
from .endpoints import Call, Endpoint, Scope
from .select_api import selection_services


class ExplainQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The hypothetical request, as query parameters (the first three are required)."""

    group: Annotated[GroupName, msgspec.Meta(description="group name")]
    platform: Annotated[Platform, msgspec.Meta(description="platform")]
    model: Annotated[ModelName, msgspec.Meta(description="model name as the gateway sends it")]
    session_hash: Annotated[SessionHash, msgspec.Meta(description="session hash")] | None = None
    previous_response_id: (
        Annotated[ResponseId, msgspec.Meta(description="previous response id")] | None
    ) = None
    # At most 1000 characters: fewer ids than the request's own limit of 1000.
    exclude: (
        Annotated[str, msgspec.Meta(max_length=1000, description="comma-separated account ids")]
        | None
    ) = None


def _explain_request(call: Call) -> SelectRequest:
    q: ExplainQuery = call.query
    exclude = tuple(x for x in (q.exclude or "").split(",") if x)
    return SelectRequest(
        group=q.group,
        platform=q.platform,
        model=q.model,
        session_hash=q.session_hash,
        previous_response_id=q.previous_response_id,
        exclude=exclude,
    )


async def explain(call: Call) -> Explanation:
    """Filter and score for a hypothetical request: every candidate, no lease taken."""
    return await explain_request(selection_services(call).selector, _explain_request(call))


ENDPOINTS = [
    Endpoint(
        "GET",
        "/v1/admin/explain",
        explain,
        "Why would a request pick this account, or none: filter and scores, no lease taken",
        scope=Scope.ADMIN,
        response=Explanation,
        errors=(404, 503),
        tags=("selection",),
        query=ExplainQuery,
        stores=("redis",),
    ),
]
