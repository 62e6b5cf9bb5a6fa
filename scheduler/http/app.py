"""The control plane's ASGI application: its endpoints on starlette, wrapped once."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from accounts.errors import BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge

from .endpoints import Answer, error_response
from .planes import Routes, Wrapped

__all__ = ["build_app", "read_body"]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest([("content-length", "not an integer")]) from None
        if size > limit:
            raise PayloadTooLarge(f"body of {size} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    # aclosing: leaving the stream early (413) must close the generator now, not
    # leave it to the garbage collector (trio warns; tests turn that into errors).
    async with contextlib.aclosing(request.stream()) as stream:
        async for chunk in stream:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


class _StarletteIncoming:
    """A starlette request as :func:`scheduler.http.endpoints.wrap` reads one."""

    __slots__ = ("_request", "method")

    def __init__(self, request: Request) -> None:
        self._request = request
        self.method = request.method

    @property
    def headers(self) -> Mapping[str, str]:
        return self._request.headers

    @property
    def path_params(self) -> Mapping[str, str]:
        return self._request.path_params

    @property
    def query_params(self) -> Mapping[str, str]:
        return self._request.query_params

    async def read_body(self, limit: int) -> bytes:
        return await read_body(self._request, limit)


def _response(answer: Answer) -> Response:
    response = Response(answer.body, status_code=answer.status, media_type=None)
    if answer.status != 204:
        response.headers["content-type"] = answer.content_type
    for name, value in answer.headers:
        response.headers.append(name, value)
    return response


class _MethodDispatch:
    """The ASGI app of one path: its endpoints by method, 405 with ``Allow`` for any other.

    A class, not a function, so starlette hands it every method (for a function it
    would add HEAD to GET and answer other methods itself, naming one route's).
    """

    def __init__(self, handlers: dict[str, Wrapped]) -> None:
        self._handlers = handlers
        self._allowed = sorted(handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        handler = self._handlers.get(request.method)
        if handler is None:
            allowed = ", ".join(self._allowed)
            answer = error_response(
                MethodNotAllowed(
                    f"{request.method} is not allowed here (allowed: {allowed})",
                    allowed=self._allowed,
                )
            )
        else:
            answer = await handler(_StarletteIncoming(request))
        await _response(answer)(scope, receive, send)


def build_app(routes: Routes) -> Starlette:
    """The starlette app of one plane's routes; handles the ASGI lifespan (hypercorn needs it)."""
    by_path: dict[str, dict[str, Wrapped]] = {}
    for method, path, handler in routes.handlers:
        by_path.setdefault(path, {})[method] = handler
    # One route per path that dispatches on the method itself: a 405 then lists every
    # method of the path in Allow (starlette's per-route 405 would name only one route's).
    starlette_routes = [Route(path, _MethodDispatch(h)) for path, h in by_path.items()]

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return _response(error_response(NotFound("no such route")))

    app = Starlette(routes=starlette_routes, exception_handlers={404: not_found})
    # A trailing slash is another path (404), not an undocumented 307 to this one.
    app.router.redirect_slashes = False
    app.state.openapi = routes.openapi
    return app
