"""``stationmaster explain --group G --platform P --model M …``: why that account, or none.

Asks a running daemon's ``GET /v1/admin/explain`` and prints every candidate of
the bucket with its runtime state, score and exclusion reason (``--json``: the
endpoint's answer as is). No lease is taken, nothing is changed.

Why over HTTP rather than building a Selector here: the filter and scoring that
explain runs live in the endpoint's handler, so calling it is the one way to
show exactly what selection does without a second copy of that logic; and the
answer is the daemon's own view (its snapshot version, the settings version it
serves), which is what "why did it pick that" is about.

The daemon's address comes from the config's ``http`` section (a wildcard host
means loopback) unless ``--url`` is given; the admin token is the config's first
``auth.admin_tokens`` entry. There is deliberately no ``--token`` option: a
token on the command line is visible to every user in ``ps``.

Exit codes: 0 explained (also when every candidate is excluded), 1 daemon
unreachable, unknown bucket or a server error, 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

import httpx
import trio

from ..core.config import Config
from .registry import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command

PATH = "/v1/admin/explain"
# The daemon answers from memory plus one Redis read; anything slower is a stuck daemon.
TIMEOUT_S = 10.0
# The daemon listening on every interface is reachable on loopback from its own host.
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # noqa: S104 - compared against, never bound


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", required=True, help="group name")
    p.add_argument("--platform", required=True, help="platform (openai, anthropic, …)")
    p.add_argument("--model", required=True, help="model name as the gateway would send it")
    p.add_argument("--session-hash", default=None, help="session hash (sticky session path)")
    p.add_argument(
        "--previous-response-id", default=None, help="previous response id (response path)"
    )
    p.add_argument("--exclude", default=None, help="comma-separated account ids already tried")
    p.add_argument("--url", default=None, help="daemon base URL (default: from the http config)")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer")


class UsageError(Exception):
    """Arguments or config that cannot make a request (exit 2)."""


def daemon_url(config: Config) -> str:
    """The base URL of the daemon this config describes (wildcard host → loopback)."""
    host, port = config.http.host, config.http.port
    if port == 0:
        raise UsageError("http.port is 0 (a random port): give the daemon's address with --url")
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def query(args: argparse.Namespace) -> dict[str, str]:
    """The endpoint's query parameters from the parsed arguments (absent ones left out)."""
    params = {"group": args.group, "platform": args.platform, "model": args.model}
    optional = {
        "session_hash": args.session_hash,
        "previous_response_id": args.previous_response_id,
        "exclude": args.exclude,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


async def fetch(url: str, token: str, params: dict[str, str]) -> tuple[int, Any]:
    """GET the explanation; (HTTP status, decoded JSON body). Raises httpx.HTTPError."""
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=TIMEOUT_S) as client:
        r = await client.get(PATH, params=params)
    try:
        body = r.json()
    except ValueError:
        body = {"error": {"code": "bad_answer", "message": r.text[:200]}}
    return r.status_code, body


def _epoch(value: Any) -> float | None:
    """An answer's RFC 3339 time as epoch seconds (None when absent or unreadable).

    Epoch numbers (daemons before times were RFC 3339) are taken as they are.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _ago(until: Any, now: float) -> str | None:
    at = _epoch(until)
    return f"{at - now:.0f}s" if at is not None and at > now else None


def describe_state(state: dict[str, Any], concurrency: int, now: float) -> str:
    """One line for a candidate's runtime state: leases, live deadlines, EWMAs, quota readings."""
    parts = [f"leases {state.get('leases', 0)}/{concurrency}"]
    for label, key in (("rate-limited", "rate_limited_until"), ("overloaded", "overloaded_until")):
        left = _ago(state.get(key), now)
        if left:
            parts.append(f"{label} {left}")
    left = _ago(state.get("unschedulable_until"), now)
    if left:
        parts.append(f"unschedulable {left} ({state.get('unschedulable_reason') or '?'})")
    if state.get("error_rate"):
        parts.append(f"err {state['error_rate']:.3f}")
    for label, key in (("lat", "latency_ms"), ("ttft", "ttft_ms")):
        if state.get(key) is not None:
            parts.append(f"{label} {state[key]:.0f}ms")
    for w in state.get("windows") or ():
        parts.append(f"{w['window']} {w['used_ratio'] * 100:.0f}%")
    return ", ".join(parts)


def render(answer: dict[str, Any], now: float) -> str:
    """The explanation as text: a header, then one line per candidate, best score first."""
    bindings = answer.get("bindings") or {}
    exclusions = answer.get("exclusions") or {}
    lines = [
        f"bucket {answer['bucket']}  snapshot version {answer['snapshot_version']}",
        "bindings: " + (", ".join(f"{k}={v or '-'}" for k, v in bindings.items()) or "none"),
        "exclusions: " + (", ".join(f"{k}={n}" for k, n in exclusions.items()) or "none"),
        f"{'score':>9} {'load':>6}  {'prio':>4}  {'account':<36}  {'name':<20}  verdict  |  state",
    ]
    for c in answer["candidates"]:
        score = f"{c['score']:.4f}" if c.get("score") is not None else "-"
        load = f"{c['load']:.3f}" if c.get("load") is not None else "-"
        verdict = "eligible"
        if c.get("excluded") is not None:
            verdict = f"excluded: {c['excluded']} ({c.get('why') or '?'})"
        state = describe_state(c.get("state") or {}, c["concurrency"], now)
        if c.get("quota"):
            # The quota rule's reasoning, shown for every candidate: "why not paused" helps too.
            state += f"; quota: {c['quota']}"
        lines.append(
            f"{score:>9} {load:>6}  {c['priority']:>4}  {c['id']:<36}  {c['name'][:20]:<20}"
            f"  {verdict}  |  {state}"
        )
    if not answer["candidates"]:
        lines.append("(no candidates)")
    return "\n".join(lines)


def _error_text(status: int, body: Any) -> tuple[int, list[str]]:
    """Exit code and stderr lines for an error answer (422 names each field)."""
    error = body.get("error", {}) if isinstance(body, dict) else {}
    message = error.get("message") or f"HTTP {status}"
    if status == 422:
        fields = (error.get("details") or {}).get("errors") or []
        lines = [f"{f.get('field')}: {f.get('reason')}" for f in fields] or [message]
        return EXIT_USAGE, lines
    if status in (401, 403):
        return EXIT_FAILURE, [f"{message} (is auth.admin_tokens the daemon's?)"]
    return EXIT_FAILURE, [message]


async def run_explain(args: argparse.Namespace, config: Config) -> int:
    """The command's body, awaitable (tests run it beside an in-process daemon)."""
    try:
        url = args.url or daemon_url(config)
        if not config.auth.admin_tokens:
            raise UsageError("auth.admin_tokens is empty: explain needs an admin token")
    except UsageError as exc:
        print(f"stationmaster: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        status, body = await fetch(url, config.auth.admin_tokens[0], query(args))
    except httpx.HTTPError as exc:
        # The exception text names the URL and the failure, never the token header.
        print(f"stationmaster: cannot reach the daemon at {url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if status != 200:
        code, lines = _error_text(status, body)
        for line in lines:
            print(f"stationmaster: {line}", file=sys.stderr)
        return code
    print(json.dumps(body, indent=2) if args.json else render(body, time.time()))
    return EXIT_OK


@command(
    "explain",
    "why a request would pick an account, or none: every candidate with state, score, reason",
    _add_arguments,
)
def _explain(args: argparse.Namespace, config: Config) -> int:
    result: int = trio.run(run_explain, args, config)
    return result
