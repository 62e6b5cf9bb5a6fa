"""OpenAI's x-ratelimit-* headers: Go durations, the resets a 429 waits for, the room left.

Bad input tried: empty, unitless garbage, unknown units, negative and huge
durations, non-numeric limits and remainders, a limit of 0; none raises.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounts.openai_limits import openai_headroom, openai_resets, parse_duration
from accounts.retry import retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("250us", 0.00025),
        ("2.5", 2.5),  # a bare number is seconds
        (" 7s ", 7.0),
    ],
)
def test_durations(raw: str, seconds: float) -> None:
    assert parse_duration(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "abc", "1x", "s", "-1s", "1s2", "9999999h", "x" * 80, None])
def test_bad_durations_are_no_reading(raw: str | None) -> None:
    assert parse_duration(raw) is None


@given(h=st.integers(0, 99), m=st.integers(0, 59), s=st.integers(0, 59), ms=st.integers(0, 999))
def test_go_durations_round_trip(h: int, m: int, s: int, ms: int) -> None:
    text = (f"{h}h" if h else "") + f"{m}m{s}s" + (f"{ms}ms" if ms else "")
    assert parse_duration(text) == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)


@given(st.dictionaries(st.sampled_from([
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
]), st.text(max_size=30)))  # fmt: skip
def test_garbage_never_raises(headers: dict[str, str]) -> None:
    for reset in openai_resets(headers, NOW):
        assert reset >= NOW
    room = openai_headroom(headers, NOW)
    assert room is None or (0 <= room.fraction <= 1 and room.until >= NOW)


HEADERS = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "6m0s",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "3000",
    "x-ratelimit-reset-tokens": "1s",
}


def test_a_429_waits_for_the_family_at_zero() -> None:
    assert openai_resets(HEADERS, NOW) == [NOW + 360]
    assert retry_after(HEADERS, NOW) == NOW + 360
    # None at 0 (a request bigger than what was left): every family given; the latest wins.
    none_at_zero = {**HEADERS, "x-ratelimit-remaining-requests": "7"}
    assert sorted(openai_resets(none_at_zero, NOW)) == [NOW + 1, NOW + 360]
    assert retry_after({"X-RateLimit-Reset-Tokens": "20ms"}, NOW) == pytest.approx(NOW + 0.02)
    assert openai_resets({}, NOW) == [] and retry_after({}, NOW) is None


def test_room_is_the_tightest_family_until_its_reset() -> None:
    room = openai_headroom({**HEADERS, "x-ratelimit-remaining-requests": "400"}, NOW)
    assert room is not None and room.fraction == pytest.approx(0.1) and room.until == NOW + 1
    assert openai_headroom(HEADERS, NOW) == (0.0, NOW + 360)
    # Without a limit (or with a limit of 0) there is no fraction to take.
    no_limits = {k: v for k, v in HEADERS.items() if "-limit-" not in k}
    assert openai_headroom(no_limits, NOW) is None
    assert openai_headroom({**no_limits, "x-ratelimit-limit-tokens": "0"}, NOW) is None
