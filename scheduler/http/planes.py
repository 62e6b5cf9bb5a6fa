"""The two planes' endpoint lists, each wrapped once into transport-neutral handlers.

Both transports take what :func:`wrap_plane` gives: the control plane's starlette
app (:mod:`scheduler.http.app`) and the data plane's wire handler
(:mod:`scheduler.http.data_plane`). Tokens and the outage log are shared, so a
Redis outage is logged once whichever port meets it first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import (
    accounts_api,
    buckets_api,
    explain_api,
    health_api,
    outbox_api,
    select_api,
    settings_api,
    tasks_api,
    usage_api,
)
from .endpoints import Answer, Endpoint, Incoming, Outages, Plane, TokenTable, wrap
from .openapi import openapi_document

Wrapped = Callable[[Incoming], Awaitable[Answer]]


def all_endpoints() -> list[Endpoint]:
    """Every endpoint of the daemon, in documentation order."""
    return [
        *health_api.ENDPOINTS,
        *accounts_api.ENDPOINTS,
        *usage_api.ENDPOINTS,
        *settings_api.ENDPOINTS,
        *select_api.ENDPOINTS,
        *explain_api.ENDPOINTS,
        *buckets_api.ENDPOINTS,
        *tasks_api.ENDPOINTS,
        *outbox_api.ENDPOINTS,
    ]


@dataclass(frozen=True, slots=True)
class Routes:
    """One plane: ``(method, path template, handler)`` triples and its OpenAPI document."""

    plane: Plane
    handlers: list[tuple[str, str, Wrapped]]
    openapi: dict[str, Any]


@dataclass(slots=True)
class Shared:
    """What both planes share: the services, the token table and the outage log."""

    services: Any
    tokens: TokenTable
    outages: Outages

    @classmethod
    def of(cls, services: Any) -> Shared:
        auth = services.config.auth
        return cls(services, TokenTable(auth.admin_tokens, auth.gateway_tokens), Outages())


def wrap_plane(plane: Plane, endpoints: Iterable[Endpoint], shared: Shared) -> Routes:
    """The endpoints of ``plane`` (those listing it in ``planes``), wrapped once."""
    mine = [e for e in endpoints if plane in e.planes]
    openapi = openapi_document(mine)
    services = shared.services
    handlers = [
        (
            e.method,
            e.path,
            wrap(
                e,
                services=services,
                tokens=shared.tokens,
                max_body=services.config.http.max_body_bytes,
                metrics=services.metrics,
                outages=shared.outages,
                openapi=openapi,
            ),
        )
        for e in mine
    ]
    return Routes(plane, handlers, openapi)
