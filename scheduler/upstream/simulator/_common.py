"""Pieces every simulated platform uses."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from ._server import Request, Response
from ._state import World

# An endpoint answers synchronously: the world is a function of the clock.
Endpoint = Callable[..., Response]
Match = tuple[str, Endpoint, tuple[str, ...]]  # (op, endpoint, path arguments)


class PlatformSim(Protocol):
    name: str

    def match(self, method: str, path: str) -> Match | None: ...

    def account(self, req: Request) -> str | None:
        """The account the request authenticates as; None when it carries no credential."""
        ...

    def error(
        self, world: World, status: int, code: Any, message: str, *, account: str | None
    ) -> Response: ...


def json_response(
    payload: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(status, msgspec.json.encode(payload), headers or [])


def decode_body(req: Request) -> dict[str, Any] | None:
    """The JSON object in the body, or None when it is not one."""
    try:
        data = msgspec.json.decode(req.body)
    except msgspec.DecodeError:
        return None
    return data if isinstance(data, dict) else None


def bearer(req: Request) -> str | None:
    raw = req.headers.get("authorization", "")
    scheme, _, token = raw.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def number(raw: Any, default: float, lo: float, hi: float) -> float | None:
    """A numeric field (number or numeric string) within [lo, hi]; None when invalid."""
    if raw is None:
        return default
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and lo <= value <= hi else None


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p]
