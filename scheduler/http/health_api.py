"""Probes and documents: ``/livez``, ``/readyz``, ``/metrics``, ``/openapi.json``."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from ..core.metrics import CONTENT_TYPE
from .endpoints import Call, Endpoint, json_response


class ComponentState(msgspec.Struct, frozen=True):
    state: str
    essential: bool
    detail: str
    since: float


class Readiness(msgspec.Struct, frozen=True):
    ready: bool
    phase: str
    components: dict[str, ComponentState]


class Liveness(msgspec.Struct, frozen=True):
    live: bool
    phase: str
    loop_lag_s: float


async def livez(call: Call) -> Response:
    health = call.services.health
    body = Liveness(health.live(), health.phase.value, round(health.loop_lag_s, 4))
    return json_response(body, 200 if body.live else 503)


async def readyz(call: Call) -> Response:
    health = call.services.health
    snap: dict[str, Any] = health.snapshot()
    return json_response(snap, 200 if snap["ready"] else 503)


async def metrics(call: Call) -> Response:
    return Response(call.services.metrics.render(), media_type=CONTENT_TYPE)


async def openapi(call: Call) -> Response:
    return json_response(call.request.app.state.openapi)


ENDPOINTS = [
    Endpoint(
        "GET",
        "/livez",
        livez,
        "Liveness: the loop answers and supervision holds",
        response=Liveness,
        errors=(503,),
        tags=("health",),
    ),
    Endpoint(
        "GET",
        "/readyz",
        readyz,
        "Readiness, with each component's state",
        response=Readiness,
        errors=(503,),
        tags=("health",),
    ),
    Endpoint("GET", "/metrics", metrics, "Prometheus metrics (text format)", tags=("health",)),
    Endpoint("GET", "/openapi.json", openapi, "This document", tags=("health",)),
]
