"""Probes and documents: ``/livez``, ``/readyz``, ``/metrics``, ``/openapi.json``."""

from __future__ import annotations

from typing import Any

import msgspec

from ..core.metrics import CONTENT_TYPE
from .endpoints import BOTH, Answer, Call, Endpoint, UtcTime, json_response, utc


class ComponentState(msgspec.Struct, frozen=True):
    state: str
    essential: bool
    detail: str
    # When the component entered this state (RFC 3339, UTC).
    since: UtcTime


class Readiness(msgspec.Struct, frozen=True):
    ready: bool
    phase: str
    components: dict[str, ComponentState]


class Liveness(msgspec.Struct, frozen=True):
    live: bool
    phase: str
    loop_lag_s: float


async def livez(call: Call) -> Answer:
    health = call.services.health
    body = Liveness(health.live(), health.phase.value, round(health.loop_lag_s, 4))
    return json_response(body, 200 if body.live else 503)


async def readyz(call: Call) -> Answer:
    snap: dict[str, Any] = call.services.health.snapshot()
    body = Readiness(
        ready=bool(snap["ready"]),
        phase=str(snap["phase"]),
        components={
            name: ComponentState(c["state"], c["essential"], c["detail"], utc(c["since"]))
            for name, c in snap["components"].items()
        },
    )
    return json_response(body, 200 if body.ready else 503)


async def metrics(call: Call) -> Answer:
    return Answer(200, call.services.metrics.render(), content_type=CONTENT_TYPE)


async def openapi(call: Call) -> Answer:
    # The document of the plane answering: each lists the routes it serves.
    return json_response(call.openapi)


ENDPOINTS = [
    Endpoint(
        "GET",
        "/livez",
        livez,
        "Liveness: the loop answers and supervision holds",
        response=Liveness,
        other_responses={503: Liveness},
        tags=("health",),
        description="503 (with the same body) when the loop lags or supervision failed.",
        planes=BOTH,
    ),
    Endpoint(
        "GET",
        "/readyz",
        readyz,
        "Readiness, with each component's state",
        response=Readiness,
        other_responses={503: Readiness},
        tags=("health",),
        description="503 (with the same body) while warming up, draining or a store is down.",
        planes=BOTH,
    ),
    Endpoint(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics (text format)",
        tags=("health",),
        media_type="text/plain",
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        openapi,
        "This document (OpenAPI 3.1): the routes of the plane (port) answering",
        tags=("health",),
        planes=BOTH,
    ),
]
