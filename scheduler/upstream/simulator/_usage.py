"""``/_sim/usage``: set an account's usage windows, and when usage reads arrived.

The usage endpoints themselves (``GET /api/oauth/usage``, ``GET
/backend-api/wham/usage``) live in :mod:`._chat`, on the same 5-hour and 7-day
windows chat calls fill. This module adds what the usage prober's tests need
on top of them:

    POST /_sim/usage/accounts/{key}  {"5h"?: {"used_percent"?, "resets_in_s"?},
                                      "7d"?: {...}}: set the account's windows (percent
                                      used; reset that many seconds from now on the
                                      simulator's clock); 422 naming the field, nothing set
    GET  /_sim/usage                  every usage read's arrival (simulator clock, seconds)
                                      per platform: {"anthropic": {"requests": n,
                                      "times": [...]}, "openai": {...}}

Per-account counts and the concurrent peak of usage reads are the simulator's
generic account counters (``usage_reads``, ``concurrent_peak``).
"""

from __future__ import annotations

import math
from collections import deque

import msgspec

from ._chat import windows
from ._common import json_response, split
from ._server import Request, Response
from ._state import World

# Arrival times kept per platform: enough for a 1,000-account rate test, bounded memory.
_TIMES_KEPT = 100_000


class _WindowSpec(msgspec.Struct, forbid_unknown_fields=True):
    used_percent: float | None = None
    resets_in_s: float | None = None


class _Spec(msgspec.Struct, forbid_unknown_fields=True, rename={"five": "5h", "seven": "7d"}):
    five: _WindowSpec | None = None
    seven: _WindowSpec | None = None


def _invalid(field: str, reason: str) -> Response:
    return json_response(
        {
            "error": {
                "code": "invalid_request",
                "message": f"{field}: {reason}",
                "details": {"field": field, "reason": reason},
            }
        },
        422,
    )


class UsageControl:
    """The ``/_sim/usage`` routes and the arrival record they report."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.arrivals: dict[str, deque[float]] = {}
        self.requests: dict[str, int] = {}

    def reset(self) -> None:
        self.arrivals.clear()
        self.requests.clear()

    def arrive(self, platform: str) -> None:
        """A usage read of ``platform`` arrived (called for every one, whatever its answer)."""
        self.arrivals.setdefault(platform, deque(maxlen=_TIMES_KEPT)).append(self.world.now())
        self.requests[platform] = self.requests.get(platform, 0) + 1

    def handle(self, req: Request) -> Response:
        parts = split(req.path)[2:]  # after "_sim", "usage"
        if req.method == "GET" and not parts:
            return json_response(
                {
                    p: {
                        "requests": self.requests.get(p, 0),
                        "times": list(self.arrivals.get(p, ())),
                    }
                    for p in ("anthropic", "openai")
                }
            )
        if req.method == "POST" and len(parts) == 2 and parts[0] == "accounts":
            return self._set(parts[1], req)
        return json_response(
            {"error": {"code": "not_found", "message": "unknown usage control route"}}, 404
        )

    def _set(self, key: str, req: Request) -> Response:
        try:
            spec = msgspec.json.decode(req.body or b"{}", type=_Spec)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _invalid("$", str(exc))
        wanted = {"5h": spec.five, "7d": spec.seven}
        for name, ws in wanted.items():
            for attr, hi in (("used_percent", 1000.0), ("resets_in_s", 365 * 86400.0)):
                value = None if ws is None else getattr(ws, attr)
                if value is not None and not (math.isfinite(value) and 0 <= value <= hi):
                    return _invalid(f"{name}.{attr}", f"a number between 0 and {hi:g}")
        now = self.world.now()
        for w, ws in zip(windows(self.world, key), wanted.values(), strict=True):
            if ws is None:
                continue
            if ws.used_percent is not None:
                w.used = ws.used_percent / 100.0
            if ws.resets_in_s is not None:
                # The window ends start + length: make it end resets_in_s from now.
                w.start = now + ws.resets_in_s - w.length_s
        return json_response({"ok": True})
