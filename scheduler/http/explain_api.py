"""Explain over HTTP (admin): why a request would pick an account, or none."""

from __future__ import annotations

from typing import Any

from accounts.validation import convert

from ..selection.explain import Explanation
from ..selection.explain import explain as explain_request
from ..selection.model import SelectRequest
from .endpoints import Call, Endpoint, Scope
from .select_api import selection_services


def _explain_request(call: Call) -> SelectRequest:
    q = call.request.query_params
    data: dict[str, Any] = {k: q[k] for k in ("group", "platform", "model") if k in q}
    for key in ("session_hash", "previous_response_id"):
        if q.get(key):
            data[key] = q[key]
    if "exclude" in q:
        data["exclude"] = [x for x in q["exclude"].split(",") if x]
    return convert(data, SelectRequest)


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
        errors=(404, 422),
        tags=("selection",),
        query={
            "group": "group name (required)",
            "platform": "platform (required)",
            "model": "model name (required)",
            "session_hash": "optional session hash",
            "previous_response_id": "optional previous response id",
            "exclude": "optional comma-separated account ids",
        },
        stores=("redis",),
    ),
]
