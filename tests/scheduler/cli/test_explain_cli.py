"""``stationmaster explain`` against a real daemon: every candidate, its state, score and reason.

The command runs in this process (same parser, same code as the console script)
beside an in-process daemon, and once as a real subprocess (registration in the
CLI, exit code, stdout).

Bad input tried (exit 2 with the field, or exit 1 with the reason; nothing
changed, no lease taken): an unknown platform, an unknown group, a daemon that
is not listening, a config with port 0 and no ``--url``, a config without admin
tokens, a token the daemon does not know.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import pytest
import trio

from accounts.model import QuotaWindow, Window
from scheduler.cli.entry import build_parser
from scheduler.cli.explain import daemon_url, describe_state, run_explain
from scheduler.core.config import parse_config
from scheduler.selection.store import Keys, encode_reading
from tests.support import (
    ROOT,
    admin_client,
    config_dict,
    config_env,
    free_port,
    open_daemon,
)

SECRET = "sk-explain-" + "s" * 24
BASE = ["explain", "--group", "gx", "--platform", "openai", "--model", "gpt-4o"]


async def _create(url: str) -> dict[str, str]:
    """Five accounts, one per verdict: eligible, model, rate limit, quota pause, full."""
    specs: dict[str, dict[str, Any]] = {
        "ok": {},
        "claude": {"models": ["claude-*"]},
        "limited": {},
        "paused": {"auto_pause_5h_threshold": 0.8},
        "full": {},
    }
    ids = {}
    async with admin_client(url) as admin:
        for name, extra in specs.items():
            body = {
                "name": name,
                "platform": "openai",
                "groups": ["gx"],
                "concurrency": 1,
                "credentials": {"api_key": SECRET},
                **extra,
            }
            r = await admin.post("/v1/admin/accounts", json=body)
            assert r.status_code in (200, 201), r.text
            ids[name] = r.json()["id"]
        # The builder publishes asynchronously: wait until the bucket shows all five.
        while True:
            r = await admin.get("/v1/admin/explain", params={"group": "gx", "platform": "openai",
                                                             "model": "gpt-4o"})  # fmt: skip
            if r.status_code == 200 and len(r.json()["candidates"]) == len(specs):
                return ids
            await trio.sleep(0.05)


async def _shape_state(redis: Any, ids: dict[str, str]) -> None:
    """Rate-limit one, push one over its 5h threshold, fill one (runtime state in Redis)."""
    now = time.time()
    keys = Keys(redis)
    await redis.client.hset(
        keys.state("openai", ids["limited"]), {"rl_until": str(int((now + 120) * 1000))}
    )
    name, value = encode_reading(
        QuotaWindow(window=Window.FIVE_HOURS, used_ratio=0.95, observed_at=now, reset_after_s=3600)
    )
    await redis.client.hset(keys.state("openai", ids["paused"]), {name: value})
    await redis.client.zadd(
        keys.leases("openai", ids["full"]), {"openai~gx~held~1": (now + 600) * 1000}
    )


async def _run(capsys: pytest.CaptureFixture[str], config: Any, *args: str) -> tuple[int, str, str]:
    parsed = build_parser().parse_args([*BASE, *args])
    code = await run_explain(parsed, config)
    out, err = capsys.readouterr()
    return code, out, err


async def test_explain_prints_every_candidate_with_state_score_and_reason(
    config, db, redis, capsys
):
    with trio.fail_after(40):
        async with open_daemon(config) as (_daemon, url):
            ids = await _create(url)
            await _shape_state(redis, ids)
            code, out, err = await _run(capsys, config, "--url", url)
            assert (code, err) == (0, "")
            lines = {i: line for i, line in ids.items() for line in out.splitlines() if i in line}
            assert "eligible" in lines["ok"] and "leases 0/1" in lines["ok"]
            assert "excluded: model_unsupported" in lines["claude"]
            assert (
                "excluded: rate_limited" in lines["limited"] and "rate-limited" in lines["limited"]
            )
            assert "excluded: quota_paused_5h" in lines["paused"] and "5h 95%" in lines["paused"]
            assert "excluded: full" in lines["full"] and "leases 1/1" in lines["full"]
            assert "bucket gx/openai" in out and "full=1" in out and "model_unsupported=1" in out
            assert out.splitlines()[4].split()[-1] != "-"  # the eligible one is first, scored

            code, out, _ = await _run(
                capsys, config, "--url", url, "--json", "--session-hash", "s1"
            )
            answer = json.loads(out)
            async with admin_client(url) as admin:
                r = await admin.get("/v1/admin/explain", params={"group": "gx", "platform":
                                    "openai", "model": "gpt-4o", "session_hash": "s1"})  # fmt: skip
            direct = r.json()
            assert code == 0 and answer["exclusions"] == direct["exclusions"]
            assert [c["id"] for c in answer["candidates"]] == [
                c["id"] for c in direct["candidates"]
            ]
            assert answer["bindings"] == {"session": None}
            assert [c["excluded"] for c in answer["candidates"]].count(None) == 1
            assert SECRET not in out
            # Explaining took no lease: the eligible account's set is still empty.
            assert await redis.client.zcard(Keys(redis).leases("openai", ids["ok"])) == 0


async def test_explain_errors_have_clear_exit_codes(config, db, capsys, pg_dsn, redis_url):
    """Unknown platform (2, field named), unknown group (1), nothing listening (1), port 0
    without --url (2), no admin tokens (2), a token the daemon does not know (1)."""
    with trio.fail_after(40):
        async with open_daemon(config) as (_daemon, url):
            await _create(url)
            code, _, err = await _run(capsys, config, "--url", url, "--platform", "nope")
            assert code == 2 and err.startswith("stationmaster: platform:")
            parsed = build_parser().parse_args([*BASE, "--url", url])
            parsed.group = "no-such-group"
            assert await run_explain(parsed, config) == 1
            assert "no-such-group" in capsys.readouterr().err
            code, _, err = await _run(capsys, config, "--url", f"http://127.0.0.1:{free_port()}")
            assert code == 1 and "cannot reach the daemon" in err
            code, _, err = await _run(capsys, config)  # the test config listens on port 0
            assert code == 2 and "--url" in err
            no_tokens = parse_config(
                config_dict(pg_dsn, redis_url, "x:", auth={"admin_tokens": []}, http={"port": 9})
            )
            code, _, err = await _run(capsys, no_tokens)
            assert code == 2 and "admin_tokens" in err
            other = parse_config(
                config_dict(pg_dsn, redis_url, "x:", auth={"admin_tokens": ["z" * 20]})
            )
            code, _, err = await _run(capsys, other, "--url", url)
            assert code == 1 and "admin_tokens" in err and "z" * 20 not in err


async def test_explain_as_a_subprocess(pg_dsn, redis_url, redis_prefix, config, db):
    """The console entry point: registered subcommand, exit 0, the table on stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATIONMASTER_")}
    env.update(config_env(config_dict(pg_dsn, redis_url, redis_prefix)))
    with trio.fail_after(60):
        async with open_daemon(config) as (_daemon, url):
            ids = await _create(url)
            done = await trio.run_process(
                [sys.executable, "-m", "scheduler", *BASE, "--url", url],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
                cwd=ROOT,
            )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert all(i in out for i in ids.values())
    # No runtime state was set: every account fits gpt-4o except the claude-only one.
    assert out.count("eligible") == len(ids) - 1
    assert out.count("excluded: model_unsupported") == 1


def test_describe_state_shows_live_deadlines_only():
    now = 1000.0
    state = {
        "leases": 2,
        "rate_limited_until": now + 30,
        "overloaded_until": now - 5,  # past: not shown
        "unschedulable_until": now + 10,
        "unschedulable_reason": "token refresh",
        "error_rate": 0.25,
        "ttft_ms": 812.4,
        "windows": [{"window": "7d", "used_ratio": 0.5}],
    }
    text = describe_state(state, 3, now)
    assert text == (
        "leases 2/3, rate-limited 30s, unschedulable 10s (token refresh), err 0.250,"
        " ttft 812ms, 7d 50%"
    )


def test_daemon_url_from_the_http_config(pg_dsn, redis_url):
    """A wildcard host is reached on loopback; an IPv6 host is bracketed."""
    cases = [
        ("0.0.0.0", "127.0.0.1"),  # noqa: S104 - a config value under test, nothing binds
        ("::", "127.0.0.1"),
        ("::1", "[::1]"),
        ("10.1.2.3", "10.1.2.3"),
    ]
    for host, want in cases:
        cfg = parse_config(config_dict(pg_dsn, redis_url, "x:", http={"host": host, "port": 8123}))
        assert daemon_url(cfg) == f"http://{want}:8123"
