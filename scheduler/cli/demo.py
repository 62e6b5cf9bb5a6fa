"""Demo accounts for ``stationmaster dev``: every platform, all pointing at the simulator.

Seeded through the admin API (the same path an operator uses), in group
``demo``. Idempotent across restarts: an existing demo account (by name) gets
its ``base_url`` pointed at this run's simulator; nothing else of it changes.
The credentials are the simulator's (it accepts any API key, and verifies Kling
tokens with :func:`~scheduler.upstream.simulator.kling_default_secret`): no key
of your own is needed, and none of these work anywhere else.
"""

from __future__ import annotations

from typing import Any

import httpx

from ..upstream.simulator import kling_default_secret

GROUP = "demo"


def demo_accounts() -> list[dict[str, Any]]:
    """The accounts ``dev`` seeds (without ``base_url``)."""
    kling_ak = "ak-demo-kling-1"
    return [
        _account("demo-dashscope-1", "dashscope", {"api_key": "sk-demo-dashscope-1"}, ["wan*"]),
        _account("demo-dashscope-2", "dashscope", {"api_key": "sk-demo-dashscope-2"}, ["wan*"]),
        _account(
            "demo-kling-1",
            "kling",
            {"access_key": kling_ak, "secret_key": kling_default_secret(kling_ak)},
            ["kling-*"],
        ),
        _account("demo-openai-1", "openai", {"api_key": "sk-demo-openai-1"}, ["gpt-*"]),
        _account(
            "demo-codex-1", "openai", {"access_token": "demo-codex-1"}, ["gpt-*"], kind="oauth"
        ),
        _account(
            "demo-claude-1",
            "anthropic",
            {"access_token": "sk-ant-oat-demo-1"},
            ["claude-*"],
            kind="oauth",
        ),
    ]


def _account(
    name: str, platform: str, credentials: dict[str, str], models: list[str], kind: str = "apikey"
) -> dict[str, Any]:
    return {
        "name": name,
        "platform": platform,
        "kind": kind,
        "groups": [GROUP],
        "models": models,
        "concurrency": 4,
        "credentials": credentials,
    }


async def seed_demo_accounts(daemon_url: str, admin_token: str, simulator_url: str) -> list[str]:
    """Create (or re-point) the demo accounts; their names, in order.

    Raises ``httpx.HTTPStatusError`` when the admin API refuses (a bug, not input).
    """
    headers = {"authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(
        base_url=daemon_url, headers=headers, trust_env=False, timeout=10
    ) as client:
        listed = await client.get("/v1/admin/accounts", params={"group": GROUP, "limit": 500})
        listed.raise_for_status()
        existing = {a["name"]: a for a in listed.json()["items"]}
        names = []
        for account in demo_accounts():
            found = existing.get(account["name"])
            if found is None:
                answer = await client.post(
                    "/v1/admin/accounts", json={**account, "base_url": simulator_url}
                )
            elif found.get("base_url") != simulator_url:
                answer = await client.patch(
                    f"/v1/admin/accounts/{found['id']}",
                    json={"base_url": simulator_url, "version": found["version"]},
                )
            else:
                names.append(account["name"])
                continue
            answer.raise_for_status()
            names.append(account["name"])
        return names
