"""The settings document: typed, immutable, with a default for every field.

One sub-struct per consumer, so each subsystem finds its knobs in one place:

========== ===================================== ==============================
section    read by                               what
========== ===================================== ==============================
quota      accounts.rules (auto-pause)           default thresholds, staleness
scoring    scheduler.selection.scoring / select            weights, top-K, probe limit
sticky     scheduler.selection.select (bindings)           TTLs, slow-TTFT spill-over
wait       scheduler.selection.select (no account free)    wait cap, retry interval
leases     scheduler.selection.reports (renew)       lease TTL, renew cap, lifetime cap
runtime    scheduler.selection.reports                     429/529 cool-downs, EWMA alpha
fallback   snapshot.view (PostgreSQL fallback)   QPS and timeout of DB reads
snapshot   snapshot.builder / view               grace, rebuild and poll periods
usage      scheduler.usage (the prober)          probe schedule, rates, backoff
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
from accounts.model import Platform, QuotaPolicy
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
    """Concurrency leases: they expire by themselves unless renewed.

    No rule ties the three together (every value allowed alone is allowed with the
    others): a renew grants ``min(asked, max_ttl_s)`` from now, cut at grant +
    ``max_lifetime_s``, and never moves an expiry earlier.
    """

    # A select's lease, and a renew that asks for no particular TTL.
    ttl_s: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 300.0
    # One renewal may push a lease at most this far ahead of now.
    max_ttl_s: Annotated[float, msgspec.Meta(ge=1, le=7 * 86400)] = 3600.0
    # No renewal extends a lease past this long after it was granted: a stream whose
    # gateway keeps renewing a leaked lease frees the slot after this at the latest.
    max_lifetime_s: Annotated[float, msgspec.Meta(ge=1, le=30 * 86400)] = 6 * 3600.0


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


Rate = Annotated[float, msgspec.Meta(gt=0, le=10_000)]


class UsageSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The quota usage prober (``scheduler.usage``): when to read an account's usage, how fast.

    Rates hold across every instance (they are counted in Redis); intervals count
    from the account's newest reading, passive or probed, so busy accounts (whose
    responses carry readings) are not probed at all.
    """

    enabled: bool = True
    # Probes per second, all platforms together and per platform (``platform_rates``
    # overrides the latter for one platform); ``burst`` probes may go back to back.
    global_rate_per_s: Rate = 5.0
    platform_rate_per_s: Rate = 2.0
    platform_rates: dict[str, Rate] = msgspec.field(default_factory=dict)
    burst: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    # A paused account is probed this long after its window's reset (the upstream
    # may take a moment to roll its counters over).
    after_reset_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 20.0
    # A paused account whose reset is unknown (or far away) is probed this often:
    # well below quota.stale_after_s, or the prober is no faster than staleness.
    paused_interval_s: Seconds = 300.0
    # Within this share of a threshold an account is "near" and probed more often.
    near_margin: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    near_interval_s: Seconds = 600.0
    # Accounts with no traffic and readings well below their thresholds.
    idle_interval_s: Seconds = 3600.0
    # Never probe one account more often than this, whatever the rule says (all instances).
    min_interval_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 15.0
    # Failed probes back off exponentially from failure_backoff_s up to the max.
    failure_backoff_s: Seconds = 30.0
    failure_backoff_max_s: Seconds = 3600.0
    # An account whose token cannot read its usage (403 missing scope) is asked again this late.
    cannot_probe_retry_s: Seconds = 6 * 3600.0
    # Due times are pushed back by up to this share of their interval, so accounts
    # read together do not stay in lock step; a starting instance spreads its first
    # look at every account over start_spread_s (no thundering herd after a restart).
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    start_spread_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    # Probes in flight per instance, and how long one may take.
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    # The per-account probe lock; must outlive a probe (timeout_s) with room to spare.
    lock_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    # How often the prober re-reads the account list from PostgreSQL.
    accounts_refresh_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0

    def __post_init__(self) -> None:
        if self.lock_ttl_s < self.timeout_s + 1.0:
            raise ValueError("lock_ttl_s: must exceed timeout_s by at least 1 s")
        if self.failure_backoff_max_s < self.failure_backoff_s:
            raise ValueError("failure_backoff_max_s: must be at least failure_backoff_s")
        known = {p.value for p in Platform}
        for name in self.platform_rates:
            if name not in known:
                raise ValueError(
                    f"platform_rates: `{name}` is not a platform ({', '.join(sorted(known))})"
                )

    def platform_rate(self, platform: str) -> float:
        return self.platform_rates.get(platform, self.platform_rate_per_s)


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
    usage: UsageSettings = msgspec.field(default_factory=UsageSettings)


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
