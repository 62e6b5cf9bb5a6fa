"""The ASGI application: every module's endpoints, wrapped once."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from accounts.errors import NotFound, StationmasterError

from ..services import Services
from . import accounts_api, buckets_api, explain_api, health_api, select_api, settings_api
from .endpoints import Endpoint, Outages, TokenTable, error_response, wrap
from .openapi import openapi_document


def all_endpoints() -> list[Endpoint]:
    """Every endpoint of the daemon, in documentation order."""
    return [
        *health_api.ENDPOINTS,
        *accounts_api.ENDPOINTS,
        *settings_api.ENDPOINTS,
        *select_api.ENDPOINTS,
        *explain_api.ENDPOINTS,
        *buckets_api.ENDPOINTS,
    ]


def build_app(services: Services, endpoints: Iterable[Endpoint] | None = None) -> Starlette:
    """The starlette app for ``services``; handles the ASGI lifespan (hypercorn needs it)."""
    endpoints = list(all_endpoints() if endpoints is None else endpoints)
    cfg = services.config
    tokens = TokenTable(cfg.auth.admin_tokens, cfg.auth.gateway_tokens)
    outages = Outages()
    routes = [
        Route(
            e.path,
            wrap(
                e,
                services=services,
                tokens=tokens,
                max_body=cfg.http.max_body_bytes,
                metrics=services.metrics,
                outages=outages,
            ),
            methods=[e.method],
        )
        for e in endpoints
    ]

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return error_response(NotFound("no such route"))

    async def not_allowed(_request: Request, _exc: Exception) -> Response:
        exc = StationmasterError("method not allowed on this route")
        exc.code, exc.status = "method_not_allowed", 405
        return error_response(exc)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    app.state.services = services
    app.state.openapi = openapi_document(endpoints)
    return app
