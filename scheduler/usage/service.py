"""One usage probe of one account, start to end: shared by the prober, the admin API, the CLI.

claim (lock, due, rates) → read the usage endpoint → write the readings through
selection's write path (:meth:`~scheduler.selection.store.RuntimeStore.write_readings`,
the passive path's fields and clock) → record the outcome and release the lock.

Outcomes (``ProbeResult.result``; also the ``result`` label of the probes metric):
``ok``; ``cannot_probe`` (403 scope, 404, no token: asked again after
``cannot_probe_retry_s``); ``auth_failed`` (401: the account-error path, exactly
as a reported 401); ``rate_limited`` (429) and ``failed`` (timeout, 5xx,
unreadable answer): both back off. Apart from 401, a failed probe changes no
account state: no pause, no error, no deadline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import trio

from accounts.crypto import DecryptError
from accounts.model import Account, QuotaWindow
from accounts.rules import quota_pause
from snapshot.settings import Settings, UsageSettings

from ..core.logs import get_logger
from ..selection.reports import account_error
from ..selection.store import RuntimeState, RuntimeStore
from . import rules
from .adapters import UsageAdapter, adapter_for, read_usage
from .errors import (
    AuthFailed,
    CannotProbe,
    NotProbeable,
    ProbeBusy,
    ProbeRateLimited,
    RateLimited,
    Transient,
)
from .model import ExtraWindow, UsageReport
from .store import Claimed, Locked, OverRate, ProbeStore

log = get_logger("usage")

# An operator's probe waits at most this long for a free rate slot.
MANUAL_WAIT_S = 10.0


class ProbeResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one probe found (the admin API and the CLI show it as is)."""

    account_id: str
    platform: str
    result: str
    message: str | None = None
    windows: tuple[QuotaWindow, ...] = ()
    extra: tuple[ExtraWindow, ...] = ()
    # The pause verdict with the new readings, when the probe read any.
    paused: bool | None = None
    pause_reason: str | None = None
    # Whether the probe marked the account errored (only ever on a 401).
    account_error: bool = False
    # The outcome reached the shared record (False: the lock had lapsed).
    recorded: bool = True


class ProbeOutcome(msgspec.Struct, frozen=True, kw_only=True):
    result: str
    report: UsageReport | None = None
    message: str | None = None
    retry_after_s: float | None = None


class UsageProbe:
    """Probes accounts; shared by the prober actor, the admin endpoint and the CLI.

    ``client`` is the prober's HTTP client while it runs; without one (the actor
    is down, or the CLI) a probe opens a client of its own for that probe.
    ``on_state`` receives the account's runtime state after a write (the
    selector's view, so this instance selects with it at once).
    """

    def __init__(
        self,
        *,
        runtime: RuntimeStore,
        store: ProbeStore,
        accounts: Any,
        credentials: Callable[[Account], Any],
        settings: Callable[[], Settings],
        metrics: Any = None,
        on_state: Callable[[str, str, RuntimeState], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.accounts = accounts
        self.credentials = credentials
        self.settings = settings
        self.metrics = metrics
        self.on_state = on_state
        self.clock = clock
        self.client: httpx.AsyncClient | None = None

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self.client is not None:
            yield self.client
            return
        async with open_client(self.settings().usage) as client:
            yield client

    # --- an operator's probe ----------------------------------------------------------

    async def probe_now(self, account_id: str) -> ProbeResult:
        """Probe one account now (``POST /v1/admin/accounts/{id}/probe``, ``accounts probe``).

        The schedule's due time does not apply; the lock and the rates do. Raises
        NotFound, NotProbeable (no usage endpoint for the account), ProbeBusy
        (another probe holds it) or ProbeRateLimited (no rate slot within a few seconds).
        """
        account = await self.accounts.get(account_id)
        adapter = adapter_for(account)
        if adapter is None:
            raise NotProbeable(
                f"a {account.platform} {account.kind} account has no usage endpoint to probe",
                account_id=account.id,
            )
        platform = str(account.platform)
        before = (await self.runtime.read_many(platform, [account.id])).get(account.id)
        deadline = trio.current_time() + MANUAL_WAIT_S
        while True:
            claim = await self.store.claim(account.id, platform, self.settings().usage, force=True)
            if isinstance(claim, Claimed):
                return await self.run_claimed(account, adapter, claim, before)
            if isinstance(claim, Locked):
                raise ProbeBusy(
                    "another probe of this account is running",
                    retry_after_s=claim.wait_s,
                    account_id=account.id,
                )
            wait = claim.wait_s if isinstance(claim, OverRate) else 1.0
            if trio.current_time() + wait > deadline:
                raise ProbeRateLimited(
                    "the probe rate is used up; try again shortly",
                    retry_after_s=wait,
                    account_id=account.id,
                )
            await trio.sleep(wait)

    # --- one claimed probe --------------------------------------------------------------

    async def run_claimed(
        self,
        account: Account,
        adapter: UsageAdapter,
        claim: Claimed,
        before: RuntimeState | None,
    ) -> ProbeResult:
        """Read, write, record: the probe of an account whose lock ``claim`` holds."""
        cfg = self.settings()
        outcome = await self._read(account, adapter, cfg.usage)
        platform = str(account.platform)
        result = ProbeResult(
            account_id=account.id,
            platform=platform,
            result=outcome.result,
            message=outcome.message,
        )
        if outcome.report is not None:
            result = await self._apply(account, outcome.report, before, cfg, result)
        elif outcome.result == "auth_failed":
            changed = await account_error(self.runtime, self.accounts, platform, account.id, 401)
            result = msgspec.structs.replace(result, account_error=changed)
        if outcome.result == "ok":
            fails, delay = 0, 0.0
        else:
            fails, delay = rules.failure(
                claim.fails, outcome.result, cfg.usage, outcome.retry_after_s
            )
        recorded = await self.store.finish(
            account.id, claim.token, result=outcome.result, fails=fails, delay_s=delay
        )
        if self.metrics is not None:
            self.metrics.usage_probes.labels(platform, outcome.result).inc()
        if outcome.result != "ok":
            log.info(
                "usage probe failed",
                account_id=account.id,
                platform=platform,
                result=outcome.result,
                reason=outcome.message,
                retry_in_s=round(delay, 1),
            )
        return msgspec.structs.replace(result, recorded=recorded)

    async def _read(
        self, account: Account, adapter: UsageAdapter, cfg: UsageSettings
    ) -> ProbeOutcome:
        try:
            credentials = self.credentials(account)
            async with self._client() as client:
                # The lock outlives timeout_s (settings check it), so the probe ends
                # before another instance may take the account.
                with trio.fail_after(cfg.timeout_s):
                    report = await read_usage(
                        adapter,
                        client,
                        account,
                        credentials,
                        timeout_s=cfg.timeout_s,
                        clock=self.clock,
                    )
        except DecryptError:
            return ProbeOutcome(result="cannot_probe", message="credentials cannot be decrypted")
        except CannotProbe as exc:
            return ProbeOutcome(result="cannot_probe", message=exc.message)
        except AuthFailed as exc:
            return ProbeOutcome(result="auth_failed", message=exc.message)
        except RateLimited as exc:
            return ProbeOutcome(
                result="rate_limited", message=exc.message, retry_after_s=exc.retry_after_s
            )
        except Transient as exc:
            return ProbeOutcome(result="failed", message=exc.message)
        except trio.TooSlowError:
            return ProbeOutcome(result="failed", message="no usage answer in time")
        return ProbeOutcome(result="ok", report=report)

    async def _apply(
        self,
        account: Account,
        report: UsageReport,
        before: RuntimeState | None,
        cfg: Settings,
        result: ProbeResult,
    ) -> ProbeResult:
        platform = str(account.platform)
        state = await self.runtime.write_readings(platform, account.id, report.windows)
        if state is not None and self.on_state is not None:
            self.on_state(platform, account.id, state)
        now = self.clock()
        after = quota_pause(account, state.windows if state else report.windows, cfg.quota, now)
        if before is not None and before.windows and self.metrics and not after.paused:
            waited = _paused_past_reset(account, before.windows, report.windows, cfg, now)
            if waited is not None:
                self.metrics.usage_reset_to_schedulable.observe(waited)
        return msgspec.structs.replace(
            result,
            windows=report.windows,
            extra=report.extra,
            paused=after.paused,
            pause_reason=after.why,
        )


def _paused_past_reset(
    account: Account,
    old: tuple[QuotaWindow, ...],
    new: tuple[QuotaWindow, ...],
    cfg: Settings,
    now: float,
) -> float | None:
    """How long after its window's reset an account these readings unpaused became schedulable.

    None unless the old readings paused it when they were taken. With a known
    reset, the pause rule itself lifted the pause at the reset: 0. Without one,
    the account stayed paused until now; the reset is estimated as the new
    reading's window start (its reset minus its length), which is when the old
    window ended for windows on a fixed schedule; None when that is not known.
    """
    taken = max(w.observed_at for w in old)
    was = quota_pause(account, old, cfg.quota, taken)
    if not was.paused:
        return None
    pausing = max((w for w in old if w.window == was.window), key=lambda w: w.observed_at)
    if pausing.resets_at() is not None:
        return 0.0
    for w in new:
        resets = w.resets_at()
        if w.window == was.window and resets is not None and w.window_s:
            start = resets - w.window_s
            if pausing.observed_at <= start <= now:
                return now - start
    return None


@contextlib.asynccontextmanager
async def open_client(cfg: UsageSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The probes' HTTP client: a few connections, no proxy from the environment."""
    limits = httpx.Limits(max_connections=max(4, cfg.concurrency * 2))
    # trust_env=False: a proxy from the environment must not sit between us and an
    # upstream holding our tokens (the task adapters' client does the same).
    async with httpx.AsyncClient(limits=limits, trust_env=False, follow_redirects=False) as client:
        yield client
