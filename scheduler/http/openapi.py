"""``/openapi.json``: built from the same :class:`Endpoint` list that routes requests.

Every schema comes from the struct or type that decodes that part of the
request (body, query struct, path and header types) or encodes the answer, so
the document states what the server enforces. Statuses: each operation lists
its success status, what the wrapper can answer before the handler (see
:mod:`scheduler.http.endpoints`) and the endpoint's own ``errors``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from .. import __version__
from .endpoints import Endpoint, ErrorBody

_DESCRIPTIONS = {
    400: "Malformed request (not JSON, bad Content-Length)",
    401: "Missing or invalid bearer token",
    403: "Token lacks the scope",
    404: "Not found",
    409: "Version conflict",
    413: "Body too large",
    415: "Content-Type is not JSON",
    422: "Invalid field (details.errors names each field and reason)",
    428: "A compare-and-set write sent no version",
    500: "Internal error",
    503: "Unavailable",
}


def _statuses(e: Endpoint) -> set[int]:
    """Every status the wrapper and the handler can answer on this route (success excluded)."""
    out = {500, *e.errors, *e.other_responses}
    if e.scope is not None:
        out |= {401, 403}
    if e.reads_body:
        out |= {400, 413}
    if e.body is not None:
        out |= {415, 422}
    if e.query is not None or e.path_types or e.headers:
        out.add(422)
    if e.stores:
        out.add(503)  # a store outage: 503 store_unavailable with Retry-After
    return out


def openapi_document(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    endpoints = list(endpoints)
    types: list[Any] = [ErrorBody]
    for e in endpoints:
        types.extend(t for t in (e.body, e.response, e.query) if t is not None)
        types.extend(e.other_responses.values())
        types.extend(e.path_types.values())
        types.extend(h.type for h in e.headers)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    refs = {id(t): s for t, s in zip(types, schemas, strict=True)}
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e, refs, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "stationmaster", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(
    e: Endpoint, refs: dict[int, dict[str, Any]], components: dict[str, Any]
) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if e.response is not None:
        ok.update(_content(refs[id(e.response)]))
    elif e.media_type != "application/json":
        ok["content"] = {e.media_type: {"schema": {"type": "string"}}}
    elif e.status != 204:
        ok.update(_content({"type": "object"}))
    op: dict[str, Any] = {
        "summary": e.summary,
        "operationId": e.handler.__name__,
        "tags": list(e.tags),
        "responses": {str(e.status): ok},
    }
    for status in sorted(_statuses(e)):
        other = e.other_responses.get(status)
        schema = refs[id(other)] if other is not None else refs[id(ErrorBody)]
        op["responses"][str(status)] = {
            "description": _DESCRIPTIONS.get(status, "Error"),
            **_content(schema),
        }
    description = [e.description] if e.description else []
    if e.scope is not None:
        op["security"] = [{"bearer": []}]
        description.append(f"Needs a bearer token with the `{e.scope.value}` scope.")
    else:
        op["security"] = []
        description.append("Needs no token.")
    op["description"] = "\n\n".join(description)
    if e.body is not None:
        body_schema = refs[id(e.body)]
        op["requestBody"] = {
            "required": _has_required(body_schema, components),
            **_content(body_schema),
        }
    params = _parameters(e, refs, components)
    if params:
        op["parameters"] = params
    return op


def _parameters(
    e: Endpoint, refs: dict[int, dict[str, Any]], components: dict[str, Any]
) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": refs[id(e.path_types[name])] if name in e.path_types else {"type": "string"},
        }
        for name in _path_params(e.path)
    ]
    if e.query is not None:
        struct = _resolve(refs[id(e.query)], components)
        required = set(struct.get("required", ()))
        for name, prop in struct.get("properties", {}).items():
            schema = dict(prop)
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
            if "description" in schema:
                param["description"] = schema.pop("description")
            param["schema"] = schema
            params.append(param)
    for h in e.headers:
        params.append(
            {
                "name": h.name,
                "in": "header",
                "required": h.required,
                "description": h.description,
                "schema": refs[id(h.type)],
            }
        )
    return params


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = components[ref.rsplit("/", 1)[1]]
    return resolved


def _has_required(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    resolved = _resolve(schema, components)
    return resolved.get("type") != "object" or bool(resolved.get("required"))


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]
