"""Recorded upstream answers (tests/upstream/fixtures/*.json, with their sources) replayed
over real HTTP by the simulator, read by the real adapters.

Each fixture file lists where its shapes were looked up. Status answers must map
to the expected state, outputs, usage and reason; error answers to the expected
error class. A last check keeps the simulator honest: every field it sends in a
finished task's answer appears in the recorded shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scheduler import upstream as up
from scheduler.upstream import Upstream, UpstreamRequest, UpstreamState

from .conftest import account
from .simsupport import SimControl

FIXTURES = Path(__file__).parent / "fixtures"
CREDS = {
    "dashscope": {"api_key": "sk-fixture"},
    "kling": {"access_key": "ak-fixture", "secret_key": "sk-fixture-secret-at-least-32-bytes"},
    "gemini": {"api_key": "gemini-fixture"},
}
FETCH_IDS = {
    "dashscope": "t1",
    "kling": "text2video/8672",
    "gemini": "models/veo-3.0-generate-001/operations/x",
}
REQUESTS = {
    "dashscope": UpstreamRequest(
        task_id="f-1",
        platform="dashscope",
        model="wan2.2-t2v-plus",
        kind="video",
        params={"prompt": "p"},
    ),
    "kling": UpstreamRequest(
        task_id="f-1", platform="kling", model="kling-v2-1", kind="video", params={"prompt": "p"}
    ),
    "gemini": UpstreamRequest(
        task_id="f-1",
        platform="gemini",
        model="veo-3.0-generate-001",
        kind="video",
        params={"prompt": "p"},
    ),
}


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    assert data["sources"], f"{name} must say where its shapes come from"
    return data


PLATFORM_FILES = ["dashscope.json", "kling.json", "veo.json"]
STATUS_CASES = [
    pytest.param(f, case, id=f"{f}:{case['name']}")
    for f in PLATFORM_FILES
    for case in _load(f)["statuses"]
]
ERROR_CASES = [
    pytest.param(f, case, id=f"{f}:{case['http_status']}:{case['expect']}:{i}")
    for f in PLATFORM_FILES
    for i, case in enumerate(_load(f)["errors"])
]


@pytest.fixture
def sim_fixture(sim: tuple[str, SimControl]) -> tuple[str, SimControl]:
    sim[1].set(kling_secrets={"ak-fixture": CREDS["kling"]["secret_key"]})
    return sim


@pytest.mark.parametrize(("file", "case"), STATUS_CASES)
async def test_recorded_status_maps(
    sim_fixture: tuple[str, SimControl], upstream: Upstream, file: str, case: dict[str, Any]
) -> None:
    base_url, control = sim_fixture
    platform = _load(file)["platform"]
    control.inject(200, body=case["body"], op="fetch", platform=platform)
    status = await upstream.adapter(platform).fetch(
        account(base_url, platform), CREDS[platform], FETCH_IDS[platform]
    )
    expect = case["expect"]
    assert status.state is UpstreamState(expect["state"])
    assert len(status.result_urls) == expect["urls"]
    for key, value in expect.get("usage", {}).items():
        assert status.usage[key] == value, key
    if "reason_contains" in expect:
        assert expect["reason_contains"] in (status.failure_reason or "")


@pytest.mark.parametrize("file", PLATFORM_FILES)
async def test_recorded_submit_answer_is_read(
    sim_fixture: tuple[str, SimControl], upstream: Upstream, file: str
) -> None:
    base_url, control = sim_fixture
    data = _load(file)
    platform = data["platform"]
    control.inject(data["submit"]["http_status"], body=data["submit"]["body"], op="submit")
    task = await upstream.adapter(platform).submit(
        account(base_url, platform), CREDS[platform], REQUESTS[platform]
    )
    assert task.upstream_id and task.state in (UpstreamState.PENDING, UpstreamState.RUNNING)


@pytest.mark.parametrize(("file", "case"), ERROR_CASES)
async def test_recorded_error_classifies(
    sim_fixture: tuple[str, SimControl], upstream: Upstream, file: str, case: dict[str, Any]
) -> None:
    base_url, control = sim_fixture
    platform = _load(file)["platform"]
    expected = getattr(up, case["expect"])
    op = case.get("op", "fetch")
    control.inject(case["http_status"], body=case["body"], op=op, platform=platform)
    adapter, acc = upstream.adapter(platform), account(base_url, platform)
    with pytest.raises(up.UpstreamError) as info:
        if op == "submit":
            await adapter.submit(acc, CREDS[platform], REQUESTS[platform])
        else:
            await adapter.fetch(acc, CREDS[platform], FETCH_IDS[platform])
    assert type(info.value) is expected, (case, type(info.value))


def _fields(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        out = set()
        for k, v in value.items():
            out.add(prefix + k)
            out |= _fields(v, prefix + k + ".")
        return out
    if isinstance(value, list):
        return set().union(*(_fields(v, prefix) for v in value)) if value else set()
    return set()


@pytest.mark.parametrize("file", PLATFORM_FILES)
async def test_simulator_sends_only_recorded_fields(
    sim_fixture: tuple[str, SimControl], upstream: Upstream, file: str
) -> None:
    """Every field of the simulator's answers appears in some recorded answer."""
    import httpx

    base_url, control = sim_fixture
    data = _load(file)
    platform = data["platform"]
    recorded = _fields(data["submit"]["body"]).union(
        *(_fields(c["body"]) for c in data["statuses"])
    )
    adapter = upstream.adapter(platform)
    acc = account(base_url, platform)
    control.set(partial_rate=1.0)
    req = REQUESTS[platform]
    if platform == "gemini":
        req = UpstreamRequest(
            task_id="f-2",
            platform="gemini",
            model=req.model,
            kind="video",
            params={"prompt": "p", "sampleCount": 2},
        )
    task = await adapter.submit(acc, CREDS[platform], req)
    control.advance(60)
    await adapter.fetch(acc, CREDS[platform], task.upstream_id)
    # The same answer once more, raw, to see its fields.
    headers = {"authorization": "Bearer sk-fixture", "x-goog-api-key": "gemini-fixture"}
    if platform == "kling":
        from scheduler.upstream.kling import Tokens

        token = Tokens().token("ak-fixture", CREDS["kling"]["secret_key"])
        headers["authorization"] = f"Bearer {token}"
    path = {
        "dashscope": f"/api/v1/tasks/{task.upstream_id}",
        "kling": f"/v1/videos/{task.upstream_id}",
        "gemini": f"/v1beta/{task.upstream_id}",
    }[platform]
    sent = httpx.get(base_url + path, headers=headers, trust_env=False).json()
    assert _fields(sent) - recorded == set()
