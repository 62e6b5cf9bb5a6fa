"""Anthropic OAuth accounts: ``GET /api/oauth/usage`` (Claude subscription usage).

Request: ``Authorization: Bearer <access token>``, ``anthropic-beta:
oauth-2025-04-20`` (without it OAuth is refused), ``anthropic-version``. The
token needs the ``user:profile`` scope; an inference-only token (``claude
setup-token``) gets ``403 permission_error "OAuth token does not meet scope
requirement user:profile"``: that account cannot be probed, it is not broken.

Answer (an undocumented endpoint; shapes recorded in ``tests/usage/fixtures/``
with where they were found)::

    {"five_hour":  {"utilization": 24.0, "resets_at": "2026-01-02T19:59:59.600956+00:00"},
     "seven_day":  {"utilization": 36.0, "resets_at": "..."},
     "seven_day_sonnet": {"utilization": 1.0, "resets_at": "..."},
     "seven_day_opus": null, "seven_day_oauth_apps": null, "extra_usage": {...}, ...}

``utilization`` is a percentage (0-100; the response headers carry a 0-1
fraction instead). ``five_hour`` / ``seven_day`` become the 5h / 7d readings;
an explicit ``null`` (or ``resets_at: null``) is a window not running, i.e.
nothing used; an absent key is no reading. ``seven_day_*`` model windows are
kept as extra windows (shown, not used by the rules). Unknown keys are ignored.
"""

from __future__ import annotations

from typing import Any

from accounts.model import Account, QuotaWindow, Window

from ._parse import instant, percent
from .model import ExtraWindow, UsageReport

PLATFORM = "anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com"
PATH = "/api/oauth/usage"
BETA = "oauth-2025-04-20"
_LENGTHS = {
    "five_hour": (Window.FIVE_HOURS, 5 * 3600.0),
    "seven_day": (Window.SEVEN_DAYS, 604800.0),
}


def url(account: Account) -> str:
    base = (account.base_url or DEFAULT_BASE_URL).rstrip("/")
    # An account configured with the messages API root (".../v1") still means this host.
    return base.removesuffix("/v1") + PATH


def headers(token: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {token}",
        "anthropic-beta": BETA,
        "anthropic-version": "2023-06-01",
        "accept": "application/json",
    }


def _window(key: str, value: Any, now: float) -> QuotaWindow | None:
    window, length = _LENGTHS[key]
    if value is None:
        return QuotaWindow(window=window, used_ratio=0.0, observed_at=now, window_s=length)
    if not isinstance(value, dict):
        return None
    used = percent(value.get("utilization"))
    if used is None:
        return None
    return QuotaWindow(
        window=window,
        used_ratio=used / 100.0,
        observed_at=now,
        reset_at=instant(value.get("resets_at"), now),
        window_s=length,
    )


def _extra(key: str, value: Any, now: float) -> ExtraWindow | None:
    if not isinstance(value, dict):
        return None
    used = percent(value.get("utilization"))
    if used is None:
        return None
    return ExtraWindow(
        name=key,
        used_ratio=used / 100.0,
        reset_at=instant(value.get("resets_at"), now),
        window_s=604800.0,
    )


def parse(doc: Any, now: float) -> UsageReport:
    """The readings in an answer; ValueError when it is not a usage document at all."""
    if not isinstance(doc, dict) or not any(k in doc for k in _LENGTHS):
        raise ValueError("not a usage document (no five_hour / seven_day)")
    windows = [w for k in _LENGTHS if k in doc and (w := _window(k, doc[k], now)) is not None]
    extra = [
        x
        for k, v in doc.items()
        if isinstance(k, str) and k.startswith("seven_day_") and (x := _extra(k, v, now))
    ]
    return UsageReport(windows=tuple(windows), extra=tuple(extra), observed_at=now)


def error_message(doc: Any) -> str | None:
    """``error.message`` of an Anthropic error body, when there is one."""
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        message = doc["error"].get("message")
        return message if isinstance(message, str) else None
    return None
