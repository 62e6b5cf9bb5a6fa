"""The settings document's pure rules: defaults, validation, merge patches, dotted keys."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.errors import ValidationFailed
from snapshot.settings import (
    DEFAULT_SETTINGS,
    Settings,
    assignment_patch,
    merge_patch,
    parse_document,
    reset_patch,
    to_document,
)

# One out-of-range (or wrong-typed) value per field: (dotted key, bad value).
BAD_VALUES: list[tuple[str, Any]] = [
    ("quota.default_5h_threshold", 0),
    ("quota.default_5h_threshold", 1.01),
    ("quota.default_7d_threshold", -0.5),
    ("quota.default_7d_threshold", "high"),
    ("quota.stale_after_s", 0),
    ("scoring.priority", -1),
    ("scoring.load", 1001),
    ("scoring.load", "x"),
    ("scoring.error_rate", -0.1),
    ("scoring.ttft", 1e9),
    ("scoring.quota_headroom", -2),
    ("scoring.reset_soon", True),
    ("scoring.top_k", 0),
    ("scoring.top_k", 2.5),
    ("scoring.probe_limit", 21),
    ("sticky.session_ttl_s", 0),
    ("sticky.response_ttl_s", 31 * 86400),
    ("sticky.slow_ttft_ms", 0),
    ("wait.max_wait_ms", -1),
    ("wait.retry_interval_ms", 5),
    ("leases.ttl_s", 0.5),
    ("leases.max_ttl_s", 8 * 86400),
    ("leases.max_lifetime_s", 0),
    ("runtime.overloaded_s", 0),
    ("runtime.rate_limited_default_s", -5),
    ("runtime.ewma_alpha", 0),
    ("runtime.ewma_alpha", 1.5),
    ("fallback.db_qps", 0),
    ("fallback.db_timeout_ms", 0),
    ("snapshot.grace_s", 0.5),
    ("snapshot.full_rebuild_s", 5),
    ("snapshot.view_poll_s", 0.01),
    ("usage.enabled", "yes"),
    ("usage.global_rate_per_s", 0),
    ("usage.platform_rate_per_s", 10_001),
    ("usage.platform_rates", {"nope": 1.0}),
    ("usage.burst", 0),
    ("usage.after_reset_s", -1),
    ("usage.paused_interval_s", 0),
    ("usage.near_margin", 1.5),
    ("usage.near_interval_s", 31 * 86400),
    ("usage.idle_interval_s", -3),
    ("usage.min_interval_s", 86401),
    ("usage.failure_backoff_s", 0),
    ("usage.failure_backoff_max_s", 1),
    ("usage.cannot_probe_retry_s", 0),
    ("usage.jitter", 2),
    ("usage.start_spread_s", 3601),
    ("usage.concurrency", 0),
    ("usage.timeout_s", 121),
    ("usage.lock_ttl_s", 5),
    ("usage.accounts_refresh_s", 0.5),
]


def _leaf_paths(struct: type[msgspec.Struct] = Settings, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for field in msgspec.structs.fields(struct):
        sub = field.type if isinstance(field.type, type) else None
        if sub is not None and issubclass(sub, msgspec.Struct):
            paths |= _leaf_paths(sub, f"{prefix}{field.name}.")
        else:
            paths.add(prefix + field.name)
    return paths


def test_every_field_has_a_default_and_quota_means_no_pausing() -> None:
    assert parse_document({}) == DEFAULT_SETTINGS == Settings()
    assert DEFAULT_SETTINGS.quota.default_5h_threshold is None
    assert DEFAULT_SETTINGS.quota.default_7d_threshold is None
    assert DEFAULT_SETTINGS.scoring.top_k == 7
    assert DEFAULT_SETTINGS.scoring.probe_limit == 3


def test_every_field_has_a_bad_value_case() -> None:
    """The range table below covers every leaf field of the document."""
    assert {key for key, _ in BAD_VALUES} == _leaf_paths()


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_out_of_range_values_name_the_field(key: str, value: Any) -> None:
    """Bad input tried: each field below its minimum, above its maximum, or of the wrong type."""
    section, name = key.split(".")
    with pytest.raises(ValidationFailed) as info:
        parse_document({section: {name: value}})
    assert info.value.errors[0].field == key


def test_no_cross_field_rule_and_unknown_keys_are_refused() -> None:
    """Every value valid alone is valid together (the published schema can say so): a
    max_ttl_s below ttl_s only caps renewals. Bad input tried: unknown top-level/nested
    keys, a section as a scalar."""
    leases = parse_document({"leases": {"ttl_s": 600, "max_ttl_s": 300}}).leases
    assert (leases.ttl_s, leases.max_ttl_s) == (600, 300)
    with pytest.raises(ValidationFailed) as info:
        parse_document({"quota": {"default_5h_treshold": 0.9}, "nope": 1})
    assert [e.field for e in info.value.errors] == ["nope", "quota.default_5h_treshold"]
    assert {e.reason for e in info.value.errors} == {"unknown field"}
    with pytest.raises(ValidationFailed) as info:
        parse_document({"scoring": 5})
    assert info.value.errors[0].field == "scoring"
    # Removed in issue 10 (nothing counted waiting selects): now an unknown field.
    with pytest.raises(ValidationFailed) as info:
        parse_document({"scoring": {"queue": 1.0}})
    assert [(e.field, e.reason) for e in info.value.errors] == [("scoring.queue", "unknown field")]


def test_partial_document_merges_onto_defaults() -> None:
    value = parse_document({"quota": {"default_5h_threshold": 0.9}, "scoring": {"top_k": 3}})
    assert value.quota.default_5h_threshold == 0.9
    assert value.quota.stale_after_s == DEFAULT_SETTINGS.quota.stale_after_s
    assert value.scoring.top_k == 3
    assert value.sticky == DEFAULT_SETTINGS.sticky
    # The full document round-trips into the same value.
    assert parse_document(to_document(value)) == value


def test_dotted_assignments_and_resets() -> None:
    """Bad input tried: no '=', empty key, empty path segment, unknown section/field, too deep."""
    patch = assignment_patch(
        ["quota.default_5h_threshold=0.9", "scoring.top_k=5", "wait.max_wait_ms=1_000"]
    )
    assert patch == {
        "quota": {"default_5h_threshold": 0.9},
        "scoring": {"top_k": 5},
        "wait": {"max_wait_ms": 1000},
    }
    assert reset_patch(["scoring", "quota.default_5h_threshold"]) == {
        "scoring": None,
        "quota": {"default_5h_threshold": None},
    }
    for bad, field in [
        (["scoring.top_k"], "scoring.top_k"),
        (["=3"], "$"),
        (["scoring..top_k=1"], "scoring..top_k"),
        (["nope.x=1"], "nope"),
        (["scoring.nope=1"], "scoring.nope"),
        (["scoring.top_k.deeper=1"], "scoring.top_k.deeper"),
    ]:
        with pytest.raises(ValidationFailed) as info:
            assignment_patch(bad)
        assert info.value.errors[0].field == field


def test_merge_patch_null_resets_and_drops_empty_sections() -> None:
    stored = {"scoring": {"top_k": 3}, "quota": {"default_5h_threshold": 0.9}}
    merged = merge_patch(stored, {"scoring": {"top_k": None}, "wait": {"max_wait_ms": 5}})
    assert merged == {"quota": {"default_5h_threshold": 0.9}, "wait": {"max_wait_ms": 5}}
    assert stored == {"scoring": {"top_k": 3}, "quota": {"default_5h_threshold": 0.9}}


_scalars = st.one_of(st.integers(-5, 5), st.booleans(), st.text(max_size=3))
_docs = st.recursive(
    st.dictionaries(st.sampled_from("abcd"), _scalars, min_size=1, max_size=4),
    # Stored documents never hold empty sections (merge_patch drops them).
    lambda inner: st.dictionaries(
        st.sampled_from("abcd"), st.one_of(_scalars, inner), min_size=1, max_size=4
    ),
    max_leaves=12,
)
_patches = st.recursive(
    st.dictionaries(st.sampled_from("abcd"), st.one_of(_scalars, st.none()), max_size=4),
    lambda inner: st.dictionaries(
        st.sampled_from("abcd"), st.one_of(_scalars, st.none(), inner), max_size=4
    ),
    max_leaves=12,
)


def _has_empty_or_none(doc: Any) -> bool:
    if isinstance(doc, dict):
        return not doc or any(v is None or _has_empty_or_none(v) for v in doc.values())
    return False


@settings(max_examples=200, deadline=None)
@given(_docs, _patches)
def test_merge_patch_properties(doc: dict[str, Any], patch: dict[str, Any]) -> None:
    """Idempotent; never stores null or an empty section; keys the patch omits are untouched."""
    merged = merge_patch(doc, patch)
    assert merge_patch(merged, patch) == merged
    assert not any(v is None for v in merged.values())
    assert not any(_has_empty_or_none(v) for v in merged.values() if isinstance(v, dict))
    for key in doc.keys() - patch.keys():
        assert merged[key] == doc[key]
