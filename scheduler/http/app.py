"""The ASGI application: every module's endpoints, wrapped once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from accounts.errors import MethodNotAllowed, NotFound

from ..services import Services
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
from .endpoints import Endpoint, Outages, TokenTable, error_response, wrap
from .openapi import openapi_document


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


class _MethodDispatch:
    """The ASGI app of one path: its endpoints by method, 405 with ``Allow`` for any other.

    A class, not a function, so starlette hands it every method (for a function it
    would add HEAD to GET and answer other methods itself, naming one route's).
    """

    def __init__(self, handlers: dict[str, Callable[[Request], Awaitable[Response]]]) -> None:
        self._handlers = handlers
        self._allowed = sorted(handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        handler = self._handlers.get(request.method)
        if handler is None:
            allowed = ", ".join(self._allowed)
            response = error_response(
                MethodNotAllowed(
                    f"{request.method} is not allowed here (allowed: {allowed})",
                    allowed=self._allowed,
                )
            )
        else:
            response = await handler(request)
        await response(scope, receive, send)


def build_app(services: Services, endpoints: Iterable[Endpoint] | None = None) -> Starlette:
    """The starlette app for ``services``; handles the ASGI lifespan (hypercorn needs it)."""
    endpoints = list(all_endpoints() if endpoints is None else endpoints)
    cfg = services.config
    tokens = TokenTable(cfg.auth.admin_tokens, cfg.auth.gateway_tokens)
    outages = Outages()
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for e in endpoints:
        by_path.setdefault(e.path, {})[e.method] = wrap(
            e,
            services=services,
            tokens=tokens,
            max_body=cfg.http.max_body_bytes,
            metrics=services.metrics,
            outages=outages,
        )
    # One route per path that dispatches on the method itself: a 405 then lists every
    # method of the path in Allow (starlette's per-route 405 would name only one route's).
    routes = [Route(path, _MethodDispatch(handlers)) for path, handlers in by_path.items()]

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return error_response(NotFound("no such route"))

    app = Starlette(routes=routes, exception_handlers={404: not_found})
    # A trailing slash is another path (404), not an undocumented 307 to this one.
    app.router.redirect_slashes = False
    app.state.services = services
    app.state.openapi = openapi_document(endpoints)
    return app
