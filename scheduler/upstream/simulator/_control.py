"""``/_sim/...``: knobs at run time, counters, clock, injected errors.

GET   /_sim/health             {"ok": true, "platforms": [...]}
GET   /_sim/knobs              every knob
PATCH /_sim/knobs              change some knobs (422 naming the knob; nothing changes)
GET   /_sim/counters           totals, per account, per task, per client key
GET   /_sim/tasks/{id}         one task's counters and state
POST  /_sim/reset              forget tasks and counters (knobs stay)
POST  /_sim/clock/advance      {"seconds": s}: every task and window moves on
POST  /_sim/inject             {"status", "code"?, "message"?, "platform"?, "op"?,
                                "count"?}: the next matching requests answer this
                                error in the platform's own error shape
"""

from __future__ import annotations

from typing import Any

import msgspec

from accounts.errors import ConfigError

from ._common import decode_body, json_response, split
from ._server import Request, Response
from ._state import World, task_counters
from .knobs import build_knobs


def _invalid(field: str, reason: str, status: int = 422) -> Response:
    return json_response(
        {
            "error": {
                "code": "invalid_request",
                "message": f"{field}: {reason}",
                "details": {"field": field, "reason": reason},
            }
        },
        status,
    )


class _Inject(msgspec.Struct, forbid_unknown_fields=True):
    status: int
    # A recorded answer to replay verbatim (any status); else an error in the platform's shape.
    body: Any = None
    code: str | int | None = None
    message: str = "injected by the simulator"
    platform: str | None = None
    op: str | None = None
    count: int = 1


class Control:
    def __init__(self, world: World, platforms: list[str]) -> None:
        self.world = world
        self.platforms = platforms

    def handle(self, req: Request) -> Response:
        parts = split(req.path)[1:]
        route = (req.method, tuple(parts[:2]))
        if route == ("GET", ("health",)):
            return json_response({"ok": True, "platforms": self.platforms})
        if route == ("GET", ("knobs",)):
            return json_response(msgspec.to_builtins(self.world.knobs))
        if req.method in ("PATCH", "POST", "PUT") and parts == ["knobs"]:
            return self._set_knobs(req)
        if route == ("GET", ("counters",)):
            return json_response(self.world.counters())
        if req.method == "GET" and len(parts) == 2 and parts[0] == "tasks":
            task = self.world.tasks.get(parts[1])
            if task is None:
                return json_response(
                    {"error": {"code": "not_found", "message": "no such task"}}, 404
                )
            return json_response(task_counters(task, self.world.now()))
        if route == ("POST", ("reset",)):
            self.world.__init__(self.world.knobs)  # type: ignore[misc]  # a fresh world, same knobs
            return json_response({"ok": True})
        if route == ("POST", ("clock", "advance")):
            return self._advance(req)
        if route == ("POST", ("inject",)):
            return self._inject(req)
        return json_response(
            {"error": {"code": "not_found", "message": "unknown control route"}}, 404
        )

    def _set_knobs(self, req: Request) -> Response:
        body = decode_body(req)
        if body is None:
            return _invalid("$", "body must be a JSON object of knob names to values", 400)
        try:
            knobs = build_knobs(body, self.world.knobs)
        except ConfigError as exc:
            return _invalid(exc.key, exc.reason)
        self.world.set_knobs(knobs)
        return json_response(msgspec.to_builtins(knobs))

    def _advance(self, req: Request) -> Response:
        body = decode_body(req) or {}
        seconds: Any = body.get("seconds")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds <= 365 * 86400
        ):
            return _invalid("seconds", "a number of seconds between 0 and one year")
        self.world.advance(float(seconds))
        return json_response({"ok": True, "now": self.world.now(), "wall": self.world.wall()})

    def _inject(self, req: Request) -> Response:
        try:
            item = msgspec.json.decode(req.body, type=_Inject)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _invalid("$", str(exc))
        lowest = 200 if item.body is not None else 400
        if not lowest <= item.status <= 599:
            return _invalid("status", f"an HTTP status between {lowest} and 599")
        if item.count < 1:
            return _invalid("count", "at least 1")
        self.world.injections.append(msgspec.to_builtins(item))
        return json_response({"ok": True, "pending": len(self.world.injections)})
