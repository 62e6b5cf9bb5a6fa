"""``stationmaster accounts probe ID``: read one account's usage now and show the reading.

Runs without a daemon, like the other ``accounts`` actions: it reads the
settings from PostgreSQL, opens Redis, and probes through the same path as the
prober and ``POST /v1/admin/accounts/{id}/probe`` (the account's probe lock and
the probe rates apply); the readings it gets are stored for every instance.
Exit 0 when the usage was read, 1 when the probe ran but the upstream did not
give a reading (or the account was busy), 2 for an account without a usage
endpoint.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec

from accounts.db import Database
from accounts.errors import StationmasterError, StoreUnavailable
from accounts.repository import AccountRepository
from snapshot.redis import UNAVAILABLE, open_redis
from snapshot.settings import SettingsStore

from ..core.config import Config
from ..selection.credentials import Credentials
from ..selection.store import RuntimeStore
from ..usage import ProbeResult, ProbeStore, UsageProbe
from .registry import EXIT_FAILURE, EXIT_OK


async def probe_account(
    db: Database, repo: AccountRepository, config: Config, account_id: str, *, as_json: bool
) -> int:
    settings = (await SettingsStore(db).load()).settings
    failure: StationmasterError | None = None
    try:
        async with open_redis(config.redis) as redis:
            probe = UsageProbe(
                runtime=RuntimeStore(redis),
                store=ProbeStore(redis),
                accounts=repo,
                credentials=Credentials(repo.cipher).get,
                settings=lambda: settings,
            )
            # Raised out of the client's block, an error would come wrapped in an
            # exception group (its task group): keep it and raise it plainly after.
            try:
                result = await probe.probe_now(account_id)
            except StationmasterError as exc:
                failure = exc
    except UNAVAILABLE as exc:
        raise StoreUnavailable("redis", type(exc).__name__) from None
    if failure is not None:
        raise failure
    if as_json:
        print(msgspec.json.format(msgspec.json.encode(result), indent=2).decode())
    else:
        print(render(result, time.time()))
    return EXIT_OK if result.result == "ok" else EXIT_FAILURE


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "reset unknown"
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    left = at - now
    if left <= 0:
        return f"reset {stamp} (passed)"
    hours, rest = divmod(int(left), 3600)
    return f"resets {stamp} (in {hours}h {rest // 60:02d}m)"


def render(result: ProbeResult, now: float) -> str:
    """The probe's answer for a terminal: one line per window."""
    lines = [
        f"{'account':10} {result.account_id} ({result.platform})",
        f"{'result':10} {result.result}" + (f": {result.message}" if result.message else ""),
    ]
    for w in result.windows:
        lines.append(f"{w.window.value:10} {w.used_ratio:7.1%} used, {_when(w.resets_at(), now)}")
    for x in result.extra:
        lines.append(
            f"{x.name:10} {x.used_ratio:7.1%} used, {_when(x.reset_at, now)} (not used for pausing)"
        )
    if result.paused is not None:
        lines.append(f"{'paused':10} {'yes' if result.paused else 'no'}: {result.pause_reason}")
    if result.account_error:
        lines.append(f"{'error':10} the account is now in error (401, like a reported 401)")
    if not result.recorded:
        lines.append(f"{'note':10} the probe outlived its lock; its outcome was not recorded")
    return "\n".join(lines)
