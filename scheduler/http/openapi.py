"""``/openapi.json``: built from the same :class:`Endpoint` list that routes requests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from .. import __version__
from .endpoints import Endpoint, ErrorBody

_COMMON_ERRORS = {
    400: "Malformed request",
    401: "Missing or invalid bearer token",
    403: "Token lacks the scope",
    404: "Not found",
    409: "Version conflict",
    413: "Body too large",
    422: "Invalid field",
    500: "Internal error",
    503: "Unavailable",
}


def openapi_document(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    endpoints = list(endpoints)
    types: list[Any] = [ErrorBody]
    for e in endpoints:
        types.extend(t for t in (e.body, e.response) if t is not None)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        op: dict[str, Any] = {
            "summary": e.summary,
            "operationId": e.handler.__name__,
            "tags": list(e.tags),
            "responses": {
                str(e.status): _content(refs[e.response]) if e.response else {"description": "OK"},
            },
        }
        if e.response:
            op["responses"][str(e.status)]["description"] = "OK"
        statuses = {400, 500, *e.errors, *((401, 403) if e.scope else ())}
        # A route that needs a store answers its outage with 503 store_unavailable.
        statuses |= {*((413, 422) if e.body else ()), *((503,) if e.stores else ())}
        for status in sorted(statuses):
            op["responses"][str(status)] = {
                "description": _COMMON_ERRORS.get(status, "Error"),
                **_content(refs[ErrorBody]),
            }
        if e.scope is not None:
            op["security"] = [{"bearer": []}]
            op["description"] = f"Needs a bearer token with the `{e.scope.value}` scope."
        if e.body is not None:
            op["requestBody"] = {"required": True, **_content(refs[e.body])}
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(e.path)
        ] + [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": desc,
            }
            for name, desc in e.query.items()
        ]
        if params:
            op["parameters"] = params
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "stationmaster", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]
