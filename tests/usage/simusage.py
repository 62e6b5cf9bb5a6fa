"""The simulator's usage endpoints from a test: set windows, read arrivals and peaks.

    with start_usage_sim(seed=1) as (base_url, sim):
        sim.set_usage("tok", five={"used_percent": 97, "resets_in_s": 2})  # the 5h window
        sim.arrivals("anthropic")          # simulator-clock times of every usage request
        sim.control.account("tok")         # generic counters: usage_reads, concurrent_peak
        sim.no_scope("anthropic")          # the next usage read answers 403, scope missing

Synchronous (plain httpx.Client) like the simulator's own control client; the
simulator runs in another thread (or process), so a call blocks the test's loop
for one loopback round trip only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx

from tests.upstream.simsupport import SimControl, SimError, start_simulator


class SimUsage:
    """``/_sim/usage`` (see ``scheduler/upstream/simulator/_usage.py``)."""

    def __init__(self, base_url: str, control: SimControl) -> None:
        self.control = control
        self._http = httpx.Client(base_url=base_url, timeout=10.0, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, f"/_sim/usage{path}", json=body)
        data = response.json() if response.content else None
        if response.status_code >= 400:
            raise SimError(response.status_code, data)
        return data

    def set_usage(
        self,
        key: str,
        *,
        five: dict[str, float] | None = None,
        seven: dict[str, float] | None = None,
    ) -> None:
        """Set the account's 5h / 7d windows: ``{"used_percent": p, "resets_in_s": s}``."""
        body = {name: spec for name, spec in (("5h", five), ("7d", seven)) if spec is not None}
        self._call("POST", f"/accounts/{key}", body)

    def no_scope(self, platform: str, count: int = 1) -> None:
        """The next ``count`` usage reads of ``platform`` answer 403 as a token without the
        ``user:profile`` scope gets it (Anthropic's body, recorded in fixtures)."""
        self.control.inject(
            403,
            "permission_error",
            "OAuth token does not meet scope requirement user:profile",
            platform=platform,
            op="usage",
            count=count,
        )

    def arrivals(self, platform: str) -> list[float]:
        return list(self._call("GET", "")[platform]["times"])

    def requests(self, platform: str) -> int:
        return int(self._call("GET", "")[platform]["requests"])


@contextlib.contextmanager
def start_usage_sim(*, process: bool = False, **knobs: Any) -> Iterator[tuple[str, SimUsage]]:
    """``start_simulator`` (thread, or ``process=True``) with the usage control client."""
    with start_simulator(process=process, **knobs) as (base_url, control):
        proc = control.process
        sim = SimUsage(base_url, control)
        try:
            yield base_url, sim
        finally:
            sim.close()
    # start_simulator leaves the child's stdout pipe to the garbage collector, which
    # pytest (warnings as errors) turns into a failure: close it once the child is gone.
    if proc is not None and proc.stdout is not None:
        proc.stdout.close()
