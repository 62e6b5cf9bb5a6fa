"""Usage adapters: every recorded shape maps to the right windows; failures are classified.

The fixture tests are pure (``parse`` on the recorded JSON, see
``fixtures/SOURCES.md``); the others read the simulator over real HTTP.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from accounts.model import Account, Kind, Platform, Window
from scheduler.usage import ADAPTERS, adapter_for, read_usage
from scheduler.usage.errors import AuthFailed, CannotProbe, RateLimited, Transient

from .simusage import SimUsage

FIXTURES = Path(__file__).parent / "fixtures"
ANTHROPIC = ADAPTERS["anthropic"]
CODEX = ADAPTERS["openai"]


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def by_window(report: Any) -> dict[Window, Any]:
    out = {w.window: w for w in report.windows}
    assert len(out) == len(report.windows), "one reading per window"
    return out


# --- Anthropic -------------------------------------------------------------------------


def test_anthropic_full_maps_five_hour_and_seven_day_and_keeps_the_sonnet_week_apart() -> None:
    now = ts("2026-01-02T15:00:00")
    report = ANTHROPIC.parse(load("anthropic_full.json"), now)
    w = by_window(report)
    assert w[Window.FIVE_HOURS].used_ratio == pytest.approx(0.24)
    assert w[Window.FIVE_HOURS].reset_at == pytest.approx(ts("2026-01-02T19:59:59.600956"))
    assert w[Window.FIVE_HOURS].window_s == 5 * 3600
    assert w[Window.SEVEN_DAYS].used_ratio == pytest.approx(0.36)
    assert w[Window.SEVEN_DAYS].reset_at == pytest.approx(ts("2026-01-08T06:59:59.600974"))
    assert all(r.observed_at == now for r in report.windows)
    # Model-specific weeks are shown, never mixed into the 7d reading; nulls are skipped.
    assert [(x.name, x.used_ratio) for x in report.extra] == [("seven_day_sonnet", 0.01)]


def test_anthropic_integer_utilization_and_z_timestamps() -> None:
    now = ts("2026-01-28T12:00:00")
    report = ANTHROPIC.parse(load("anthropic_opus_week.json"), now)
    w = by_window(report)
    assert w[Window.FIVE_HOURS].used_ratio == pytest.approx(0.25)
    assert w[Window.FIVE_HOURS].reset_at == ts("2026-01-28T15:00:00")
    assert w[Window.SEVEN_DAYS].used_ratio == pytest.approx(0.40)
    assert [x.name for x in report.extra] == ["seven_day_opus"]


def test_anthropic_weekly_only_reads_the_null_five_hour_window_as_nothing_used() -> None:
    now = ts("2026-01-30T00:00:00")
    w = by_window(ANTHROPIC.parse(load("anthropic_weekly_only.json"), now))
    assert w[Window.FIVE_HOURS].used_ratio == 0.0
    assert w[Window.FIVE_HOURS].reset_at is None
    assert w[Window.SEVEN_DAYS].used_ratio == pytest.approx(0.97)
    assert w[Window.SEVEN_DAYS].reset_at == pytest.approx(ts("2026-02-03T09:59:59.571468"))


def test_anthropic_window_not_started_has_no_reset() -> None:
    w = by_window(ANTHROPIC.parse(load("anthropic_window_not_started.json"), 1.8e9))
    assert (w[Window.FIVE_HOURS].used_ratio, w[Window.FIVE_HOURS].reset_at) == (0.0, None)
    assert (w[Window.SEVEN_DAYS].used_ratio, w[Window.SEVEN_DAYS].reset_at) == (0.12, None)


def test_anthropic_unknown_fields_are_ignored_and_unknown_weeks_kept_as_extra() -> None:
    now = ts("2026-01-28T03:00:00")
    report = ANTHROPIC.parse(load("anthropic_unknown_extra.json"), now)
    w = by_window(report)
    assert w[Window.FIVE_HOURS].used_ratio == pytest.approx(0.61)
    assert w[Window.SEVEN_DAYS].used_ratio == pytest.approx(0.22)
    assert [x.name for x in report.extra] == ["seven_day_cowork"]


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "x",
        None,
        {"extra_usage": {}},
        load("anthropic_403_scope.json"),
    ],
)
def test_anthropic_documents_without_windows_are_refused(doc: Any) -> None:
    with pytest.raises(ValueError, match="not a usage document"):
        ANTHROPIC.parse(doc, 1.8e9)


@pytest.mark.parametrize(
    "bad",
    [
        {"utilization": "lots"},
        {"utilization": -1},
        {"utilization": float("nan")},
        {"utilization": 1e9},
        {"utilization": True},
        "97",
        [97],
    ],
)
def test_anthropic_unreadable_window_values_are_no_reading(bad: Any) -> None:
    report = ANTHROPIC.parse({"five_hour": bad, "seven_day": {"utilization": 5}}, 1.8e9)
    assert set(by_window(report)) == {Window.SEVEN_DAYS}


def test_anthropic_reset_far_from_now_or_garbage_is_dropped_not_the_reading() -> None:
    doc = {
        "five_hour": {"utilization": 50, "resets_at": "2099-01-01T00:00:00Z"},
        "seven_day": {"utilization": 50, "resets_at": "tomorrow"},
    }
    w = by_window(ANTHROPIC.parse(doc, ts("2026-01-01T00:00:00")))
    assert w[Window.FIVE_HOURS].reset_at is None and w[Window.FIVE_HOURS].used_ratio == 0.5
    assert w[Window.SEVEN_DAYS].reset_at is None


# --- Codex ------------------------------------------------------------------------------


def test_codex_full_maps_by_length() -> None:
    now = 1767370000.0
    report = CODEX.parse(load("codex_full.json"), now)
    w = by_window(report)
    assert w[Window.FIVE_HOURS].used_ratio == pytest.approx(0.03)
    assert w[Window.FIVE_HOURS].reset_at == 1767385852
    assert w[Window.FIVE_HOURS].window_s == 18000
    assert w[Window.SEVEN_DAYS].used_ratio == pytest.approx(0.09)
    assert w[Window.SEVEN_DAYS].reset_at == 1767859444
    assert [x.name for x in report.extra] == ["code_review.primary"]


def test_codex_weekly_window_in_the_primary_slot_is_still_the_seven_day_one() -> None:
    w = by_window(CODEX.parse(load("codex_swapped.json"), 1767370000.0))
    assert w[Window.FIVE_HOURS].used_ratio == 1.0
    assert w[Window.FIVE_HOURS].reset_at == 1767371194
    assert w[Window.SEVEN_DAYS].used_ratio == pytest.approx(0.41)
    assert w[Window.SEVEN_DAYS].window_s == 604800


def test_codex_weekly_only() -> None:
    w = by_window(CODEX.parse(load("codex_weekly_only.json"), 1767370000.0))
    assert set(w) == {Window.SEVEN_DAYS}
    assert w[Window.SEVEN_DAYS].used_ratio == pytest.approx(0.88)


def test_codex_unknown_fields_and_additional_limits() -> None:
    report = CODEX.parse(load("codex_unknown_extra.json"), 1767370000.0)
    w = by_window(report)
    assert w[Window.FIVE_HOURS].used_ratio == pytest.approx(0.42)
    assert w[Window.SEVEN_DAYS].used_ratio == pytest.approx(0.84)
    # A third, daily window and the additional limit are not ours: extra or ignored.
    assert [x.name for x in report.extra] == ["codex_other.primary"]


@pytest.mark.parametrize("doc", [{}, {"plan_type": "pro"}, [], None])
def test_codex_documents_without_rate_limit_are_refused(doc: Any) -> None:
    with pytest.raises(ValueError, match="not a usage document"):
        CODEX.parse(doc, 1767370000.0)


# --- which accounts, which URL ----------------------------------------------------------


def account(platform: str, kind: Kind = Kind.OAUTH, base_url: str | None = None) -> Account:
    return Account(
        id="00000000-0000-0000-0000-000000000001",
        name="a",
        platform=Platform(platform),
        kind=kind,
        groups=("g",),
        base_url=base_url,
    )


def test_only_oauth_accounts_of_anthropic_and_openai_have_a_usage_endpoint() -> None:
    assert adapter_for(account("anthropic")) is ANTHROPIC
    assert adapter_for(account("openai")) is CODEX
    assert adapter_for(account("anthropic", Kind.APIKEY)) is None
    for platform in ("gemini", "dashscope", "kling"):
        assert adapter_for(account(platform)) is None


def test_urls_follow_the_account_base_url() -> None:
    assert ANTHROPIC.url(account("anthropic")) == "https://api.anthropic.com/api/oauth/usage"
    assert (
        ANTHROPIC.url(account("anthropic", base_url="http://h:1/v1"))
        == "http://h:1/api/oauth/usage"
    )
    assert CODEX.url(account("openai")) == "https://chatgpt.com/backend-api/wham/usage"
    codex = account("openai", base_url="https://chatgpt.com/backend-api/codex")
    assert CODEX.url(codex) == "https://chatgpt.com/backend-api/wham/usage"


# --- over HTTP, against the simulator ---------------------------------------------------


async def _read(base_url: str, platform: str, creds: dict[str, str], timeout_s: float = 2.0) -> Any:
    acct = account(platform, base_url=base_url)
    adapter = adapter_for(acct)
    assert adapter is not None
    async with httpx.AsyncClient(trust_env=False) as client:
        return await read_usage(adapter, client, acct, creds, timeout_s=timeout_s)


async def test_anthropic_read_sends_bearer_and_beta_and_maps_the_windows(
    usage_sim: tuple[str, SimUsage],
) -> None:
    base_url, sim = usage_sim
    sim.set_usage("tok-a", five={"used_percent": 97, "resets_in_s": 60})
    report = await _read(base_url, "anthropic", {"access_token": "tok-a"})
    w = by_window(report)
    assert w[Window.FIVE_HOURS].used_ratio == pytest.approx(0.97)
    assert w[Window.FIVE_HOURS].reset_at is not None
    assert w[Window.SEVEN_DAYS].used_ratio == 0.0
    assert sim.control.account("tok-a")["usage_reads"] == 1


async def test_codex_read_maps_the_windows(usage_sim: tuple[str, SimUsage]) -> None:
    base_url, sim = usage_sim
    sim.set_usage("tok-c", seven={"used_percent": 55})
    creds = {"access_token": "tok-c", "account_id": "ws-42"}
    w = by_window(await _read(base_url, "openai", creds))
    assert w[Window.SEVEN_DAYS].used_ratio == pytest.approx(0.55)
    assert w[Window.FIVE_HOURS].used_ratio == 0.0
    assert sim.control.account("tok-c")["usage_reads"] == 1


def test_request_headers() -> None:
    """What the real endpoints want (fixtures/SOURCES.md): the beta header for Anthropic's
    OAuth, the workspace header for Codex."""
    a = ANTHROPIC.headers(account("anthropic"), {"access_token": "t1"})
    assert a["authorization"] == "Bearer t1" and a["anthropic-beta"] == "oauth-2025-04-20"
    c = CODEX.headers(account("openai"), {"access_token": "t2", "account_id": "ws-9"})
    assert c["authorization"] == "Bearer t2" and c["chatgpt-account-id"] == "ws-9"
    # The other spelling of the workspace id in credential documents is accepted too.
    c2 = CODEX.headers(account("openai"), {"access_token": "t2", "chatgpt_account_id": "ws-8"})
    assert c2["chatgpt-account-id"] == "ws-8"


async def test_failures_are_classified(usage_sim: tuple[str, SimUsage]) -> None:
    base_url, sim = usage_sim
    creds = {"access_token": "tok-x"}
    sim.control.set(refused_accounts=["tok-x"])
    with pytest.raises(AuthFailed):
        await _read(base_url, "anthropic", creds)
    sim.control.set(refused_accounts=[])
    sim.no_scope("anthropic")
    with pytest.raises(CannotProbe, match="scope requirement user:profile"):
        await _read(base_url, "anthropic", creds)
    sim.control.inject(429, platform="anthropic", op="usage")
    with pytest.raises(RateLimited) as limited:
        await _read(base_url, "anthropic", creds)
    assert limited.value.retry_after_s is not None and limited.value.retry_after_s > 0
    sim.control.inject(503, platform="anthropic", op="usage")
    with pytest.raises(Transient):
        await _read(base_url, "anthropic", creds)
    sim.control.set(malformed_rate=1.0, faults_on=["usage"])
    with pytest.raises(Transient, match="unreadable"):
        await _read(base_url, "anthropic", creds)
    sim.control.set(malformed_rate=0.0, hang_rate=1.0)
    with trio.fail_after(5), pytest.raises(Transient):
        await _read(base_url, "anthropic", creds, timeout_s=0.3)
    sim.control.set(hang_rate=0.0)
    with pytest.raises(CannotProbe, match="access_token"):
        await _read(base_url, "anthropic", {"api_key": "x"})
    with pytest.raises(CannotProbe, match="account_id"):
        await _read(base_url, "openai", {"access_token": "x"})


async def test_no_usage_route_at_the_base_url_cannot_be_probed(
    usage_sim: tuple[str, SimUsage],
) -> None:
    base_url, _ = usage_sim
    with pytest.raises(CannotProbe, match="404"):
        await _read(base_url + "/elsewhere", "anthropic", {"access_token": "t"})


async def test_tokens_never_appear_in_failure_messages(usage_sim: tuple[str, SimUsage]) -> None:
    base_url, sim = usage_sim
    secret = "sk-ant-oat01-very-secret-token"
    sim.control.set(refused_accounts=[secret])
    with pytest.raises(AuthFailed) as failed:
        await _read(base_url, "anthropic", {"access_token": secret})
    assert secret not in str(failed.value) and secret not in repr(failed.value.details)
