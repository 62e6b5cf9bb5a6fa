"""schemathesis over ``/openapi.json`` of a real daemon's two planes, one token each.

A ``stationmaster run`` subprocess with accounts in it; ``schemathesis run`` (the
CLI of schemathesis 4, in a subprocess: its own event loop, its own threads)
once per plane: the admin token against the control plane (hypercorn +
starlette, its own document: admin, metrics, probes) and the gateway token
against the data plane (the lean wire server, its own document: the gateway's
routes and the probes), with every default check, bounded examples and time. Green
means: no 5xx, no answer outside the published schema, no status the operation
does not document, and valid requests accepted / invalid ones refused.

Configured (``schemathesis.toml`` written here), one thing only: 428 is this
API's documented answer to a compare-and-set write sent without a version
(RFC 6585). The settings ``PUT`` declares ``If-Match`` as required and answers
428 without it; an account ``PATCH`` takes the version as ``If-Match`` *or* a
body field, which no schema can say, and answers 428 with neither. So 428 is
added to the statuses ``missing_required_header`` and
``positive_data_acceptance`` accept. Likewise 402 (RFC 9110): ``POST /v1/tasks``
answers it when the owner's balance cannot cover the hold, and no schema can say
which owner has credit; it is accepted by ``positive_data_acceptance`` only.
And no NUL character is generated: task ``params`` are stored as PostgreSQL
jsonb, which cannot hold one anywhere in a document; the schema says so in
words (422 ``params``), which no JSON Schema keyword can say of every nested key
and string.

Random group names rarely name a bucket, so before the gateway run the test
takes two real leases and binds them to the ``lease_id`` of release and renew
(schemathesis' per-operation ``parameters``): those runs then also answer 200
with real bodies, checked against the published schema.

Between the two runs the settings are put back to what the test set (the admin
run may have changed any of them): ``wait.max_wait_ms = 0`` keeps a select on a
full bucket from waiting, which bounds the gateway run's time. And every account
is deleted before fresh ones are seeded: one the admin run created or changed to
``concurrency: 1``, in a group the gateway run also generates, fills at once,
and its 503 ``no_available_accounts`` (the documented answer for a full bucket)
is not what this test looks for.
That answer cannot be avoided, only made rare: the run's own releases report
errors and latencies that rightly take accounts out of rotation (``slow``,
rate-limited). So for ``select`` alone, 503 is not counted as a server error; its
body is still checked against the published schema (``no_available_accounts``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ...support import ADMIN_TOKEN, GATEWAY_TOKEN, ROOT, DaemonProcess, admin_client, config_dict

pytestmark = pytest.mark.slow

SCHEMATHESIS_TOML = """\
[generation]
allow-x00 = false

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "402", "403", "404", "409", "428", "429", "5xx"]

[checks.missing_required_header]
expected-statuses = ["400", "401", "403", "406", "415", "422", "428"]

[[operations]]
include-operation-id = "select"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""
# Per token: examples per operation and phase, and a cap on the run's time.
MAX_EXAMPLES = 25
MAX_TIME_S = {"admin": 45, "gateway": 30}
SEED = 15
SETTINGS = {"wait": {"max_wait_ms": 0}}


async def _reset_settings(http: httpx.AsyncClient) -> None:
    current = (await http.get("/v1/admin/settings")).json()
    # null resets every section the run may have set; then the test's own values.
    patch: dict[str, Any] = {section: None for section in current["document"]}
    patch.update(SETTINGS)
    r = await http.put(
        "/v1/admin/settings", json=patch, headers={"if-match": str(current["version"])}
    )
    assert r.status_code == 200, r.text


async def _seed_accounts(http: httpx.AsyncClient, tag: str) -> None:
    for i, (platform, models) in enumerate(
        [("openai", ["gpt-4o*", "o3"]), ("openai", []), ("anthropic", ["claude-*"])]
    ):
        r = await http.post(
            "/v1/admin/accounts",
            json={
                "name": f"fuzz-{tag}-{i}",
                "platform": platform,
                # "default" / openai / gpt-4o: the examples the select schema publishes.
                "groups": ["g1", "default"],
                "models": models,
                "concurrency": 1000,
                "base_url": "https://upstream.example",
                "credentials": {"api_key": f"sk-fuzz-{i}-xxxxxxxxxxxxxxxx"},
            },
        )
        assert r.status_code == 201, r.text


async def _delete_accounts(http: httpx.AsyncClient) -> None:
    """Delete every account (the admin run may have created or changed any)."""
    while True:
        r = await http.get("/v1/admin/accounts", params={"limit": 500})
        assert r.status_code == 200, r.text
        if not (accounts := r.json()["items"]):
            return
        for account in accounts:
            r = await http.delete(f"/v1/admin/accounts/{account['id']}")
            assert r.status_code in (200, 204, 404), r.text


async def _real_leases(url: str, data_url: str) -> dict[str, str]:
    """A lease id for each of release and renew (operationId -> lease id).

    The admin run may have deleted or changed every account: fresh ones are added,
    and selects repeat until this instance's snapshot has them.
    """
    async with admin_client(url) as http:
        await _delete_accounts(http)
        await _seed_accounts(http, "gateway")
    leases = {}
    body = {"group": "default", "platform": "openai", "model": "gpt-4o"}
    async with admin_client(data_url, GATEWAY_TOKEN) as gw:
        with trio.fail_after(30):
            for operation in ("release", "renew"):
                while (r := await gw.post("/v1/select", json=body)).status_code != 200:
                    assert r.status_code in (404, 503), r.text
                    await trio.sleep(0.05)
                leases[operation] = r.json()["lease_id"]
    return leases


def _config(workdir: Path, leases: dict[str, str]) -> Path:
    text = SCHEMATHESIS_TOML
    for operation, lease in leases.items():
        text += (
            f'\n[[operations]]\ninclude-operation-id = "{operation}"\n'
            f'parameters = {{ lease_id = "{lease}" }}\n'
        )
    path = workdir / f"st-{len(leases)}.toml"
    path.write_text(text)
    return path


async def _schemathesis(
    url: str, token: str, budget_s: int, workdir: Path, config: Path
) -> tuple[int, str]:
    args = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", f"{url}/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", str(MAX_EXAMPLES), "--max-time", str(budget_s),
        # One worker: hypothesis parses lambda sources with ast, which CPython 3.11
        # (before 3.12) cannot do from two threads at once ("AST constructor
        # recursion depth mismatch"), a crash of the run, not a finding.
        "--seed", str(SEED), "--workers", "1", "--request-timeout", "10",
        "--generation-database", "none", "--no-color",
        "--report", "junit", "--report-dir", str(workdir / "report"),
    ]  # fmt: skip
    with trio.fail_after(budget_s + 60):
        done = await trio.run_process(
            args, capture_stdout=True, capture_stderr=True, check=False, cwd=workdir
        )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


async def test_schemathesis_finds_nothing(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Any, tmp_path: Path
) -> None:
    data = config_dict(pg_dsn, redis_url, redis_prefix, log={"format": "json", "level": "info"})
    proc = DaemonProcess(data)
    try:
        url = await proc.wait_ready(timeout=60)
        async with admin_client(url) as http:
            await _seed_accounts(http, "admin")
            await _reset_settings(http)
        results = {}
        planes = (("admin", ADMIN_TOKEN, url), ("gateway", GATEWAY_TOKEN, proc.data()))
        for name, token, plane_url in planes:
            leases = await _real_leases(url, proc.data()) if name == "gateway" else {}
            config = _config(tmp_path, leases)
            results[name] = await _schemathesis(
                plane_url, token, MAX_TIME_S[name], tmp_path, config
            )
            async with admin_client(url) as http:
                await _reset_settings(http)
        for name, (code, output) in results.items():
            print(f"--- schemathesis, {name} token ---\n{output[-4000:]}")
            assert code == 0, f"schemathesis with the {name} token:\n{output[-12000:]}"
            assert "passed" in output, output[-2000:]
    finally:
        proc.terminate()
        assert await proc.wait(timeout=30) == 0, proc.output()[-3000:]
        if proc.proc.stdout is not None:
            proc.proc.stdout.close()
    assert ROOT.is_dir()
