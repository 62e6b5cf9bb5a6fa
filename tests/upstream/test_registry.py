"""The registry: configured prices and platforms, unknown platforms, bad config."""

from __future__ import annotations

import pytest

from accounts.errors import ConfigError
from scheduler.core.config import parse_config
from scheduler.upstream import (
    Rejected,
    UpstreamConfig,
    UpstreamPlatformConfig,
    UpstreamRequest,
    adapter_platforms,
    open_upstream,
)


async def test_platforms_and_unknown_platform() -> None:
    async with open_upstream(UpstreamConfig()) as up:
        assert up.platforms() == adapter_platforms() == ["dashscope", "gemini", "kling"]
        with pytest.raises(Rejected) as info:
            up.adapter("openai")
        assert "dashscope" in info.value.reason


async def test_configured_prices_override_the_builtin_ones() -> None:
    config = UpstreamConfig(
        platforms={"dashscope": UpstreamPlatformConfig(prices={"wan2.2-t2v-plus": 7, "*": 3})}
    )
    req = UpstreamRequest(
        task_id="t",
        platform="dashscope",
        model="wan2.2-t2v-plus",
        kind="video",
        params={"prompt": "p", "duration": 5},
    )
    other = UpstreamRequest(
        task_id="t", platform="dashscope", model="wanx-new", kind="image", params={"n": 2}
    )
    async with open_upstream(config) as up:
        assert up.adapter("dashscope").estimate_cost(req) == 35
        assert up.adapter("dashscope").estimate_cost(other) == 6
    async with open_upstream(UpstreamConfig()) as up:
        assert up.adapter("dashscope").estimate_cost(req) == 500_000


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"duration": "ten"}, "params.duration"),
        ({"duration": 0}, "params.duration"),
        ({"n": 99}, "params.n"),
    ],
)
async def test_bad_request_numbers_are_rejected_before_sending(
    params: dict[str, object], field: str
) -> None:
    req = UpstreamRequest(
        task_id="t", platform="dashscope", model="m", kind="video", params={"prompt": "p", **params}
    )
    async with open_upstream(UpstreamConfig()) as up:
        with pytest.raises(Rejected) as info:
            up.adapter("dashscope").estimate_cost(req)
        assert info.value.reason.startswith(field)


async def test_unknown_platform_section_is_a_config_error() -> None:
    config = UpstreamConfig(platforms={"sora": UpstreamPlatformConfig()})
    with pytest.raises(ConfigError) as info:
        async with open_upstream(config):
            pass
    assert info.value.key == "upstream.platforms.sora"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"timeout_s": 0}, "upstream.timeout_s"),
        ({"max_connections": 0}, "upstream.max_connections"),
        ({"platforms": {"kling": {"prices": {"*": -1}}}}, "upstream.platforms[...].prices[...]"),
        ({"platforms": {"kling": {"nope": 1}}}, "upstream.platforms[...].nope"),
    ],
)
def test_bad_upstream_config_names_the_key(section: dict[str, object], key: str) -> None:
    # msgspec names a dict entry `[...]`, not its key (the reason still says what is wrong).
    with pytest.raises(ConfigError) as info:
        parse_config({"upstream": section})
    assert info.value.key == key
