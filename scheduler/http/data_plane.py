"""The data plane: one plane's wrapped endpoints served on the lean wire server.

The wire (:mod:`scheduler.http.wire`) hands over complete requests; this module
routes them with :class:`~scheduler.http.routing.Router` over the same
``(method, template)`` pairs the Endpoint table declares and calls the handler
:func:`~scheduler.http.endpoints.wrap` made, so auth, body decoding, the error
mapping and OpenAPI are the control plane's own. An unknown path is 404, a known
path with another method 405 with ``Allow``, both in the project's error body.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl

from accounts.errors import MethodNotAllowed, NotFound

from ._wire_messages import Handler, Request, Response
from .endpoints import error_response
from .planes import Routes, Wrapped
from .routing import NoRoute, Router

__all__ = ["wire_handler"]


class _WireIncoming:
    """A wire request as :func:`scheduler.http.endpoints.wrap` reads one.

    The wire has already read the body within ``http.max_body_bytes`` (413 beyond).
    """

    __slots__ = ("_query", "_request", "method", "path_params")

    def __init__(self, request: Request, path_params: dict[str, str]) -> None:
        self._request = request
        self.method = request.method
        self.path_params = path_params
        self._query: dict[str, str] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return self._request.headers

    @property
    def query_params(self) -> Mapping[str, str]:
        # Decoded as starlette does (blank values kept, the last of a repeated name).
        if self._query is None:
            self._query = dict(parse_qsl(self._request.query, keep_blank_values=True))
        return self._query

    async def read_body(self, limit: int) -> bytes:
        return self._request.body


def wire_handler(routes: Routes) -> Handler:
    """The wire server's handler for ``routes``."""
    router: Router[Wrapped] = Router(routes.handlers)

    async def handle(request: Request) -> Response:
        found = router.match(request.method, request.path)
        if isinstance(found, NoRoute):
            if not found.allowed:
                return error_response(NotFound("no such route"))
            allowed = ", ".join(found.allowed)
            return error_response(
                MethodNotAllowed(
                    f"{request.method} is not allowed here (allowed: {allowed})",
                    allowed=list(found.allowed),
                )
            )
        return await found.target(_WireIncoming(request, found.params))

    return handle
