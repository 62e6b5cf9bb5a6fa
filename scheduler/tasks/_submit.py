"""Submitting a recorded task upstream: select an account, submit, compare-and-set.

The task row (SUBMITTING) and its hold are already committed when this runs
(:meth:`TaskStore.create`), so whatever happens here the task is in the owner's
list and its money is accounted for:

* accepted -> CAS ``SUBMITTING -> PENDING`` (or RUNNING) with the upstream id,
  the hold adjusted if the answer changed the estimate;
* ``Rejected`` -> FAILED with the hold released, in one transaction;
* ``Transient`` / ``RateLimited`` / ``AuthFailed`` -> the account's lease is given
  back with that outcome (rate limit, account error) and the submit is retried on
  another account, at most ``submit_retries`` times; then FAILED;
* ``Ambiguous`` (sent, no answer) -> left SUBMITTING: the sweeper looks it up by
  our id where the platform can, else fails it ``submit_outcome_unknown``.

The work runs in the :class:`Submitter` actor's nursery, not in the HTTP
request: a client that hangs up mid-submit does not abandon the upstream call.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from accounts.errors import NoAccountAvailable, NotFound, StationmasterError
from accounts.model import Account, Platform
from snapshot.keys import Bucket

from ..core.logs import get_logger
from ..selection.model import Selection, SelectRequest
from ..selection.reports import ReleaseOutcome
from ..upstream import (
    Ambiguous,
    AuthFailed,
    RateLimited,
    Rejected,
    Transient,
    Upstream,
    UpstreamRequest,
    UpstreamState,
    UpstreamTask,
)
from ._apply import TaskWriter, Written
from ._model import Held, TaskView
from ._states import Billing, Event, Proposal, TaskStatus

log = get_logger("tasks.submit")


@dataclass(slots=True)
class _Job:
    task: TaskView
    params: dict[str, Any]
    billing: Billing
    session_hash: str | None
    # The task as the submit left it (saves a read), when the submit wrote it.
    result: TaskView | None = None


class Submitter:
    """Actor owning the nursery in which submits run; :meth:`submit` waits for one."""

    name = "task-submitter"
    essential = False

    def __init__(
        self,
        writer: TaskWriter,
        upstream: Upstream,
        selector: Any,
        reporter: Any,
        credentials: Callable[[Account], Any],
        *,
        retries: int,
        wait_ms: int,
        first_poll_s: float,
        metrics: Any = None,
    ) -> None:
        self.writer = writer
        self.store = writer.store
        self.upstream = upstream
        self.selector = selector
        self.reporter = reporter
        self.credentials = credentials
        self.retries = retries
        self.wait_ms = wait_ms
        self.first_poll_s = first_poll_s
        self.metrics = metrics
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def submit(
        self,
        task: TaskView,
        params: dict[str, Any],
        billing: Billing,
        session_hash: str | None,
    ) -> TaskView:
        """Submit ``task`` (SUBMITTING) and return it as it stands afterwards.

        Runs in the actor's nursery: cancelling the caller stops the wait, not the
        submit. Without the actor (not started) it runs in the caller's task.
        """
        job = _Job(task, params, billing, session_hash)
        if self._nursery is None:
            await self._submit(job)
        else:
            done = trio.Event()

            async def work() -> None:
                try:
                    await self._submit(job)
                finally:
                    done.set()

            self._nursery.start_soon(work)
            await done.wait()
        if job.result is not None:
            return job.result
        found = await self.store.get(task.id)
        return found if found is not None else task

    async def _submit(self, job: _Job) -> None:
        task = job.task
        try:
            await self._attempts(job)
        except StationmasterError as exc:
            # The store or selection failed under us: the row stays SUBMITTING for
            # the sweeper, which is exactly the crash case it exists for.
            log.warning("submit left for the sweeper", task_id=task.id, error=type(exc).__name__)
            self._count("error")
        except Exception:
            # A bug in an adapter must not take the submitter (and every submit in
            # flight) down with it; the sweeper resolves the row.
            log.exception("submit crashed; left for the sweeper", task_id=task.id)
            self._count("error")

    async def _attempts(self, job: _Job) -> None:
        task = job.task
        adapter = self.upstream.adapter(task.platform)
        req = UpstreamRequest(
            task_id=task.id,
            platform=task.platform,
            model=task.model,
            kind=task.kind,
            params=job.params,
        )
        tried: list[str] = []
        last = "no attempt"
        for _ in range(1 + self.retries):
            try:
                sel = await self._select(task, job.session_hash, tried)
            except (NoAccountAvailable, NotFound) as exc:
                self._count("no_account")
                last = f"no_available_accounts: {exc.message}"
                break
            tried.append(sel.account.id)
            if adapter.supports_lookup:
                # Where the sweeper will look for it if this instance dies mid-submit.
                await self.store.set_account(task.id, sel.account.id)
            outcome, answer, reason = await self._try(adapter, sel, req)
            if outcome == "accepted":
                assert answer is not None
                await self._accepted(job, sel.account, adapter, answer)
                return
            if outcome == "ambiguous":
                return  # left SUBMITTING: the sweeper resolves it
            last = reason
            if outcome == "rejected":
                break
        await self._fail(task, f"submit_failed: {last}")

    async def _try(
        self, adapter: Any, sel: Selection, req: UpstreamRequest
    ) -> tuple[str, UpstreamTask | None, str]:
        """One submit on the selected account; (outcome, answer, reason); lease given back."""
        account = sel.account
        status, headers, outcome, reason = 200, {}, "accepted", ""
        answer = None
        try:
            answer = await adapter.submit(account, self.credentials(account), req)
        except RateLimited as exc:
            status, outcome, reason = 429, "rate_limited", exc.message
            if exc.retry_after_s is not None:
                headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
        except AuthFailed as exc:
            status, outcome, reason = 401, "auth_failed", exc.message
        except Ambiguous as exc:
            status, outcome, reason = 504, "ambiguous", exc.message
        except Transient as exc:
            status, outcome, reason = 502, "transient", exc.message
        except Rejected as exc:
            status, outcome, reason = 400, "rejected", exc.reason
        self._count(outcome)
        with contextlib.suppress(StationmasterError):
            await self.reporter.release(
                sel.lease_id, ReleaseOutcome(status=status, headers=headers)
            )
        return outcome, answer, reason

    async def _select(
        self, task: TaskView, session_hash: str | None, tried: list[str]
    ) -> Selection:
        platform = Platform(task.platform)
        exclude = tuple(tried)
        if task.origin_task_id is not None and task.account_id is not None:
            # Remix / extend: only the origin's account knows the origin's output.
            snap = await self.selector.snapshot(Bucket(task.group, platform))
            exclude = tuple(a.id for a in snap.accounts if a.id != task.account_id) + exclude
        req = SelectRequest(
            group=task.group,
            platform=platform,
            model=task.model,
            session_hash=session_hash,
            exclude=exclude,
            wait_ms=self.wait_ms,
        )
        selection: Selection = await self.selector.select(req)
        return selection

    async def _accepted(
        self, job: _Job, account: Account, adapter: Any, answer: UpstreamTask
    ) -> None:
        task, billing = job.task, job.billing
        if answer.estimate is not None:
            hold = billing.credits(answer.estimate)
            billing = Billing(billing.price, billing.ratio_permille, hold)
        status = TaskStatus.RUNNING if answer.state is UpstreamState.RUNNING else TaskStatus.PENDING
        done = await self.store.submitted(
            task.id,
            task.version,
            task.cost_held,
            status=status,
            upstream_id=answer.upstream_id,
            account_id=account.id,
            billing=billing,
            poll_in_s=self.first_poll_s,
        )
        if done is not None:
            job.result = done[1]
        else:
            # The sweeper failed it (submit outcome unknown) while we waited: the
            # upstream task is untracked now, so stop it where the platform can.
            self._count("lost")
            log.warning("submit answered after the task was resolved", task_id=task.id)
            if adapter.supports_cancel:
                with contextlib.suppress(StationmasterError):
                    await adapter.cancel(account, self.credentials(account), answer.upstream_id)

    async def _fail(self, task: TaskView, reason: str) -> Held | None:
        proposal = Proposal(Event.SUBMIT_FAILED, TaskStatus.FAILED, failure_reason=reason[:300])
        result = await self.writer.write_latest(task.id, proposal)
        return result.held if result.written is Written.FINISHED else None

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.task_submits.labels(result).inc()
