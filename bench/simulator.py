"""Upstream simulator benchmark: task fetches per second one simulator process serves.

Usage::

    python bench/simulator.py [--tasks 1000] [--concurrency 32] [--seconds 4] [--rounds 2]

Starts ``python -m scheduler.upstream.simulator`` as a subprocess (one process:
at most one core), submits ``--tasks`` tasks per platform, then drives closed
loops of task fetches (keep-alive connections from this process, the generator
in ``bench/_common.py``) for each platform in turn, ``--rounds`` times
interleaved, so a change in machine load hits every variant alike. Besides the
achieved rate it prints the simulator's own CPU per fetch (from
``/proc/<pid>/stat``): on a shared machine that is the steadier figure, and
``1e6 / (CPU µs per fetch)`` is what one fully busy core could serve. Finally: how
many simulator processes a polling benchmark of 1,000 fetches/s needs, with a
2x margin. Figures are printed, never judged.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator  # noqa: E402
from contextlib import asynccontextmanager, contextmanager  # noqa: E402

import trio  # noqa: E402

from bench._common import HEADER, HttpConnection, Result, closed_loop, print_setup  # noqa: E402
from scheduler.upstream.kling import Tokens  # noqa: E402

KLING_SECRET = "bench-kling-secret-of-at-least-32-bytes"  # noqa: S105 - the simulator's, not a secret
TARGET_POLLS_S = 1000.0


@contextmanager
def simulator() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.upstream.simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().rsplit(" ", 1)[1].strip()
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _platforms() -> dict[str, dict[str, object]]:
    token = Tokens().token("ak-bench", KLING_SECRET)
    return {
        "dashscope": {
            "headers": {"authorization": "Bearer sk-bench", "x-dashscope-async": "enable"},
            "submit": "/api/v1/services/aigc/video-generation/video-synthesis",
            "body": {"model": "wan2.2-t2v-plus", "input": {"prompt": "p"}},
            "fetch": lambda answer: f"/api/v1/tasks/{answer['output']['task_id']}",
        },
        "kling (JWT verified)": {
            "headers": {"authorization": f"Bearer {token}"},
            "submit": "/v1/videos/text2video",
            "body": {"model_name": "kling-v2-1", "prompt": "p"},
            "fetch": lambda answer: f"/v1/videos/text2video/{answer['data']['task_id']}",
        },
        "gemini veo": {
            "headers": {"x-goog-api-key": "bench-key"},
            "submit": "/v1beta/models/veo-3.0-generate-001:predictLongRunning",
            "body": {"instances": [{"prompt": "p"}], "parameters": {}},
            "fetch": lambda answer: f"/v1beta/{answer['name']}",
        },
    }


async def submit_all(url: str, spec: dict[str, object], n: int) -> list[str]:
    host, port = url.removeprefix("http://").split(":")
    conn = await HttpConnection.open(host, int(port))
    paths = []
    try:
        for _ in range(n):
            status, body = await conn.request(
                "POST",
                str(spec["submit"]),
                json.dumps(spec["body"]).encode(),
                spec["headers"],  # type: ignore[arg-type]
            )
            assert status == 200, body
            paths.append(spec["fetch"](json.loads(body)))  # type: ignore[operator]
    finally:
        await conn.aclose()
    return paths


async def main(args: argparse.Namespace) -> None:
    with simulator() as (proc, url):
        host, port = url.removeprefix("http://").split(":")
        async with trio.open_nursery():
            conn = await HttpConnection.open(host, int(port))
            knobs = {
                "kling_secrets": {"ak-bench": KLING_SECRET},
                "duration_min_s": 1e5,
                "duration_max_s": 1e5,
            }
            await conn.request("PATCH", "/_sim/knobs", json.dumps(knobs).encode())
            await conn.aclose()
        specs = _platforms()
        paths = {name: await submit_all(url, spec, args.tasks) for name, spec in specs.items()}
        print(HEADER + f" {'sim CPU µs/fetch':>17} {'1-core fetches/s':>17}")
        best: dict[str, float] = {}
        for _round in range(args.rounds):
            for name, spec in specs.items():
                result = await run(url, name, spec, paths[name], proc.pid, args)
                best[name] = max(best.get(name, 0.0), result)
        print()
        await adapter_side(url, paths["dashscope"], args)
        worst = min(best.values())
        needed = math.ceil(2 * TARGET_POLLS_S / worst)
        print(
            f"\nslowest platform: {worst:.0f} fetches/s per simulator core -> a "
            f"{TARGET_POLLS_S:.0f} polls/s benchmark needs {needed} simulator process(es) "
            "with a 2x margin (each on its own core)"
        )


async def run(
    url: str,
    name: str,
    spec: dict[str, object],
    paths: list[str],
    pid: int,
    args: argparse.Namespace,
) -> float:
    cursor = iter(range(10**12))
    headers = spec["headers"]

    async def exchange(conn: HttpConnection, result: Result, start: float) -> None:
        path = paths[next(cursor) % len(paths)]
        status, _ = await conn.request("GET", path, headers=headers)  # type: ignore[arg-type]
        result.latencies_s.append(trio.current_time() - start)
        result.statuses[status] += 1

    before = cpu_s(pid)
    result = await closed_loop(
        url,
        name,
        concurrency=args.concurrency,
        count=10**9,
        max_duration_s=args.seconds,
        exchange=exchange,
    )
    used = cpu_s(pid) - before
    n = len(result.latencies_s)
    result.label = f"{name} fetch"
    per = used / n * 1e6 if n else math.nan
    print(f"{result.row()} {per:>17.0f} {1e6 / per:>17.0f}")
    return 1e6 / per


async def adapter_side(url: str, paths: list[str], args: argparse.Namespace) -> None:
    """The other end: a DashScope task fetch in this process, three ways, interleaved.

    ``adapter`` is what the daemon does (``DashScope.fetch`` over
    ``TrioTransport.call``, no httpx models); ``httpx+lean`` is an httpx client on
    the same transport and ``httpx+httpcore`` one on httpx's own pool, each
    decoding the answer the adapter's way.
    """
    print(
        f"client side: DashScope task fetch in this process, {args.concurrency} tasks,"
        f" {args.seconds:g} s per run, CPU of this process"
    )
    print(f"  {'variant':<16} {'fetches/s':>10} {'CPU µs/fetch':>13} {'fetches/s per core':>19}")
    for _round in range(args.rounds):
        for name in ("httpx+httpcore", "httpx+lean", "adapter"):
            rate, per = await client_run(url, paths, args, name)
            print(f"  {name:<16} {rate:>10.0f} {per:>13.0f} {1e6 / per:>19.0f}")


@asynccontextmanager
async def fetcher(url: str, name: str) -> AsyncIterator[Callable[[str], Awaitable[object]]]:
    import httpx
    import msgspec

    from accounts.model import Account, Kind
    from scheduler.core.transport import CookielessClient, TrioTransport
    from scheduler.upstream import UpstreamConfig, open_upstream
    from scheduler.upstream.dashscope import _Answer, status_from

    headers = {"authorization": "Bearer sk-bench"}
    if name == "adapter":
        account = Account(
            id="00000000-0000-0000-0000-000000000001",
            name="bench",
            platform="dashscope",  # type: ignore[arg-type]
            kind=Kind.APIKEY,
            groups=("g",),
            base_url=url,
        )
        async with open_upstream(UpstreamConfig()) as up:
            adapter = up.adapter("dashscope")
            creds = {"api_key": "sk-bench"}
            yield lambda task_id: adapter.fetch(account, creds, task_id)
        return
    transport = (
        TrioTransport()
        if name == "httpx+lean"
        else httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=512))
    )
    async with CookielessClient(transport=transport, trust_env=False) as client:

        async def one(task_id: str) -> object:
            r = await client.get(f"{url}/api/v1/tasks/{task_id}", headers=headers)
            return status_from(msgspec.json.decode(r.content, type=_Answer))

        yield one


async def client_run(
    url: str, paths: list[str], args: argparse.Namespace, name: str
) -> tuple[float, float]:
    import resource

    ids = [p.rsplit("/", 1)[1] for p in paths]
    done = 0
    async with fetcher(url, name) as fetch:

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while True:
                await fetch(ids[i % len(ids)])
                done += 1
                i += args.concurrency

        before = resource.getrusage(resource.RUSAGE_SELF)
        start = trio.current_time()
        with trio.move_on_after(args.seconds):
            async with trio.open_nursery() as nursery:
                for k in range(args.concurrency):
                    nursery.start_soon(worker, k)
        elapsed = trio.current_time() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return done / elapsed, used / done * 1e6


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print_setup(
        "upstream simulator: task fetches/s (simulator in one subprocess, load from this one)",
        packages=("trio", "httptools", "msgspec", "pyjwt"),
        extra={"tasks per platform": args.tasks, "concurrency": args.concurrency},
    )
    trio.run(main, args)
