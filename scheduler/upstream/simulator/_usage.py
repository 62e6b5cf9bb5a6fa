"""Usage endpoints of subscription (OAuth) accounts, with windows that fill and reset.

* Anthropic: ``GET /api/oauth/usage`` with ``Authorization: Bearer <token>`` and
  ``anthropic-beta: oauth-2025-04-20``. The token is the account. Answers
  ``five_hour`` / ``seven_day`` (plus model-specific weekly windows such as
  ``seven_day_opus``), each ``{"utilization": <percent>, "resets_at": <ISO 8601>}``
  or null; a window not started yet reads ``utilization 0, resets_at null``
  (it starts with the next use, as the real one does). Without the beta header:
  401 ("OAuth authentication is currently not supported"); a token marked
  ``no_scope``: 403 ``permission_error`` ("OAuth token does not meet scope
  requirement user:profile").
* OpenAI Codex (ChatGPT OAuth): ``GET /backend-api/wham/usage`` with a bearer
  token (the account) and ``ChatGPT-Account-Id`` (400 without it). Answers
  ``rate_limit.primary_window`` / ``secondary_window`` with integer
  ``used_percent``, ``limit_window_seconds``, ``reset_after_seconds`` and
  ``reset_at`` (epoch seconds); the windows keep a fixed schedule.

Times are the simulator's clock (``World.wall``), so ``POST /_sim/clock/advance``
resets windows like any other time-driven state; window lengths are multiplied
by the ``usage_window_scale`` knob. Requests go through the simulator's common
path (op ``usage``): latency, faults, injected errors, ``refused_accounts`` (401)
and the per-account counters (``usage_reads``, ``concurrent_peak``) all apply.

Control (``/_sim/usage``)::

    GET  /_sim/usage                  arrivals per platform: {"anthropic": {"requests": n,
                                      "times": [simulated monotonic s, ...]}, "openai": ...}
    POST /_sim/usage/accounts/{key}   {"platform": "anthropic" | "openai",
                                       "windows": {name: {"used_percent"?, "add_percent"?,
                                                          "resets_in_s"?, "length_s"?} | null},
                                       "no_scope"?: bool}
                                      sets (or fills, with add_percent) one account's windows;
                                      a null window is reported as null
    GET  /_sim/usage/accounts/{key}   that account's windows as the endpoint would answer,
                                      its no_scope flag and the last ChatGPT-Account-Id seen
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from ._common import Match, bearer, decode_body, json_response, split
from ._server import Request, Response
from ._state import World

Platform = Literal["anthropic", "openai"]
_FIVE_HOURS_S = 5 * 3600.0
_SEVEN_DAYS_S = 7 * 86400.0
# Window names and their default lengths, per platform, in the order they are answered.
_DEFAULTS: dict[str, dict[str, float | None]] = {
    "anthropic": {
        "five_hour": _FIVE_HOURS_S,
        "seven_day": _SEVEN_DAYS_S,
        "seven_day_oauth_apps": None,
        "seven_day_opus": None,
    },
    "openai": {"primary_window": _FIVE_HOURS_S, "secondary_window": _SEVEN_DAYS_S},
}
# Arrival times kept per platform: enough for a 1,000-account rate test, bounded memory.
_TIMES_KEPT = 100_000
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
BETA = "oauth-2025-04-20"


@dataclass
class SimWindow:
    """One usage window: percent used, and when it resets (simulated epoch s; None: not started)."""

    length_s: float
    used: float = 0.0
    reset_at: float | None = None

    def roll(self, wall: float, fixed: bool) -> None:
        """Apply resets up to ``wall``: a fixed schedule moves on, a rolling one waits for use."""
        if self.reset_at is None or wall < self.reset_at:
            return
        self.used = 0.0
        if fixed:
            periods = math.floor((wall - self.reset_at) / self.length_s) + 1
            self.reset_at += periods * self.length_s
        else:
            self.reset_at = None


@dataclass
class UsageAccount:
    platform: str
    windows: dict[str, SimWindow | None]
    no_scope: bool = False
    # The ChatGPT-Account-Id the last Codex request carried (tests check the adapter sends it).
    last_account_id: str | None = None


@dataclass
class Arrivals:
    requests: int = 0
    times: deque[float] = field(default_factory=lambda: deque(maxlen=_TIMES_KEPT))


class _WindowSpec(msgspec.Struct, forbid_unknown_fields=True):
    used_percent: float | None = None
    add_percent: float | None = None
    resets_in_s: float | None = None
    length_s: float | None = None


class _AccountSpec(msgspec.Struct, forbid_unknown_fields=True):
    platform: Platform
    windows: dict[str, _WindowSpec | None] = msgspec.field(default_factory=dict)
    no_scope: bool | None = None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class UsageWorld:
    """Every account's usage windows and the arrivals per platform, on the world's clock."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.accounts: dict[tuple[str, str], UsageAccount] = {}
        self.arrivals: dict[str, Arrivals] = {"anthropic": Arrivals(), "openai": Arrivals()}

    def account(self, platform: str, key: str) -> UsageAccount:
        found = self.accounts.get((platform, key))
        if found is None:
            scale = self.world.knobs.usage_window_scale
            windows = {
                name: None if length is None else SimWindow(length * scale)
                for name, length in _DEFAULTS[platform].items()
            }
            found = self.accounts[(platform, key)] = UsageAccount(platform, windows)
        return found

    def windows(self, platform: str, key: str) -> dict[str, SimWindow | None]:
        """The account's windows with every reset up to now applied."""
        acct = self.account(platform, key)
        wall = self.world.wall()
        for w in acct.windows.values():
            if w is not None:
                w.roll(wall, fixed=platform == "openai")
        return acct.windows

    def fill(self, platform: str, key: str, percent: float) -> None:
        """Use ``percent`` of every window (what a served request would do); starts idle ones."""
        wall = self.world.wall()
        for w in self.windows(platform, key).values():
            if w is None:
                continue
            if w.reset_at is None:
                w.reset_at = wall + w.length_s
            w.used = min(w.used + percent, 1000.0)

    def arrive(self, platform: str) -> None:
        a = self.arrivals[platform]
        a.requests += 1
        a.times.append(self.world.now())

    # --- answers ------------------------------------------------------------------

    def anthropic_body(self, key: str) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name, w in self.windows("anthropic", key).items():
            if w is None:
                body[name] = None
                continue
            body[name] = {
                "utilization": round(w.used, 1),
                "resets_at": None if w.reset_at is None else _iso(w.reset_at),
            }
        body["extra_usage"] = {
            "is_enabled": False,
            "monthly_limit": None,
            "used_credits": None,
            "utilization": None,
        }
        return body

    def codex_body(self, key: str) -> dict[str, Any]:
        wall = self.world.wall()
        limits: dict[str, Any] = {}
        reached = False
        for name, w in self.windows("openai", key).items():
            if w is None:
                limits[name] = None
                continue
            # A window nobody used yet still reports a reset: it runs on a fixed schedule.
            reset_at = w.reset_at if w.reset_at is not None else wall + w.length_s
            reached = reached or w.used >= 100.0
            limits[name] = {
                "used_percent": round(w.used),
                "limit_window_seconds": round(w.length_s),
                "reset_after_seconds": max(0, math.ceil(reset_at - wall)),
                "reset_at": math.ceil(reset_at),
            }
        return {
            "plan_type": "plus",
            "rate_limit": {"allowed": not reached, "limit_reached": reached, **limits},
            "code_review_rate_limit": None,
            "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
        }

    # --- control ------------------------------------------------------------------

    def set_account(self, key: str, spec: _AccountSpec) -> str | None:
        """Apply ``spec``; the error (field: reason) when a part is invalid, nothing changed."""
        error = _check(spec)
        if error is not None:
            return error
        acct = self.account(spec.platform, key)
        self.windows(spec.platform, key)
        wall = self.world.wall()
        for name, ws in spec.windows.items():
            if ws is None:
                acct.windows[name] = None
                continue
            w = acct.windows.get(name)
            if w is None:
                w = acct.windows[name] = SimWindow(
                    _SEVEN_DAYS_S * self.world.knobs.usage_window_scale
                )
            _apply(w, ws, wall)
        if spec.no_scope is not None:
            acct.no_scope = spec.no_scope
        return None


def _check(spec: _AccountSpec) -> str | None:
    known = _DEFAULTS[spec.platform]
    for name, ws in spec.windows.items():
        if name not in known and not name.startswith("seven_day_"):
            return f"windows.{name}: not a window of {spec.platform}"
        for attr in ("used_percent", "add_percent", "resets_in_s", "length_s"):
            value = None if ws is None else getattr(ws, attr)
            if value is not None and not (math.isfinite(value) and 0 <= value <= 1e9):
                return f"windows.{name}.{attr}: a number between 0 and 1e9"
    return None


def _apply(w: SimWindow, ws: _WindowSpec, wall: float) -> None:
    if ws.length_s is not None:
        w.length_s = max(ws.length_s, 1e-3)
    if ws.used_percent is not None:
        w.used = ws.used_percent
    if ws.add_percent is not None:
        w.used = min(w.used + ws.add_percent, 1000.0)
    if ws.resets_in_s is not None:
        w.reset_at = wall + ws.resets_in_s
    elif w.reset_at is None and w.used > 0:
        w.reset_at = wall + w.length_s


def _invalid(reason: str, status: int = 422) -> Response:
    field_, _, why = reason.partition(": ")
    return json_response(
        {
            "error": {
                "code": "invalid_request",
                "message": reason,
                "details": {"field": field_, "reason": why},
            }
        },
        status,
    )


class UsageControl:
    """``/_sim/usage`` routes (see the module docstring)."""

    def __init__(self, usage: UsageWorld) -> None:
        self.usage = usage

    def handle(self, req: Request) -> Response:
        parts = split(req.path)[2:]  # after "_sim", "usage"
        if req.method == "GET" and not parts:
            return json_response(
                {
                    p: {"requests": a.requests, "times": list(a.times)}
                    for p, a in self.usage.arrivals.items()
                }
            )
        if len(parts) == 2 and parts[0] == "accounts":
            if req.method == "POST":
                return self._set(parts[1], req)
            if req.method == "GET":
                return self._get(parts[1])
        return json_response(
            {"error": {"code": "not_found", "message": "unknown usage control route"}}, 404
        )

    def _get(self, key: str) -> Response:
        found = [(p, a) for (p, k), a in self.usage.accounts.items() if k == key]
        if not found:
            return json_response(
                {"error": {"code": "not_found", "message": "no such account"}}, 404
            )
        platform, acct = found[0]
        body = (
            self.usage.anthropic_body(key)
            if platform == "anthropic"
            else self.usage.codex_body(key)
        )
        return json_response(
            {
                "platform": platform,
                "usage": body,
                "no_scope": acct.no_scope,
                "last_account_id": acct.last_account_id,
            }
        )

    def _set(self, key: str, req: Request) -> Response:
        if decode_body(req) is None:
            return _invalid("$: body must be a JSON object", 400)
        try:
            spec = msgspec.json.decode(req.body, type=_AccountSpec)
        except msgspec.ValidationError as exc:
            return _invalid(f"$: {exc}")
        error = self.usage.set_account(key, spec)
        if error is not None:
            return _invalid(error)
        body = (
            self.usage.anthropic_body(key)
            if spec.platform == "anthropic"
            else self.usage.codex_body(key)
        )
        return json_response({"platform": spec.platform, "usage": body})


class AnthropicUsageSim:
    """``GET /api/oauth/usage``."""

    name = "anthropic"

    def __init__(self, usage: UsageWorld) -> None:
        self.usage = usage

    def match(self, method: str, path: str) -> Match | None:
        if method == "GET" and split(path) == ["api", "oauth", "usage"]:
            self.usage.arrive(self.name)
            return "usage", self.read, ()
        return None

    def account(self, req: Request) -> str | None:
        return bearer(req)

    def read(self, req: Request, account: str) -> Response:
        if BETA not in req.headers.get("anthropic-beta", ""):
            return self.error(
                self.usage.world,
                401,
                None,
                "OAuth authentication is currently not supported.",
                account=account,
            )
        if self.usage.account(self.name, account).no_scope:
            return self.error(
                self.usage.world,
                403,
                None,
                "OAuth token does not meet scope requirement user:profile",
                account=account,
            )
        return json_response(self.usage.anthropic_body(account))

    def error(
        self, world: World, status: int, code: Any, message: str, *, account: str | None
    ) -> Response:
        kind = code or _ANTHROPIC_ERRORS.get(status, "api_error")
        headers = (
            [("retry-after", str(max(1, round(world.knobs.retry_after_s))))]
            if status == 429
            else []
        )
        return json_response(
            {"type": "error", "error": {"type": kind, "message": message}}, status, headers
        )


class CodexUsageSim:
    """``GET /backend-api/wham/usage``."""

    name = "openai"

    def __init__(self, usage: UsageWorld) -> None:
        self.usage = usage

    def match(self, method: str, path: str) -> Match | None:
        if method == "GET" and split(path) == ["backend-api", "wham", "usage"]:
            self.usage.arrive(self.name)
            return "usage", self.read, ()
        return None

    def account(self, req: Request) -> str | None:
        return bearer(req)

    def read(self, req: Request, account: str) -> Response:
        workspace = req.headers.get("chatgpt-account-id", "").strip()
        if not workspace:
            return self.error(
                self.usage.world,
                400,
                "missing_account_id",
                "ChatGPT-Account-Id header is required",
                account=account,
            )
        acct = self.usage.account(self.name, account)
        acct.last_account_id = workspace
        if acct.no_scope:
            return self.error(
                self.usage.world,
                403,
                "forbidden",
                "This account cannot read usage.",
                account=account,
            )
        return json_response(self.usage.codex_body(account))

    def error(
        self, world: World, status: int, code: Any, message: str, *, account: str | None
    ) -> Response:
        headers = (
            [("retry-after", str(max(1, round(world.knobs.retry_after_s))))]
            if status == 429
            else []
        )
        return json_response(
            {"error": {"message": message, "type": "invalid_request_error", "code": code}},
            status,
            headers,
        )
