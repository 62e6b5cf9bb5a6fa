"""Chat-style endpoints whose answers carry the usage headers selection reports read.

* OpenAI API (``POST /v1/chat/completions``, ``/v1/responses``):
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``.
* Codex on a ChatGPT login (``POST /backend-api/codex/responses``):
  ``x-codex-{primary,secondary}-{used-percent,window-minutes,reset-after-seconds,
  reset-at}`` (primary = the 5-hour window, secondary = the weekly one), and
  ``GET /backend-api/wham/usage`` (``rate_limit.primary_window`` ...).
* Anthropic (``POST /v1/messages``): ``anthropic-ratelimit-unified-{5h,7d}-
  {utilization,reset,status}``, ``-unified-status``, ``-unified-reset``,
  ``-unified-representative-claim``, and ``anthropic-ratelimit-requests-*``;
  ``GET /api/oauth/usage`` (``five_hour`` / ``seven_day``: utilization in percent,
  ``resets_at`` ISO 8601).

Each account (bearer token or ``x-api-key``) has a 5-hour and a 7-day window on
the simulator's clock (lengths times the ``usage_window_scale`` knob). A chat
call adds ``usage_per_call`` to both; a window at 100 % answers 429 with
``Retry-After`` until it resets; advancing the clock resets windows. No streaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ._common import Match, bearer, json_response, split
from ._server import Request, Response
from ._state import World

FIVE_HOURS_S = 5 * 3600.0
SEVEN_DAYS_S = 7 * 86400.0
# The request limit the x-ratelimit-* headers announce (an API-key tier's order of size).
REQUESTS_PER_MINUTE = 10_000


@dataclass
class Window:
    length_s: float
    start: float
    used: float = 0.0  # fraction

    def roll(self, now: float, length_s: float) -> None:
        if now >= self.start + self.length_s:
            self.start, self.used, self.length_s = now, 0.0, length_s

    def reset_in(self, now: float) -> float:
        return max(0.0, self.start + self.length_s - now)


def windows(world: World, account: str) -> tuple[Window, Window]:
    """The account's (5h, 7d) windows, rolled over if they ended."""
    store: dict[str, tuple[Window, Window]] = world.usage_windows
    now, scale = world.now(), world.knobs.usage_window_scale
    found = store.get(account)
    if found is None:
        found = store[account] = (
            Window(FIVE_HOURS_S * scale, now),
            Window(SEVEN_DAYS_S * scale, now),
        )
    found[0].roll(now, FIVE_HOURS_S * scale)
    found[1].roll(now, SEVEN_DAYS_S * scale)
    return found


def _exhausted(ws: tuple[Window, Window]) -> Window | None:
    """The used-up window that resets last (the account is refused until then)."""
    full = [w for w in ws if w.used >= 1.0]
    return max(full, key=lambda w: w.start + w.length_s) if full else None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


class _ChatBase:
    name = ""

    def __init__(self, world: World) -> None:
        self.world = world

    def account(self, req: Request) -> str | None:
        return bearer(req) or req.headers.get("x-api-key") or None

    def _use(self, account: str) -> tuple[tuple[Window, Window], Window | None]:
        ws = windows(self.world, account)
        full = _exhausted(ws)
        if full is None:
            for w in ws:
                w.used = min(1.0, w.used + self.world.knobs.usage_per_call)
        return ws, full

    def headers(self, account: str | None) -> list[tuple[str, str]]:
        return []

    def _refuse(self, account: str, full: Window) -> Response:
        wait = max(1, round(full.reset_in(self.world.now())))
        return self.error(self.world, 429, None, "usage limit reached", account=account, wait=wait)

    def error(
        self,
        world: World,
        status: int,
        code: Any,
        message: str,
        *,
        account: str | None,
        wait: float | None = None,
    ) -> Response:
        headers = self.headers(account) if account else []
        if status == 429:
            headers.append(
                ("retry-after", f"{wait if wait is not None else world.knobs.retry_after_s:g}")
            )
        return json_response(self._error_body(status, code, message), status, headers)

    def _error_body(self, status: int, code: Any, message: str) -> dict[str, Any]:
        raise NotImplementedError


class OpenAISim(_ChatBase):
    name = "openai"

    def match(self, method: str, path: str) -> Match | None:
        parts = tuple(split(path))
        if method == "POST" and parts in (("v1", "chat", "completions"), ("v1", "responses")):
            return "chat", self.chat, (parts[-1],)
        if method == "POST" and parts == ("backend-api", "codex", "responses"):
            return "chat", self.chat, ("codex",)
        if method == "GET" and parts == ("backend-api", "wham", "usage"):
            return "usage", self.usage, ()
        return None

    def headers(self, account: str | None) -> list[tuple[str, str]]:
        """Both families (an error answer does not know which route it refused)."""
        if account is None:
            return []
        return self._codex_headers(account) + self._openai_headers(account)

    def _codex_headers(self, account: str) -> list[tuple[str, str]]:
        now, wall = self.world.now(), self.world.wall()
        out = []
        for slot, w in zip(("primary", "secondary"), windows(self.world, account), strict=True):
            prefix = f"x-codex-{slot}-"
            out += [
                (prefix + "used-percent", f"{w.used * 100:.1f}"),
                (prefix + "window-minutes", str(round(w.length_s / 60))),
                (prefix + "reset-after-seconds", str(round(w.reset_in(now)))),
                (prefix + "reset-at", str(round(wall + w.reset_in(now)))),
            ]
        return out

    def _openai_headers(self, account: str) -> list[tuple[str, str]]:
        five, _seven = windows(self.world, account)
        reset = f"{round(five.reset_in(self.world.now()))}s"
        return [
            ("x-ratelimit-limit-requests", str(REQUESTS_PER_MINUTE)),
            (
                "x-ratelimit-remaining-requests",
                str(max(0, round(REQUESTS_PER_MINUTE * (1 - five.used)))),
            ),
            ("x-ratelimit-reset-requests", reset),
            ("x-ratelimit-limit-tokens", "2000000"),
            ("x-ratelimit-remaining-tokens", str(round(2_000_000 * (1 - five.used)))),
            ("x-ratelimit-reset-tokens", reset),
        ]

    def _error_body(self, status: int, code: Any, message: str) -> dict[str, Any]:
        kind = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(status, "server_error")
        return {"error": {"message": message, "type": kind, "code": code or kind, "param": None}}

    def chat(self, req: Request, account: str, route: str) -> Response:
        _ws, full = self._use(account)
        if full is not None:
            return self._refuse(account, full)
        rid = self.world.new_id()
        usage = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
        if route == "completions":
            body: dict[str, Any] = {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
            }
        else:
            body = {
                "id": f"resp_{rid}",
                "object": "response",
                "status": "completed",
                "output": [
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "ok"}],
                    }
                ],
                "usage": usage,
            }
        headers = (
            self._codex_headers(account) if route == "codex" else self._openai_headers(account)
        )
        return json_response(body, 200, headers)

    def usage(self, req: Request, account: str) -> Response:
        now, wall = self.world.now(), self.world.wall()
        ws = windows(self.world, account)
        slots = {}
        for name, w in zip(("primary_window", "secondary_window"), ws, strict=True):
            slots[name] = {
                "used_percent": round(w.used * 100),
                "limit_window_seconds": round(w.length_s),
                "reset_after_seconds": round(w.reset_in(now)),
                "reset_at": round(wall + w.reset_in(now)),
            }
        full = _exhausted(ws) is not None
        return json_response(
            {
                "plan_type": "plus",
                "rate_limit": {"allowed": not full, "limit_reached": full, **slots},
            }
        )


class AnthropicSim(_ChatBase):
    name = "anthropic"

    def match(self, method: str, path: str) -> Match | None:
        parts = tuple(split(path))
        if method == "POST" and parts == ("v1", "messages"):
            return "chat", self.chat, ()
        if method == "GET" and parts == ("api", "oauth", "usage"):
            return "usage", self.usage, ()
        return None

    def headers(self, account: str | None) -> list[tuple[str, str]]:
        if account is None:
            return []
        now, wall = self.world.now(), self.world.wall()
        ws = windows(self.world, account)
        out = []
        for tag, w in zip(("5h", "7d"), ws, strict=True):
            status = (
                "rejected" if w.used >= 1 else "allowed_warning" if w.used >= 0.8 else "allowed"
            )
            prefix = f"anthropic-ratelimit-unified-{tag}-"
            out += [
                (prefix + "utilization", f"{w.used:.4f}"),
                (prefix + "reset", str(round(wall + w.reset_in(now)))),
                (prefix + "status", status),
            ]
        worst = max(ws, key=lambda w: w.used)
        claim = "five_hour" if worst is ws[0] else "seven_day"
        out += [
            ("anthropic-ratelimit-unified-status", "rejected" if worst.used >= 1 else "allowed"),
            ("anthropic-ratelimit-unified-reset", str(round(wall + worst.reset_in(now)))),
            ("anthropic-ratelimit-unified-representative-claim", claim),
            ("anthropic-ratelimit-requests-limit", "4000"),
            ("anthropic-ratelimit-requests-remaining", str(round(4000 * (1 - ws[0].used)))),
            ("anthropic-ratelimit-requests-reset", _iso(wall + 60)),
        ]
        return out

    def _error_body(self, status: int, code: Any, message: str) -> dict[str, Any]:
        kind = {
            429: "rate_limit_error",
            401: "authentication_error",
            403: "permission_error",
            400: "invalid_request_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        return {"type": "error", "error": {"type": code or kind, "message": message}}

    def chat(self, req: Request, account: str) -> Response:
        _ws, full = self._use(account)
        if full is not None:
            return self._refuse(account, full)
        body = {
            "id": f"msg_{self.world.new_id()}",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 12, "output_tokens": 5},
        }
        return json_response(body, 200, self.headers(account))

    def usage(self, req: Request, account: str) -> Response:
        now, wall = self.world.now(), self.world.wall()
        five, seven = windows(self.world, account)

        def window(w: Window) -> dict[str, Any]:
            return {
                "utilization": round(w.used * 100, 1),
                "resets_at": _iso(wall + w.reset_in(now)),
            }

        return json_response(
            {
                "five_hour": window(five),
                "seven_day": window(seven),
                "seven_day_opus": None,
                "extra_usage": {
                    "is_enabled": False,
                    "monthly_limit": None,
                    "used_credits": None,
                    "utilization": None,
                },
            }
        )
