"""The simulator's chat endpoints carry usage headers the selection's parsers read."""

from __future__ import annotations

import httpx

from accounts.model import Platform, Window
from accounts.quota import parse_usage
from accounts.retry import retry_after

from .simsupport import SimControl


def test_codex_headers_fill_and_reset(sim: tuple[str, SimControl]) -> None:
    url, control = sim
    control.set(usage_per_call=0.25, usage_window_scale=0.01)
    with httpx.Client(base_url=url, trust_env=False) as c:
        auth = {"authorization": "Bearer codex-oauth-1"}
        for expected in (0.25, 0.5, 0.75, 1.0):
            r = c.post("/backend-api/codex/responses", headers=auth, json={"model": "gpt-5"})
            assert r.status_code == 200
            readings = {q.window: q for q in parse_usage(Platform.OPENAI, r.headers, now=0.0)}
            assert readings[Window.FIVE_HOURS].used_ratio == expected
            assert readings[Window.SEVEN_DAYS].used_ratio == expected
        refused = c.post("/backend-api/codex/responses", headers=auth, json={})
        assert refused.status_code == 429
        # Both windows are used up: refused until the weekly one (7 d x 0.01) resets.
        assert retry_after(refused.headers, now=0.0) == 6048.0
        assert refused.headers["retry-after"] == "6048"
        usage = c.get("/backend-api/wham/usage", headers=auth).json()["rate_limit"]
        assert usage["limit_reached"] and usage["primary_window"]["used_percent"] == 100
        control.advance(181)  # the 5-hour window (180 s here) resets, the weekly one not
        still = c.post("/backend-api/codex/responses", headers=auth, json={})
        assert still.status_code == 429
        readings = {q.window: q for q in parse_usage(Platform.OPENAI, still.headers, now=0.0)}
        assert readings[Window.FIVE_HOURS].used_ratio == 0.0
        assert readings[Window.SEVEN_DAYS].used_ratio == 1.0
        control.advance(6048)
        again = c.post("/backend-api/codex/responses", headers=auth, json={})
        assert again.status_code == 200
        readings = {q.window: q for q in parse_usage(Platform.OPENAI, again.headers, now=0.0)}
        assert readings[Window.FIVE_HOURS].used_ratio == 0.25


def test_anthropic_headers_and_oauth_usage(sim: tuple[str, SimControl]) -> None:
    url, control = sim
    control.set(usage_per_call=0.5)
    with httpx.Client(base_url=url, trust_env=False) as c:
        auth = {"authorization": "Bearer sk-ant-oat-1", "anthropic-beta": "oauth-2025-04-20"}
        r = c.post("/v1/messages", headers=auth, json={"model": "claude", "max_tokens": 5})
        assert r.status_code == 200 and r.json()["type"] == "message"
        readings = {q.window: q for q in parse_usage(Platform.ANTHROPIC, r.headers, now=0.0)}
        assert readings[Window.FIVE_HOURS].used_ratio == 0.5
        c.post("/v1/messages", headers=auth, json={})
        refused = c.post("/v1/messages", headers=auth, json={})
        assert refused.status_code == 429
        assert refused.headers["anthropic-ratelimit-unified-status"] == "rejected"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        usage = c.get("/api/oauth/usage", headers=auth).json()
        assert usage["five_hour"]["utilization"] == 100.0 and "resets_at" in usage["seven_day"]


def test_openai_api_headers_and_faults(sim: tuple[str, SimControl]) -> None:
    url, control = sim
    with httpx.Client(base_url=url, trust_env=False) as c:
        auth = {"authorization": "Bearer sk-openai-1"}
        r = c.post("/v1/chat/completions", headers=auth, json={"model": "gpt-4o"})
        assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "10000"
        assert "x-codex-primary-used-percent" not in r.headers
        control.set(rate_429=1.0, retry_after_s=3)
        limited = c.post("/v1/chat/completions", headers=auth, json={})
        assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
        assert limited.json()["error"]["type"] == "rate_limit_exceeded"


def test_usage_endpoints_match_the_recorded_shapes(sim: tuple[str, SimControl]) -> None:
    """The simulator's usage answers have exactly the recorded fields (fixtures/usage_endpoints)."""
    import json
    from pathlib import Path

    from .test_fixtures import _fields

    recorded = json.loads((Path(__file__).parent / "fixtures" / "usage_endpoints.json").read_text())
    url, _control = sim
    with httpx.Client(base_url=url, trust_env=False) as c:
        auth = {"authorization": "Bearer t-1"}
        claude = c.get("/api/oauth/usage", headers=auth).json()
        codex = c.get("/backend-api/wham/usage", headers=auth).json()
    assert _fields(claude) == _fields(recorded["anthropic_oauth_usage"])
    assert _fields(codex) == _fields(recorded["codex_wham_usage"])
