"""The settings document: typed, immutable, with a default for every field.

One sub-struct per consumer, so each subsystem finds its knobs in one place:

========== ===================================== ==============================
section    read by                               what
========== ===================================== ==============================
quota      accounts.rules (auto-pause)           default thresholds, staleness
scoring    scheduler.selection.scoring / select            weights, top-K, probe limit
sticky     scheduler.selection.select (bindings)           TTLs, slow-TTFT spill-over
wait       scheduler.selection.select (no account free)    wait cap, retry interval
leases     scheduler.selection.store                     lease TTL and renew cap
runtime    scheduler.selection.reports                     429/529 cool-downs, EWMA alpha
fallback   snapshot.view (PostgreSQL fallback)   QPS and timeout of DB reads
snapshot   snapshot.builder / view               grace, rebuild and poll periods
========== ===================================== ==============================

The stored document is *partial*: it holds only what an operator set. Reading
merges it onto the defaults (:func:`parse_document`), so a field added in a later
release takes its default without a migration. Updates are JSON merge patches
(RFC 7386, :func:`merge_patch`): objects merge key by key and ``null`` removes a
key, i.e. resets it to its default. Every function here is pure.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import msgspec

from accounts.errors import ValidationFailed
from accounts.model import QuotaPolicy
from accounts.validation import convert

# Scorer weights are relative; 1000 is far past any useful ratio and keeps a typo
# (an extra zero or three) from silently dominating every other term.
Weight = Annotated[float, msgspec.Meta(ge=0, le=1000)]
# Durations a human sets, bounded to what still makes sense (30 days at most).
Seconds = Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)]


class ScoringSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Weights of the account scorer (higher weight = that term matters more)."""

    priority: Weight = 1.0
    load: Weight = 1.0
    error_rate: Weight = 1.0
    ttft: Weight = 0.5
    quota_headroom: Weight = 0.5
    reset_soon: Weight = 0.25
    # Only the best K candidates enter the weighted draw; 7 spreads load without
    # handing traffic to clearly worse accounts.
    top_k: Annotated[int, msgspec.Meta(ge=1, le=100)] = 7
    # Acquire attempts per select before waiting: each costs one Redis round trip.
    probe_limit: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3


class StickySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Session and response-id bindings."""

    session_ttl_s: Seconds = 3600.0
    response_ttl_s: Seconds = 86400.0
    # A bound account whose time to first token exceeds this spills over (binding kept).
    slow_ttft_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)] = 20_000


class WaitSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long a select may wait for a free account."""

    # 0 = never wait: answer "no available accounts" at once.
    max_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 30_000
    # Periodic retry while waiting, on top of release wake-ups (a release on another
    # instance may not wake this one).
    retry_interval_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 250


class LeaseSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Concurrency leases: they expire by themselves unless renewed."""

    ttl_s: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 300.0
    # Renewals may push a lease at most this far ahead (bounds a leaked stream).
    max_ttl_s: Annotated[float, msgspec.Meta(ge=1, le=7 * 86400)] = 3600.0

    def __post_init__(self) -> None:
        if self.max_ttl_s < self.ttl_s:
            raise ValueError("max_ttl_s: must be at least ttl_s")


class RuntimeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How reported outcomes change an account's runtime state."""

    # 529 (overloaded) cool-down.
    overloaded_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0
    # 429 without a usable reset header.
    rate_limited_default_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0
    # Weight of the newest sample in the error-rate / latency / TTFT averages.
    ewma_alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2


class FallbackSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """PostgreSQL reads when the Redis snapshot is unavailable (per instance)."""

    db_qps: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 20.0
    db_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 500


class SnapshotSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Timing of the Redis schedule snapshot."""

    # Readers of a replaced version keep working this long (the old keys' EXPIRE).
    grace_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0
    full_rebuild_s: Annotated[float, msgspec.Meta(ge=10, le=86400)] = 300.0
    view_poll_s: Annotated[float, msgspec.Meta(ge=0.05, le=60)] = 1.0


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole effective settings value: one consistent value per request.

    ``Settings()`` is the built-in default. Its quota thresholds are None, which
    means **no pausing**: nothing is auto-paused until an operator sets a default
    threshold (or an account carries its own).
    """

    quota: QuotaPolicy = msgspec.field(default_factory=QuotaPolicy)
    scoring: ScoringSettings = msgspec.field(default_factory=ScoringSettings)
    sticky: StickySettings = msgspec.field(default_factory=StickySettings)
    wait: WaitSettings = msgspec.field(default_factory=WaitSettings)
    leases: LeaseSettings = msgspec.field(default_factory=LeaseSettings)
    runtime: RuntimeSettings = msgspec.field(default_factory=RuntimeSettings)
    fallback: FallbackSettings = msgspec.field(default_factory=FallbackSettings)
    snapshot: SnapshotSettings = msgspec.field(default_factory=SnapshotSettings)


DEFAULT_SETTINGS = Settings()


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct class behind ``tp`` (unwrapping Annotated / Optional), else None."""
    if get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    return None


def _fields(struct: type[msgspec.Struct]) -> dict[str, Any]:
    hints = get_type_hints(struct, include_extras=True)
    return {name: hints[name] for name in struct.__struct_fields__}


def unknown_keys(document: Mapping[str, Any], struct: type[msgspec.Struct] = Settings) -> list[str]:
    """Dotted paths in ``document`` that name no field (at any depth), sorted.

    Checked here rather than left to msgspec because ``QuotaPolicy`` (owned by the
    accounts layer) does not forbid unknown fields, and a typo in a threshold name
    must not be silently ignored.
    """
    found: list[str] = []
    fields = _fields(struct)
    for key, value in document.items():
        if key not in fields:
            found.append(str(key))
            continue
        sub = _struct_type(fields[key])
        if sub is not None and isinstance(value, Mapping):
            found.extend(f"{key}.{path}" for path in unknown_keys(value, sub))
    return sorted(found)


def parse_document(document: Mapping[str, Any]) -> Settings:
    """Validate a partial document and merge it onto the defaults.

    Raises ValidationFailed naming every unknown key, or the first bad field
    (dotted path, reason) msgspec finds.
    """
    unknown = unknown_keys(document)
    if unknown:
        raise ValidationFailed([(path, "unknown field") for path in unknown])
    return convert(dict(document), Settings)


def merge_patch(document: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge: ``null`` removes a key (back to its default); objects merge.

    Sections left empty by removals are dropped, so the stored document stays the
    smallest description of what differs from the defaults.
    """
    merged = dict(document)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            sub = merge_patch(merged[key], value)
            if sub:
                merged[key] = sub
            else:
                merged.pop(key)
        elif isinstance(value, Mapping):
            sub = merge_patch({}, value)
            if sub:
                merged[key] = sub
        else:
            merged[key] = value
    return merged


def to_document(settings: Settings) -> dict[str, Any]:
    """The full effective value as plain JSON-able data (every field present)."""
    result: dict[str, Any] = msgspec.to_builtins(settings)
    return result


def _nest(path: str, value: Any) -> dict[str, Any]:
    """``"a.b", v`` -> ``{"a": {"b": v}}``, refusing paths that name no field or section."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ValidationFailed.one(path or "$", "not a dotted key like scoring.top_k")
    struct: type[msgspec.Struct] | None = Settings
    for depth, part in enumerate(parts):
        fields = _fields(struct) if struct is not None else {}
        if part not in fields:
            raise ValidationFailed.one(".".join(parts[: depth + 1]), "unknown field")
        struct = _struct_type(fields[part])
    return _nest_unchecked(parts, value)


def _nest_unchecked(parts: list[str], value: Any) -> dict[str, Any]:
    result: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        result = {part: result}
    return result


def parse_scalar(raw: str) -> Any:
    """A CLI value as a TOML scalar (``0.9``, ``true``, ``"x"``, ``[1, 2]``), else the raw text."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def assignment_patch(assignments: list[str]) -> dict[str, Any]:
    """``["scoring.top_k=5", "quota.default_5h_threshold=0.9"]`` as one merge patch.

    Raises ValidationFailed for a missing ``=``, an empty or unknown key. The
    values are checked later, when the merged document is validated.
    """
    patch: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValidationFailed.one(key or item, "expected KEY=VALUE")
        patch = _deep_merge(patch, _nest(key, parse_scalar(raw.strip())))
    return patch


def reset_patch(keys: list[str]) -> dict[str, Any]:
    """A merge patch resetting each dotted key (a field or a whole section) to its default."""
    patch: dict[str, Any] = {}
    for key in keys:
        patch = _deep_merge(patch, _nest(key.strip(), None))
    return patch


def _deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Merge two patches (unlike merge_patch, ``None`` values are kept: they mean reset)."""
    merged = dict(a)
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
