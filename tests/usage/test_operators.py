"""Operators: `POST /v1/admin/accounts/{id}/probe` on a daemon; `stationmaster accounts probe`."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from accounts.inputs import AccountCreate
from accounts.model import Platform
from accounts.repository import AccountRepository
from scheduler.cli import accounts as accounts_cli
from scheduler.cli.entry import build_parser
from scheduler.core.config import parse_config
from scheduler.usage import ProbeStore
from scheduler.usage.store import Claimed
from snapshot.redis import RedisStore
from snapshot.settings import SettingsStore, UsageSettings
from tests.support import ADMIN_TOKEN, admin_client, config_dict, open_daemon, run_cli

from .kit import CIPHER, GROUP, create, oauth
from .simusage import SimUsage


async def test_admin_probe_runs_one_probe_and_shows_the_reading(
    db: Any, redis: RedisStore, config: Any, usage_sim: tuple[str, SimUsage]
) -> None:
    """Bad inputs tried: no token, an unknown id, a malformed id, an API-key account (no usage
    endpoint), an account another probe holds. Each answers its status and changes nothing."""
    base_url, sim = usage_sim
    repo = AccountRepository(db, CIPHER)
    # The daemon's own prober stays out of the way: this test drives the probes itself.
    await SettingsStore(db).write({"usage": {"enabled": False}})
    acct, held = await create(
        repo,
        [oauth("o", "anthropic", base_url, "tok-o"), oauth("h", "openai", base_url, "tok-h")],
    )
    [apikey] = await create(
        repo,
        [
            AccountCreate(
                name="k", platform=Platform.ANTHROPIC, groups=[GROUP], credentials={"api_key": "x"}
            )
        ],
    )
    sim.set_usage("tok-o", five={"used_percent": 42, "resets_in_s": 600})
    async with open_daemon(config) as (daemon, url), admin_client(url) as http:
        with trio.fail_after(30):
            ok = await http.post(f"/v1/admin/accounts/{acct.id}/probe")
            assert ok.status_code == 200, ok.text
            body = ok.json()
            windows = {w["window"]: w for w in body["windows"]}
            assert body["result"] == "ok" and body["paused"] is False
            assert windows["5h"]["used_ratio"] == 0.42 and windows["5h"]["reset_at"] is not None
            assert windows["7d"]["used_ratio"] == 0.0
            # Stored for every instance, through selection's write path.
            state = await daemon.services.selector.runtime.read_many("anthropic", [acct.id])
            assert [w.used_ratio for w in state[acct.id].windows if w.window.value == "5h"] == [
                0.42
            ]

            async with admin_client(url, token="wrong") as stranger:
                assert (
                    await stranger.post(f"/v1/admin/accounts/{acct.id}/probe")
                ).status_code == 401
            missing = await http.post(
                "/v1/admin/accounts/00000000-0000-0000-0000-000000000009/probe"
            )
            assert missing.status_code == 404
            assert (await http.post("/v1/admin/accounts/not-a-uuid/probe")).status_code == 404
            nope = await http.post(f"/v1/admin/accounts/{apikey.id}/probe")
            assert nope.status_code == 409
            assert nope.json()["error"]["code"] == "not_probeable"
            assert "no usage endpoint" in nope.json()["error"]["message"]

            claim = await ProbeStore(redis).claim(held.id, "openai", UsageSettings())
            assert isinstance(claim, Claimed)
            busy = await http.post(f"/v1/admin/accounts/{held.id}/probe")
            assert busy.status_code == 409 and int(busy.headers["retry-after"]) >= 1
            assert busy.json()["error"]["code"] == "probe_busy"

            metrics = (await http.get("/metrics")).text
    assert 'stationmaster_usage_probes_total{platform="anthropic",result="ok"} 1.0' in metrics
    assert 'stationmaster_actor_up{actor="usage-prober"} 1.0' in metrics
    reads = sim.control.counters()["accounts"]
    assert reads["tok-o"]["usage_reads"] == 1 and "tok-h" not in reads


async def test_cli_probe_prints_the_reading(
    db: Any,
    pg_dsn: str,
    redis: RedisStore,
    redis_url: str,
    redis_prefix: str,
    usage_sim: tuple[str, SimUsage],
    capsys: pytest.CaptureFixture[str],
) -> None:
    base_url, sim = usage_sim
    repo = AccountRepository(db, CIPHER)
    [acct] = await create(repo, [oauth("c", "openai", base_url, "tok-c")])
    sim.set_usage(
        "tok-c", five={"used_percent": 97, "resets_in_s": 900}, seven={"used_percent": 12}
    )
    await SettingsStore(db).write({"quota": {"default_5h_threshold": 0.9}})
    cfg = config_dict(pg_dsn, redis_url, redis_prefix)
    code, out, err = await run_cli(cfg, "accounts", "probe", acct.id)
    assert code == 0, err
    assert "result     ok" in out
    assert "5h           97.0% used, resets " in out and "(in 0h 1" in out
    assert "paused     yes: 5h window 97.0% used >= threshold 90.0%" in out
    # The same command in this process (same parser, same code; no interpreter start-up).
    code, out, err = await cli_inproc(capsys, cfg, "probe", acct.id, "--json")
    assert code == 0, err
    assert json.loads(out)["windows"][0]["used_ratio"] == 0.97
    code, _out, err = await cli_inproc(capsys, cfg, "probe", "00000000-0000-0000-0000-000000000009")
    assert code == 1 and "stationmaster accounts probe: no account with this id" in err
    assert "Traceback" not in err
    assert ADMIN_TOKEN not in out + err


async def cli_inproc(
    capsys: pytest.CaptureFixture[str], cfg: dict[str, Any], *args: str
) -> tuple[int, str, str]:
    parsed = build_parser().parse_args(["accounts", *args])
    capsys.readouterr()
    with trio.fail_after(30):
        code = await accounts_cli._main(parsed, parse_config(cfg))
    out, err = capsys.readouterr()
    return code, out, err
