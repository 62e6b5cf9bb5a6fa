"""The account domain's records: immutable msgspec Structs shared by every layer.

Times inside the pure rules are epoch seconds (``float``) so the rules never read
a clock and cost a comparison; records that cross the API carry ``datetime``.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated

import msgspec


class Platform(enum.StrEnum):
    """Upstream providers. Adding one is adding a member here (and its adapter)."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    DASHSCOPE = "dashscope"
    KLING = "kling"


class Kind(enum.StrEnum):
    APIKEY = "apikey"
    OAUTH = "oauth"


class Status(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    ERROR = "error"


class Window(enum.StrEnum):
    """Usage quota windows upstreams report."""

    FIVE_HOURS = "5h"
    SEVEN_DAYS = "7d"


# A group name: short, printable, no separators used in bucket keys.
GroupName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
# A model name or a `*` pattern (`gpt-4o*`, `claude-*-sonnet`); no whitespace.
ModelPattern = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/@*+-]+$")
]
Threshold = Annotated[float, msgspec.Meta(gt=0, le=1)]
Concurrency = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Priority = Annotated[int, msgspec.Meta(ge=-1_000_000, le=1_000_000)]
LoadFactor = Annotated[float, msgspec.Meta(gt=0, le=100_000)]
# Any text but NUL, which PostgreSQL's text cannot hold (it would be a 500, not a 422).
NO_NUL_PATTERN = r"^[^\x00]*$"
AccountName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL_PATTERN)]


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """One upstream account as stored. ``credentials_enc`` is the Fernet ciphertext.

    Credentials are never decrypted into this record: only the select answer
    to an authenticated gateway decrypts them, at the last moment.
    """

    id: str
    name: str
    platform: Platform
    kind: Kind
    groups: tuple[str, ...]
    models: tuple[str, ...] = ()
    priority: int = 0
    concurrency: int = 1
    load_factor: float | None = None
    base_url: str | None = None
    credentials_enc: str | None = None
    status: Status = Status.ACTIVE
    error_reason: str | None = None
    schedulable: bool = True
    expires_at: datetime | None = None
    auto_pause_on_expired: bool = True
    auto_pause_5h_threshold: float | None = None
    auto_pause_7d_threshold: float | None = None
    auto_pause_5h_disabled: bool = False
    auto_pause_7d_disabled: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 1

    @property
    def capacity(self) -> float:
        """What load is measured against: ``load_factor`` when set, else ``concurrency``."""
        return self.load_factor if self.load_factor is not None else float(self.concurrency)


class QuotaWindow(msgspec.Struct, frozen=True, kw_only=True):
    """One reading of one usage window, as an upstream reported it.

    ``used_ratio`` is utilisation as a fraction (0.85 = 85 %; may exceed 1).
    The window resets at ``reset_at`` (epoch s) when known, otherwise
    ``reset_after_s`` after ``observed_at``.
    """

    window: Window
    used_ratio: float
    observed_at: float
    reset_at: float | None = None
    reset_after_s: float | None = None
    window_s: float | None = None

    def resets_at(self) -> float | None:
        if self.reset_at is not None:
            return self.reset_at
        if self.reset_after_s is not None:
            return self.observed_at + self.reset_after_s
        return None


class QuotaPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Global auto-pause defaults (part of the settings document).

    Built-in default: no thresholds, so nothing is paused until an operator
    sets them (or an account carries its own).
    """

    default_5h_threshold: Threshold | None = None
    default_7d_threshold: Threshold | None = None
    # A paused account gets no traffic, hence no fresh readings: a reading older
    # than this no longer counts, so a pause cannot outlive its evidence.
    stale_after_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] = 7200.0


_GLOB_CACHE: dict[str, re.Pattern[str]] = {}


def model_matches(patterns: tuple[str, ...], model: str) -> bool:
    """True if ``model`` is supported: empty = all; exact names; ``*`` matches any run."""
    if not patterns:
        return True
    for p in patterns:
        if "*" not in p:
            if p == model:
                return True
            continue
        rx = _GLOB_CACHE.get(p)
        if rx is None:
            rx = _GLOB_CACHE[p] = re.compile("^" + ".*".join(map(re.escape, p.split("*"))) + "$")
        if rx.match(model):
            return True
    return False
