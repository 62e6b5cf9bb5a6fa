"""The simulator's knobs: one frozen struct, validated as a whole.

Set at start (``stationmaster simulate --knobs FILE.toml --set name=value``) and
at run time (``PATCH /_sim/knobs`` with a JSON object of the knobs to change).
An unknown knob, a wrong type or an out-of-range value is refused with the knob
and the reason, and nothing changes.

Fault rates are drawn from one uniform number per request, in this order: hang,
5xx, 429, malformed body, truncated body; so each rate is exactly the share of
requests that get that fault, and their sum must not exceed 1.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from accounts.errors import ConfigError
from accounts.validation import field_error

Rate = Annotated[float, msgspec.Meta(ge=0, le=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)]
Op = Literal["submit", "fetch", "cancel", "lookup", "chat", "usage"]
ALL_OPS: tuple[Op, ...] = ("submit", "fetch", "cancel", "lookup", "chat", "usage")
_FAULT_RATES = ("hang_rate", "rate_5xx", "rate_429", "malformed_rate", "truncated_rate")


class Knobs(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every knob with its default: a well-behaved upstream whose tasks take 2-5 s."""

    # RNG seed for reproducible runs; None = fresh randomness.
    seed: int | None = None
    # How long a task takes from submit to its end, and how it is distributed
    # between min and max ("exponential": min + Exp(mean = (max - min) / 2), capped).
    duration_min_s: Seconds = 2.0
    duration_max_s: Seconds = 5.0
    duration_dist: Literal["fixed", "uniform", "exponential"] = "uniform"
    # The first part of a task's duration it spends PENDING (queued), then RUNNING.
    pending_fraction: Rate = 0.2
    # Task outcomes, drawn once at submit: failed, never finishing (RUNNING forever),
    # partial success (some outputs of a multi-output task fail; with one output
    # it is a plain success).
    failure_rate: Rate = 0.0
    never_finish_rate: Rate = 0.0
    partial_rate: Rate = 0.0
    # Faults per request (see the module docstring for how they are drawn).
    hang_rate: Rate = 0.0
    rate_5xx: Rate = 0.0
    rate_429: Rate = 0.0
    malformed_rate: Rate = 0.0
    truncated_rate: Rate = 0.0
    # The next N requests (with faults on) answer 503, then the burst is over.
    burst_5xx: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    # What a 429 says: Retry-After and the reset headers.
    retry_after_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    # Added before every answer: latency_s + uniform(0, latency_jitter_s).
    latency_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 0.0
    latency_jitter_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 0.0
    # A submit creates the task and then never answers (the ambiguous case).
    submit_timeout_after_create_rate: Rate = 0.0
    # Requests per second per account beyond which the simulator answers 429
    # (DashScope documents ~20 for task queries); None = no limit.
    qps_limit: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # Which operations the per-request faults apply to.
    faults_on: tuple[Op, ...] = ALL_OPS
    # How long finished tasks stay queryable (DashScope keeps about 24 h), then UNKNOWN.
    retention_s: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    # Accounts (API key / access key) refused with 401.
    refused_accounts: tuple[str, ...] = ()
    # Kling access key -> secret key, to verify API tokens. An access key not
    # listed has the secret ``sim-secret-<access key>`` padded with dots to 32 bytes.
    kling_secrets: dict[str, str] = msgspec.field(default_factory=dict)
    # Chat calls fill each account's 5h and 7d usage windows by this share per call.
    usage_per_call: Rate = 0.01
    # Usage window lengths are 5 h and 7 d times this (short windows for dev and tests).
    usage_window_scale: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0

    def __post_init__(self) -> None:
        if self.duration_min_s > self.duration_max_s:
            raise ValueError("duration_min_s: must not exceed duration_max_s")
        if sum(getattr(self, name) for name in _FAULT_RATES) > 1.0 + 1e-9:
            raise ValueError(f"rate_429: {' + '.join(_FAULT_RATES)} must be at most 1")
        if self.failure_rate + self.never_finish_rate + self.partial_rate > 1.0 + 1e-9:
            raise ValueError(
                "failure_rate: failure_rate + never_finish_rate + partial_rate must be at most 1"
            )


KNOB_NAMES = frozenset(f.name for f in msgspec.structs.fields(Knobs))


def build_knobs(values: Mapping[str, Any], base: Knobs | None = None) -> Knobs:
    """``base`` (defaults when None) with ``values`` applied; ConfigError(knob, reason)."""
    if not isinstance(values, Mapping):
        raise ConfigError("knobs", "must be an object of knob names to values")
    data = msgspec.to_builtins(base or Knobs())
    for name, value in values.items():
        if name not in KNOB_NAMES:
            raise ConfigError(str(name), f"unknown knob (known: {', '.join(sorted(KNOB_NAMES))})")
        data[name] = value
    try:
        return msgspec.convert(data, Knobs)
    except (msgspec.ValidationError, ValueError) as exc:
        key, reason = field_error(exc)
        raise ConfigError(key or "knobs", reason) from None


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``name=value`` pairs from ``--set``; values read as TOML (``0.3``, ``["fetch"]``)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(item, "expected name=value")
        try:
            out[name] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[name] = raw  # a bare string
    return out


def load_knobs_file(path: str | Path) -> dict[str, Any]:
    """The knobs of a TOML file (top-level keys, or a ``[knobs]`` table)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    knobs = data.get("knobs", data)
    if not isinstance(knobs, dict):
        raise ConfigError(f"{path}: knobs", "must be a table")
    return knobs
