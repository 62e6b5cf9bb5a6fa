"""OpenAI Codex (ChatGPT OAuth) accounts: ``GET /backend-api/wham/usage``.

Request: ``Authorization: Bearer <access token>`` and ``ChatGPT-Account-Id:
<account id>`` (the workspace), as openai/codex's backend client sends them
(``codex-rs/backend-client/src/client.rs``: ``get_rate_limits_many``).

Answer (``RateLimitStatusPayload``)::

    {"plan_type": "pro",
     "rate_limit": {"allowed": true, "limit_reached": false,
                    "primary_window":   {"used_percent": 3, "limit_window_seconds": 18000,
                                         "reset_after_seconds": 15858, "reset_at": 1767385852},
                    "secondary_window": {"used_percent": 9, "limit_window_seconds": 604800, ...}},
     "additional_rate_limits": [{"limit_name": ..., "metered_feature": ..., "rate_limit": {...}}],
     "code_review_rate_limit": {...}, "credits": {...}}

Windows are mapped by their **length**, never by slot name: the shorter of two
is the 5-hour one (sub2api and Codex's CLI disagree on which slot is which).
The mapping is the passive path's own (:func:`accounts.quota.parse_codex`), fed
the same numbers the ``x-codex-*`` headers carry, so a probe and a response
read one account identically. Other limits (code review, additional ones) are
extra windows.
"""

from __future__ import annotations

from typing import Any

from accounts.model import Account
from accounts.quota import parse_codex

from ._parse import instant, percent, seconds
from .model import ExtraWindow, UsageReport

PLATFORM = "openai"
DEFAULT_BASE_URL = "https://chatgpt.com"
PATH = "/backend-api/wham/usage"
_SLOTS = (("primary", "primary_window"), ("secondary", "secondary_window"))


def url(account: Account) -> str:
    base = (account.base_url or DEFAULT_BASE_URL).rstrip("/")
    # Codex accounts usually point at ".../backend-api/codex": the usage route hangs
    # off "/backend-api", as openai/codex's client normalises it.
    head, sep, _ = base.partition("/backend-api")
    return (head if sep else base) + PATH


def headers(token: str, account_id: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {token}",
        "chatgpt-account-id": account_id,
        "accept": "application/json",
    }


def _as_headers(limit: dict[str, Any]) -> dict[str, str]:
    """The windows of one rate-limit object in the x-codex-* header form."""
    out: dict[str, str] = {}
    for slot, key in _SLOTS:
        w = limit.get(key)
        if not isinstance(w, dict):
            continue
        used = percent(w.get("used_percent"))
        if used is None:
            continue
        out[f"x-codex-{slot}-used-percent"] = repr(used)
        length = seconds(w.get("limit_window_seconds"))
        if length:
            out[f"x-codex-{slot}-window-minutes"] = repr(length / 60.0)
        for field, name in (
            ("reset_at", "reset-at"),
            ("reset_after_seconds", "reset-after-seconds"),
        ):
            value = w.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"x-codex-{slot}-{name}"] = repr(value)
    return out


def _extras(name: str, limit: Any, now: float) -> list[ExtraWindow]:
    if not isinstance(limit, dict):
        return []
    out = []
    for slot, key in _SLOTS:
        w = limit.get(key)
        used = percent(w.get("used_percent")) if isinstance(w, dict) else None
        if used is None or not isinstance(w, dict):
            continue
        out.append(
            ExtraWindow(
                name=f"{name}.{slot}",
                used_ratio=used / 100.0,
                reset_at=instant(w.get("reset_at"), now),
                window_s=seconds(w.get("limit_window_seconds")),
            )
        )
    return out


def parse(doc: Any, now: float) -> UsageReport:
    """The readings in an answer; ValueError when it is not a usage document at all."""
    if not isinstance(doc, dict) or "rate_limit" not in doc:
        raise ValueError("not a usage document (no rate_limit)")
    limit = doc["rate_limit"]
    windows = parse_codex(_as_headers(limit), now) if isinstance(limit, dict) else []
    extra = _extras("code_review", doc.get("code_review_rate_limit"), now)
    more = doc.get("additional_rate_limits")
    for item in more if isinstance(more, list) else []:
        if isinstance(item, dict):
            name = item.get("limit_name") or item.get("metered_feature") or "additional"
            extra += _extras(str(name), item.get("rate_limit"), now)
    return UsageReport(windows=tuple(windows), extra=tuple(extra), observed_at=now)


def error_message(doc: Any) -> str | None:
    """The message of a ChatGPT backend error body (``detail`` or ``error.message``)."""
    if not isinstance(doc, dict):
        return None
    detail = doc.get("detail")
    if isinstance(detail, str):
        return detail
    error = doc.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return None
