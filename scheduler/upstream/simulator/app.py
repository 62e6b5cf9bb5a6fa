"""The simulator: platforms behind one dispatcher that applies the knobs' faults."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import msgspec
import trio

from ._chat import AnthropicSim, OpenAISim
from ._common import Match, PlatformSim
from ._control import Control
from ._dashscope import DashScopeSim
from ._kling import KlingSim
from ._server import Request, Response, serve_http
from ._state import Fault, World
from ._usage import UsageControl
from ._veo import VeoSim
from .knobs import Knobs

# A body cut mid-document: what a crashing proxy or a half-written buffer sends.
_MALFORMED = b'{"request_id": "x", "output": {"task_status": '


class Simulator:
    """Speaks every simulated platform's API; ``handle`` is the server's handler."""

    def __init__(self, knobs: Knobs | None = None) -> None:
        self.world = World(knobs or Knobs())
        self.platforms: list[PlatformSim] = [
            DashScopeSim(self.world),
            KlingSim(self.world),
            VeoSim(self.world),
            OpenAISim(self.world),
            AnthropicSim(self.world),
        ]
        self.control = Control(self.world, [p.name for p in self.platforms])
        self.usage = UsageControl(self.world)

    async def handle(self, req: Request) -> Response:
        if req.path == "/_sim/usage" or req.path.startswith("/_sim/usage/"):
            return self.usage.handle(req)
        if req.path.startswith("/_sim/"):
            if req.method == "POST" and req.path.rstrip("/") == "/_sim/reset":
                self.usage.reset()
            return self.control.handle(req)
        for platform in self.platforms:
            found = platform.match(req.method, req.path)
            if found is not None:
                return await self._platform_call(platform, found, req)
        body = b'{"error": {"code": "not_found", "message": "no simulated API at this path"}}'
        return Response(404, body)

    async def _platform_call(self, platform: PlatformSim, found: Match, req: Request) -> Response:
        op, endpoint, args = found
        world = self.world
        if op == "usage":
            self.usage.arrive(platform.name)
        account = platform.account(req)
        if account is None or account in world.knobs.refused_accounts:
            return platform.error(world, 401, None, "Invalid API-key provided.", account=account)
        stats = world.begin(account, op)
        try:
            knobs = world.knobs
            delay = knobs.latency_s
            if knobs.latency_jitter_s:
                delay += world.rng.uniform(0, knobs.latency_jitter_s)
            if delay:
                await trio.sleep(delay)
            fault = world.draw_fault() if op in knobs.faults_on else None
            refusal = self._refusal(platform, op, account, fault)
            if refusal is not None:
                return refusal
            response = endpoint(req, account, *args)
            if fault == "malformed":
                response.body = _MALFORMED
            elif fault == "truncated":
                response.truncate = True
            return response
        finally:
            stats.in_flight -= 1

    def _refusal(
        self, platform: PlatformSim, op: str, account: str, fault: Fault | None
    ) -> Response | None:
        """The answer that replaces the endpoint's: injected error, QPS limit, fault."""
        world = self.world
        injected = world.take_injection(platform.name, op)
        if injected is not None:
            status, code, message = injected["status"], injected["code"], injected["message"]
            if injected.get("body") is not None:
                headers = (
                    [("retry-after", f"{world.knobs.retry_after_s:g}")] if status == 429 else []
                )
                return Response(status, msgspec.json.encode(injected["body"]), headers)
            return platform.error(world, status, code, message, account=account)
        if fault == "hang":
            return Response(hang=True)
        if fault == "5xx":
            status = 503 if world.rng.random() < 0.5 else 500
            return platform.error(
                world, status, None, "An internal error occurred.", account=account
            )
        if fault == "429" or world.over_qps(world.stats(account)):
            world.stats(account).refused_429 += 1
            return platform.error(
                world, 429, None, "Requests rate limit exceeded.", account=account
            )
        return None


@contextlib.asynccontextmanager
async def open_simulator(
    knobs: Knobs | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[Simulator, str]]:
    """A serving simulator and its base URL; stops serving when the block ends."""
    sim = Simulator(knobs)
    async with trio.open_nursery() as nursery:
        bound_host, bound_port = await nursery.start(serve_http, sim.handle, host, port)
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield sim, f"http://{shown}:{bound_port}"
        nursery.cancel_scope.cancel()
