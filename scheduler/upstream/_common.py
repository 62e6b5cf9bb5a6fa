"""What every adapter needs: base URL, credential fields, prices, small parsers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from accounts.model import Account

from .errors import AuthFailed, Rejected


def base_url(account: Account, default: str) -> str:
    """The account's ``base_url`` (the simulator's in tests and dev), else the platform's."""
    return (account.base_url or default).rstrip("/")


def credential(platform: str, account: Account, credentials: Any, field: str) -> str:
    """One string field of the decrypted credentials document; AuthFailed when absent.

    The message names the field, never a value.
    """
    value = credentials.get(field) if isinstance(credentials, Mapping) else None
    if not isinstance(value, str) or not value:
        raise AuthFailed(
            f"account credentials lack `{field}`", platform=platform, account_id=account.id
        )
    return value


class Prices:
    """Billing units per produced unit (a video second, an image), by model.

    Lookup: the configured price of the model, the built-in one, the configured
    ``*``, the built-in default of the request's kind.
    """

    def __init__(
        self,
        builtin: Mapping[str, int],
        by_kind: Mapping[str, int],
        configured: Mapping[str, int],
    ) -> None:
        self._builtin = dict(builtin)
        self._by_kind = dict(by_kind)
        self._configured = dict(configured)

    def unit(self, kind: str, *keys: str) -> int:
        """The price of the first of ``keys`` (most specific first) that has one."""
        for table in (self._configured, self._builtin):
            for key in keys:
                if key in table:
                    return table[key]
        if "*" in self._configured:
            return self._configured["*"]
        return self._by_kind.get(kind, max(self._by_kind.values(), default=0))


def param_number(
    platform: str, params: Mapping[str, Any], name: str, default: float, *, lo: float, hi: float
) -> float:
    """A numeric request parameter (``"5"`` or ``5``) within [lo, hi]; Rejected otherwise."""
    raw = params.get(name, default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise Rejected(f"params.{name}: not a number", platform=platform) from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise Rejected(f"params.{name}: must be between {lo:g} and {hi:g}", platform=platform)
    return value


def as_float(raw: Any) -> float | None:
    """A finite non-negative number from an upstream field (number or numeric string)."""
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None
