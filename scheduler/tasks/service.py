"""The tasks subsystem as the API sees it: validate, record, submit, read, refresh, cancel.

Built once by the daemon (:func:`build`) with the store, the upstream registry,
the selection machinery and the account repository; the HTTP handlers and the
CLI (through HTTP) call only this. Bad input is refused before anything is
recorded, with the field and the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from accounts.errors import NotFound, StationmasterError, ValidationFailed
from accounts.model import Account, Platform

from ..core.config import TasksConfig
from ..upstream import Rejected, Transient, Upstream, UpstreamRequest
from ._apply import Accounts, Result, TaskWriter, Written, proposal_from
from ._model import NewTask, TaskView
from ._poller import Poller
from ._states import Billing, Event, Proposal, TaskStatus
from ._submit import Submitter
from ._sweeper import Sweeper
from .errors import TaskFinished
from .store import Created, TaskStore

# Refreshes remembered per task (this instance) so a burst of GETs costs one fetch.
_REFRESH_MEMORY = 10_000


class TaskSubmitting(StationmasterError):
    code = "task_submitting"
    status = 409


class Tasks:
    """Facade over the store and the actors; one per daemon."""

    def __init__(
        self,
        store: TaskStore,
        writer: TaskWriter,
        upstream: Upstream,
        accounts: Accounts,
        submitter: Submitter,
        config: TasksConfig,
    ) -> None:
        self.store = store
        self.writer = writer
        self.upstream = upstream
        self.accounts = accounts
        self.submitter = submitter
        self.cfg = config
        self._refreshed: dict[str, float] = {}

    # --- submit -------------------------------------------------------------------

    async def create(self, body: Any, idempotency_key: str | None) -> tuple[TaskView, bool]:
        """Validate, record (task + hold), submit; (task as it stands, newly created)."""
        new = await self._validated(body, idempotency_key)
        created: Created = await self.store.create(new)
        if not created.created:
            return created.task, False
        task = await self.submitter.submit(created.task, new.params, new.billing, body.session_hash)
        return task, True

    async def _validated(self, body: Any, key: str | None) -> NewTask:
        errors: list[tuple[str, str]] = []
        adapter = None
        try:
            adapter = self.upstream.adapter(body.platform)
            Platform(body.platform)
        except (Rejected, ValueError):
            known = ", ".join(self.upstream.platforms())
            errors.append(("platform", f"no async-task adapter for this platform (known: {known})"))
        if body.webhook_url is not None and not _http_url(body.webhook_url):
            errors.append(("webhook_url", "must be an http:// or https:// URL with a host"))
        try:
            encoded = msgspec.json.encode(body.params)
        except UnicodeEncodeError:  # lone surrogates (\udb42) decode, but are no text
            encoded = b"\xff"
        size = len(encoded)
        if not _storable(encoded):
            errors.append(("params", "must be valid UTF-8 text without NUL characters"))
        elif size > self.cfg.max_params_bytes:
            errors.append(
                ("params", f"{size} bytes exceeds the limit of {self.cfg.max_params_bytes}")
            )
        account_id = await self._origin_account(body, errors)
        estimate = 0
        if adapter is not None and not errors:
            req = UpstreamRequest(
                task_id="", platform=str(body.platform), model=body.model, kind=body.kind,
                params=body.params,
            )  # fmt: skip
            try:
                estimate = adapter.estimate_cost(req)
            except Rejected as exc:
                errors.append(("params", exc.reason))
        if errors:
            raise ValidationFailed(errors)
        ratio = self.cfg.group_ratios.get(body.group, 1000)
        billing = Billing(price=1, ratio_permille=ratio, hold=0)
        billing = Billing(1, ratio, billing.credits(estimate))
        return NewTask(
            owner=body.owner, group=body.group, platform=str(body.platform), kind=body.kind,
            model=body.model, params=body.params, billing=billing,
            deadline_s=self.cfg.deadline_s, idempotency_key=key,
            origin_task_id=body.origin_task_id, account_id=account_id,
            webhook_url=body.webhook_url, session_hash=body.session_hash,
        )  # fmt: skip

    async def _origin_account(self, body: Any, errors: list[tuple[str, str]]) -> str | None:
        if body.origin_task_id is None:
            return None
        row = await self.store.task_owner(body.origin_task_id)
        if row is None or row["owner"] != body.owner:
            # The same answer for "absent" and "someone else's": ids are not probed. A 404,
            # not a 422: the request is well formed, the task it names does not exist.
            raise NotFound(
                "origin_task_id: no task with this id belongs to this owner",
                details={"field": "origin_task_id"},
            )
        if row["platform"] != body.platform or row["account_id"] is None:
            errors.append(
                ("origin_task_id", "the origin task ran on another platform or never ran")
            )
            return None
        return str(row["account_id"])

    # --- reads ----------------------------------------------------------------------

    async def get(
        self, task_id: str, *, owner: str | None = None, refresh: bool = False
    ) -> TaskView:
        task = await self.store.get(task_id)
        if task is None or (owner is not None and task.owner != owner):
            raise NotFound(f"no task {task_id}")
        if refresh and self._stale(task):
            await self._refresh(task)
            task = await self.store.get(task_id) or task
        return task

    def _stale(self, task: TaskView) -> bool:
        if task.status not in (TaskStatus.PENDING, TaskStatus.RUNNING) or not task.upstream_id:
            return False
        now = time.time()
        last = max(task.updated_at.timestamp(), self._refreshed.get(task.id, 0.0))
        return now - last >= self.cfg.refresh_after_s

    async def _refresh(self, task: TaskView) -> None:
        """Read the upstream now and apply it through the same write path as a poll."""
        if len(self._refreshed) >= _REFRESH_MEMORY:
            self._refreshed.clear()
        self._refreshed[task.id] = time.time()
        assert task.account_id is not None and task.upstream_id is not None
        adapter = self.upstream.adapter(task.platform)
        account, creds = await self.accounts.get(task.account_id)
        try:
            status = await adapter.fetch(account, creds, task.upstream_id)
        except Transient:
            return  # the stored state is still the answer
        proposal = proposal_from(status)
        if proposal is not None:
            await self.writer.write_latest(task.id, proposal, status=status)

    # --- cancel -----------------------------------------------------------------------

    async def cancel(self, task_id: str, *, owner: str | None = None) -> TaskView:
        """Ask the upstream (where it can) and end the task CANCELLED; 409 when terminal."""
        task = await self.get(task_id, owner=owner)
        if task.status.terminal:
            raise TaskFinished(task.id, task.status.value)
        if task.status is TaskStatus.SUBMITTING:
            raise TaskSubmitting(
                f"task {task.id} is still being submitted; cancel it once it is pending",
                details={"task_id": task.id, "retry_after_s": 1},
            )
        adapter = self.upstream.adapter(task.platform)
        if adapter.supports_cancel and task.account_id and task.upstream_id:
            account, creds = await self.accounts.get(task.account_id)
            try:
                await adapter.cancel(account, creds, task.upstream_id)
            except Rejected as exc:
                current = await self.get(task_id)
                if current.status.terminal:
                    raise TaskFinished(task.id, current.status.value) from None
                raise TaskFinished(task.id, f"not cancellable upstream ({exc.reason})") from None
        proposal = Proposal(Event.CANCELLED, TaskStatus.CANCELLED, failure_reason="cancelled")
        result: Result = await self.writer.write_latest(task.id, proposal)
        if result.written is not Written.FINISHED:
            raise TaskFinished(task.id, result.held.snapshot.status.value)
        return await self.get(task_id)


def _storable(encoded: bytes) -> bool:
    """True if PostgreSQL's jsonb takes it: valid UTF-8 and no \\u0000 escape."""
    try:
        encoded.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\\u0000" not in encoded


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def build(services: Any) -> tuple[Tasks, list[Any]]:
    """The tasks subsystem over the daemon's services; returns it and its actors.

    Needs ``services.upstream``, ``services.selector`` / ``reporter`` /
    ``credentials`` (selection installed first) and ``services.accounts``.
    """
    cfg: TasksConfig = services.config.tasks
    metrics = services.metrics
    store = TaskStore(services.db, max_in_flight=cfg.max_in_flight_per_owner)
    writer = TaskWriter(store, services.upstream, metrics)
    creds: Callable[[Account], Any] = services.credentials.get
    accounts = Accounts(services.accounts, creds)
    submitter = Submitter(
        writer, services.upstream, services.selector, services.reporter, creds,
        retries=cfg.submit_retries, wait_ms=cfg.submit_wait_ms,
        first_poll_s=cfg.poll_base_interval_s, metrics=metrics,
    )  # fmt: skip
    tasks = Tasks(store, writer, services.upstream, accounts, submitter, cfg)
    actors: list[Any] = [submitter]
    if cfg.pollers:
        actors.append(
            Poller(store, writer, services.upstream, accounts, services.instance_id, cfg,
                   metrics=metrics, db_slots=max(1, services.config.database.pool_max // 2))
        )  # fmt: skip
        actors.append(
            Sweeper(store, writer, services.upstream, accounts, interval_s=cfg.sweep_interval_s,
                    submitting_stale_s=cfg.submitting_stale_s, metrics=metrics)
        )  # fmt: skip
    return tasks, actors


def standalone(
    store: TaskStore,
    upstream: Upstream,
    repository: Any,
    credentials: Callable[[Account], Any],
    config: TasksConfig,
) -> Tasks:
    """Reads and cancellation without the daemon's actors (the CLI): no submits."""
    writer = TaskWriter(store, upstream)
    accounts = Accounts(repository, credentials)
    return Tasks(store, writer, upstream, accounts, None, config)  # type: ignore[arg-type]
