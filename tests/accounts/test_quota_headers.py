"""Usage-header parsing: realistic Codex and Anthropic header sets, bad values, 429 resets.

Header sets are shaped after real responses as recorded in public relays' fixtures
(Codex Plus/Pro, Anthropic Max subscription and API-key responses). Bad inputs
tried: empty, non-numeric, ``nan``/``inf``, negative, over range (percent > 1000,
fraction > 10, window > 31 days, reset beyond 35 days), comma-joined duplicates,
hex, very long values, non-string values, dates in the past; each is ignored
without a crash and without producing a reading, while the rest of the set
still counts.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.model import Platform, Window
from accounts.quota import (
    MAX_HORIZON_S,
    parse_anthropic,
    parse_codex,
    parse_usage,
)
from accounts.retry import retry_after

NOW = 1_790_000_000.0  # 2026-09-21T14:13:20Z
H5, D7 = Window.FIVE_HOURS, Window.SEVEN_DAYS

CODEX_PLUS = {
    "x-codex-plan-type": "plus",
    "x-codex-active-limit": "premium",
    "x-codex-primary-used-percent": "42",
    "x-codex-primary-window-minutes": "300",
    "x-codex-primary-reset-after-seconds": "9000",
    "x-codex-secondary-used-percent": "94.5",
    "x-codex-secondary-window-minutes": "10080",
    "x-codex-secondary-reset-after-seconds": "486400",
    "x-codex-primary-over-secondary-limit-percent": "0",
    "x-codex-credits-has-credits": "False",
    "x-codex-credits-balance": "0",
}

ANTHROPIC_MAX = {
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-reset": "1790010000",
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
    "anthropic-ratelimit-unified-5h-status": "allowed",
    "anthropic-ratelimit-unified-5h-reset": "1790010000",
    "anthropic-ratelimit-unified-5h-utilization": "0.12",
    "anthropic-ratelimit-unified-7d-status": "allowed_warning",
    "anthropic-ratelimit-unified-7d-reset": "1790300000",
    "anthropic-ratelimit-unified-7d-utilization": "0.87",
    "anthropic-ratelimit-unified-7d_sonnet-utilization": "0.01",
    "anthropic-ratelimit-unified-fallback-percentage": "0.5",
    "anthropic-ratelimit-unified-overage-status": "rejected",
    "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
    "request-id": "req_011CW",
}

BAD_NUMBERS = ["", "abc", "nan", "NaN", "inf", "-inf", "1e400", "42,42", "0x10", "9" * 100]


def by_window(readings: list[Any]) -> dict[Window, Any]:
    return {r.window: r for r in readings}


# ----------------------------------------------------------------------------- Codex


def test_codex_plus_five_hour_primary_weekly_secondary() -> None:
    got = by_window(parse_codex(CODEX_PLUS, NOW))
    assert set(got) == {H5, D7}
    assert got[H5].used_ratio == pytest.approx(0.42)
    assert got[H5].window_s == 300 * 60 and got[H5].resets_at() == NOW + 9000
    assert got[D7].used_ratio == pytest.approx(0.945)
    assert got[D7].window_s == 10080 * 60 and got[D7].reset_after_s == 486400
    assert all(r.observed_at == NOW for r in got.values())


def test_codex_slots_swapped_the_shorter_window_is_the_5h_one() -> None:
    """Pro plans have been seen reporting the weekly window as primary."""
    headers = {
        "X-Codex-Primary-Used-Percent": "37",
        "X-Codex-Primary-Window-Minutes": "10080",
        "X-Codex-Primary-Reset-At": "1790300000",
        "X-Codex-Secondary-Used-Percent": "12.5",
        "X-Codex-Secondary-Window-Minutes": "300",
        "X-Codex-Secondary-Reset-After-Seconds": "600",
    }
    got = by_window(parse_codex(headers, NOW))
    assert got[D7].used_ratio == pytest.approx(0.37) and got[D7].reset_at == 1790300000
    assert got[H5].used_ratio == pytest.approx(0.125) and got[H5].resets_at() == NOW + 600


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [("300", H5), ("360", H5), ("60", H5), ("10080", D7), ("8640", D7), ("1440", None)],
)
def test_codex_single_window_classified_by_length(minutes: str, expected: Window | None) -> None:
    headers = {"x-codex-primary-used-percent": "80", "x-codex-primary-window-minutes": minutes}
    got = parse_codex(headers, NOW)
    assert [r.window for r in got] == ([expected] if expected else [])


def test_codex_window_length_missing_falls_back_to_slot_then_reset_distance() -> None:
    """No window-minutes: primary is the 5h slot unless it resets later than 6 hours."""
    short = {"x-codex-primary-used-percent": "5", "x-codex-primary-reset-after-seconds": "60"}
    assert [r.window for r in parse_codex(short, NOW)] == [H5]
    far = {"x-codex-primary-used-percent": "5", "x-codex-primary-reset-at": "1790400000"}
    assert [r.window for r in parse_codex(far, NOW)] == [D7]
    both = {"x-codex-primary-used-percent": "5", "x-codex-secondary-used-percent": "7"}
    assert {r.window: r.used_ratio for r in parse_codex(both, NOW)} == {H5: 0.05, D7: 0.07}


def test_codex_reset_at_milliseconds_and_zero_usage_kept() -> None:
    """Zero usage is a real reading (the window reset); epoch ms is read as ms."""
    headers = {
        "x-codex-primary-used-percent": "0",
        "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-at": "1790003600000",
    }
    (r,) = parse_codex(headers, NOW)
    assert r.used_ratio == 0.0 and r.reset_at == 1790003600.0


@pytest.mark.parametrize("bad", [*BAD_NUMBERS, "-1", "1000.5", "-0.0001"])
def test_codex_bad_used_percent_drops_only_that_window(bad: str) -> None:
    headers = {**CODEX_PLUS, "x-codex-primary-used-percent": bad}
    got = by_window(parse_codex(headers, NOW))
    # The secondary stays; alone, a 10080-minute window is the 7-day one.
    assert set(got) == {D7} and got[D7].used_ratio == pytest.approx(0.945)


@pytest.mark.parametrize("bad", [*BAD_NUMBERS, "0", "-300", "50000"])
def test_codex_bad_window_minutes_is_unknown_length(bad: str) -> None:
    headers = {**CODEX_PLUS, "x-codex-primary-window-minutes": bad}
    got = by_window(parse_codex(headers, NOW))
    assert set(got) == {H5, D7}
    assert got[H5].window_s is None and got[H5].used_ratio == pytest.approx(0.42)


@pytest.mark.parametrize("bad", [*BAD_NUMBERS, "-5", str(MAX_HORIZON_S + 1)])
def test_codex_bad_resets_give_a_reading_without_reset(bad: str) -> None:
    headers = {
        **CODEX_PLUS,
        "x-codex-primary-reset-after-seconds": bad,
        "x-codex-primary-reset-at": bad,
    }
    got = by_window(parse_codex(headers, NOW))
    assert got[H5].resets_at() is None and got[H5].used_ratio == pytest.approx(0.42)


def test_codex_reset_at_far_from_now_is_ignored() -> None:
    for ts in ("1000000000", "4102444800"):  # 2001, 2100
        headers = {"x-codex-primary-used-percent": "50", "x-codex-primary-reset-at": ts}
        (r,) = parse_codex(headers, NOW)
        assert r.reset_at is None


# ----------------------------------------------------------------------------- Anthropic


def test_anthropic_max_subscription() -> None:
    got = by_window(parse_anthropic(ANTHROPIC_MAX, NOW))
    assert set(got) == {H5, D7}
    assert got[H5].used_ratio == 0.12 and got[H5].reset_at == 1790010000
    assert got[D7].used_ratio == 0.87 and got[D7].reset_at == 1790300000
    assert got[H5].window_s == 5 * 3600 and got[D7].window_s == 7 * 86400


def test_anthropic_rejected_window_reads_as_exhausted() -> None:
    """A 429 from the 5h window: status rejected, utilisation sometimes absent."""
    headers = {
        "Anthropic-Ratelimit-Unified-Status": "rejected",
        "Anthropic-Ratelimit-Unified-Representative-Claim": "five_hour",
        "Anthropic-Ratelimit-Unified-Reset": "1790003600",
        "Anthropic-Ratelimit-Unified-5h-Status": "rejected",
        "Anthropic-Ratelimit-Unified-5h-Reset": "1790003600",
        "Anthropic-Ratelimit-Unified-7d-Status": "allowed",
        "Anthropic-Ratelimit-Unified-7d-Utilization": "0.4",
    }
    got = by_window(parse_anthropic(headers, NOW))
    assert got[H5].used_ratio == 1.0 and got[H5].reset_at == 1790003600
    assert got[D7].used_ratio == 0.4


def test_anthropic_claim_only_refusal_and_lenient_forms() -> None:
    """Only the overall refusal naming the weekly window; reset as RFC 3339; 42% form."""
    headers = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-representative-claim": "seven_day",
        "anthropic-ratelimit-unified-reset": "2026-09-25T00:00:00Z",
        "anthropic-ratelimit-unified-5h-utilization": "42%",
        "anthropic-ratelimit-unified-5h-reset": "3600",
    }
    got = by_window(parse_anthropic(headers, NOW))
    assert got[D7].used_ratio == 1.0
    assert got[D7].reset_at == datetime(2026, 9, 25, tzinfo=UTC).timestamp()
    assert got[H5].used_ratio == pytest.approx(0.42) and got[H5].resets_at() == NOW + 3600


@pytest.mark.parametrize("bad", [*BAD_NUMBERS, "-0.1", "10.5", "-5%", "%"])
def test_anthropic_bad_utilization_drops_only_that_window(bad: str) -> None:
    headers = {**ANTHROPIC_MAX, "anthropic-ratelimit-unified-5h-utilization": bad}
    got = by_window(parse_anthropic(headers, NOW))
    assert set(got) == {D7}


@pytest.mark.parametrize("bad", [*BAD_NUMBERS, "-60", "yesterday", "1000000000", "4102444800"])
def test_anthropic_bad_reset_gives_a_reading_without_reset(bad: str) -> None:
    headers = {**ANTHROPIC_MAX, "anthropic-ratelimit-unified-7d-reset": bad}
    got = by_window(parse_anthropic(headers, NOW))
    assert got[D7].used_ratio == 0.87 and got[D7].resets_at() is None


# ----------------------------------------------------------------------------- dispatch


def test_parse_usage_dispatches_by_platform_then_by_headers() -> None:
    assert {r.window for r in parse_usage(Platform.OPENAI, CODEX_PLUS, NOW)} == {H5, D7}
    assert parse_usage(Platform.OPENAI, ANTHROPIC_MAX, NOW) == []
    assert {r.window for r in parse_usage("anthropic", ANTHROPIC_MAX, NOW)} == {H5, D7}
    assert len(parse_usage(Platform.GEMINI, CODEX_PLUS, NOW)) == 2  # relayed family
    assert parse_usage(Platform.DASHSCOPE, {"content-type": "application/json"}, NOW) == []


def test_non_string_values_and_odd_mappings_do_not_crash() -> None:
    odd: dict[Any, Any] = {
        "x-codex-primary-used-percent": 42,
        "x-codex-primary-window-minutes": b"300",
        "x-codex-secondary-used-percent": None,
        b"x-codex-secondary-window-minutes": "10080",
        7: "x",
        "anthropic-ratelimit-unified-5h-utilization": True,
    }
    got = parse_usage(Platform.OPENAI, odd, NOW)
    assert [(r.window, r.used_ratio) for r in got] == [(H5, 0.42)]
    assert parse_anthropic(odd, NOW) == []
    assert retry_after(odd, NOW) is None
    assert parse_codex(None, NOW) == []  # type: ignore[arg-type]  # a caller bug must not crash


tricky = st.sampled_from(
    [
        *BAD_NUMBERS,
        "0",
        "1",
        "100",
        "0.5",
        "-1",
        "300",
        "10080",
        "rejected",
        "allowed",
        "1790003600",
        "1790003600000",
        "2026-09-25T00:00:00Z",
        "Fri, 25 Sep 2026 00:00:00 GMT",
        "five_hour",
        "seven_day",
        "42%",
        "1e308",
    ]
) | st.text(max_size=30)
names = st.sampled_from(
    [
        f"x-codex-{s}-{f}"
        for s in ("primary", "secondary")
        for f in ("used-percent", "window-minutes", "reset-at", "reset-after-seconds")
    ]
    + [
        f"anthropic-ratelimit-unified-{w}-{f}"
        for w in ("5h", "7d")
        for f in ("utilization", "reset", "status")
    ]
    + [
        "anthropic-ratelimit-unified-status",
        "anthropic-ratelimit-unified-reset",
        "anthropic-ratelimit-unified-representative-claim",
        "retry-after",
        "retry-after-ms",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, tricky, max_size=12), st.sampled_from(list(Platform)))
def test_any_header_set_gives_sane_readings_or_none(
    headers: dict[str, str], platform: Platform
) -> None:
    """Fuzz: never raises; every reading is finite, in range, observed now; resets near now;
    retry_after is None or between now and the horizon."""
    for r in parse_usage(platform, headers, NOW) + parse_anthropic(headers, NOW):
        assert math.isfinite(r.used_ratio) and 0 <= r.used_ratio <= 10
        assert r.observed_at == NOW
        resets = r.resets_at()
        assert resets is None or abs(resets - NOW) <= MAX_HORIZON_S
    got = retry_after(headers, NOW)
    assert got is None or NOW <= got <= NOW + MAX_HORIZON_S


# ----------------------------------------------------------------------------- retry_after


def http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "30"}, NOW + 30),
        ({"retry-after": "0"}, NOW),
        ({"retry-after": "2.5"}, NOW + 2.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, NOW + 1.5),
        ({"Retry-After": http_date(NOW + 120)}, NOW + 120),
        ({"Retry-After": http_date(NOW - 120)}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": str(10 * 365 * 86400)}, None),
        ({}, None),
    ],
)
def test_retry_after_header_forms(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after(headers, NOW) == expected


def test_retry_after_codex_exhausted_window_outlasts_retry_after() -> None:
    """A used-up 5h window keeps the account out until its reset, whatever Retry-After says;
    with both windows used up, the later reset wins."""
    headers = {
        "retry-after": "30",
        "x-codex-primary-used-percent": "100",
        "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-after-seconds": "18000",
        "x-codex-secondary-used-percent": "60",
        "x-codex-secondary-window-minutes": "10080",
        "x-codex-secondary-reset-after-seconds": "400000",
    }
    assert retry_after(headers, NOW) == NOW + 18000
    both = {**headers, "x-codex-secondary-used-percent": "100.0"}
    assert retry_after(both, NOW) == NOW + 400000
    neither = {**headers, "x-codex-primary-used-percent": "42"}
    assert retry_after(neither, NOW) == NOW + 30
    assert retry_after({k: v for k, v in neither.items() if k != "retry-after"}, NOW) is None


def test_retry_after_anthropic_unified_and_windows() -> None:
    refused = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": "1790003600",
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
    }
    assert retry_after(refused, NOW) == 1790003600
    # Reset given alone (some relays send only this on a 429).
    assert retry_after({"anthropic-ratelimit-unified-reset": "1790003600"}, NOW) == 1790003600
    # Allowed overall: its reset is the window's, not a reason to wait.
    assert retry_after(ANTHROPIC_MAX, NOW) is None
    weekly = {**ANTHROPIC_MAX, "anthropic-ratelimit-unified-7d-status": "rejected"}
    assert retry_after(weekly, NOW) == 1790300000


def test_retry_after_anthropic_api_key_families() -> None:
    """API-key accounts: the reset (RFC 3339) of a family whose remaining is 0."""
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2026-09-21T14:14:20Z",
        "anthropic-ratelimit-tokens-remaining": "19000",
        "anthropic-ratelimit-tokens-reset": "2026-09-21T14:20:00Z",
    }
    assert retry_after(headers, NOW) == NOW + 60
    headers["anthropic-ratelimit-requests-reset"] = "garbage"
    assert retry_after(headers, NOW) is None
