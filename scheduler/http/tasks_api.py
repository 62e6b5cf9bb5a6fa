"""Async tasks over HTTP: submit, read, list, cancel (gateway); admin views and credits.

``POST /v1/tasks`` records the task and its credit hold before anything goes
upstream, then submits it and answers 202 with the task as it stands (pending,
failed, or still submitting when the upstream's answer was ambiguous). With an
``Idempotency-Key`` header, the same key (per owner) answers the same task, 200,
and never records a second one or a second hold.
"""

from __future__ import annotations

import enum
import uuid
from typing import Annotated, Any, Literal

import msgspec

from accounts.errors import Conflict, NotFound, StoreUnavailable, ValidationFailed
from accounts.model import GroupName
from accounts.validation import convert

from ..selection.model import ModelName, SessionHash
from ..tasks import TaskStatus, TaskView
from ..upstream import adapter_platforms
from .endpoints import DATA, Answer, Call, Endpoint, Header, Scope, json_response

MAX_PAGE = 500
# Platforms that run async tasks (an adapter each); the schema enumerates them.
TaskPlatform = enum.StrEnum(  # type: ignore[misc]  # built from the adapter registry
    "TaskPlatform", {p.upper(): p for p in adapter_platforms()}
)
# A user or API key of the gateway: printable ASCII without "/" (it travels in a path).
Owner = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[!-.0-~]+$")]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[!-~]+$")]
_WEBHOOK = r"^https?://[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?([/?#][!-~]*)?$"
TaskId = Annotated[
    str, msgspec.Meta(min_length=36, max_length=36, extra_json_schema={"format": "uuid"})
]
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)]
# Stored as PostgreSQL jsonb, which holds no NUL character (\u0000) in any key or string.
Params = Annotated[
    dict[str, Any],
    msgspec.Meta(
        description="The platform's own parameters, passed through. Any JSON object; no key or "
        "string in it may contain a NUL character (\\u0000): 422 `params`."
    ),
]


class TaskRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A task to run upstream for ``owner`` (a user or API key of the gateway)."""

    owner: Owner
    platform: TaskPlatform
    model: ModelName
    kind: Literal["video", "image"] = "video"
    group: GroupName = "default"
    params: Params = msgspec.field(default_factory=dict)
    # http(s), a host, then any printable ASCII (what the schema states, the server enforces).
    webhook_url: Annotated[str, msgspec.Meta(max_length=2048, pattern=_WEBHOOK)] | None = None
    session_hash: SessionHash | None = None
    origin_task_id: TaskId | None = None

    def __post_init__(self) -> None:
        if self.origin_task_id is not None:
            _uuid("origin_task_id", self.origin_task_id)


class TaskList(msgspec.Struct, frozen=True):
    items: list[TaskView]
    next_cursor: str | None


class ListQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Admin list filters (every one optional)."""

    owner: Owner | None = None
    status: TaskStatus | None = None
    platform: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    cursor: TaskId | None = None
    limit: Limit = 50


class OwnerListQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A gateway lists one owner's tasks."""

    owner: Owner
    status: TaskStatus | None = None
    platform: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    cursor: TaskId | None = None
    limit: Limit = 50


class GetQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Only if the task is this owner's (404 otherwise).
    owner: Owner | None = None
    # Read the upstream now when the stored status is older than tasks.refresh_after_s.
    refresh: bool = False


class OwnerQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    owner: Owner | None = None


class CreditsQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # next_cursor of the previous page (owners in order).
    cursor: Owner | None = None
    limit: Limit = 100


class LedgerEntry(msgspec.Struct, frozen=True):
    kind: str
    amount: int


class TaskDetail(msgspec.Struct, frozen=True):
    task: TaskView
    ledger: list[LedgerEntry]


class TopUp(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    owner: Owner
    amount: Annotated[int, msgspec.Meta(ge=1, le=10**15)]
    # Makes the top-up idempotent: the same key twice adds credit once.
    key: IdempotencyKey
    note: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class Credit(msgspec.Struct, frozen=True):
    owner: str
    # The sum of the owner's ledger entries (holds included).
    balance: int
    topups: int
    captured: int
    # Held by tasks still in flight.
    held: int


class TopUpAnswer(msgspec.Struct, frozen=True):
    applied: bool
    credit: Credit


class Balances(msgspec.Struct, frozen=True):
    items: list[Credit]
    next_cursor: str | None


def _uuid(field: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationFailed.one(field, "not a task id (UUID)") from None


def _tasks(call: Call) -> Any:
    tasks = getattr(call.services, "tasks", None)
    if tasks is None:
        raise StoreUnavailable("postgres", "the tasks subsystem is not running")
    return tasks


def _task_id(call: Call) -> str:
    return _uuid("task_id", call.path_params["task_id"])


async def _page(call: Call, q: ListQuery | OwnerListQuery) -> TaskList:
    items = await _tasks(call).store.list_tasks(
        owner=q.owner,
        status=q.status.value if q.status else None,
        platform=q.platform,
        before=_uuid("cursor", q.cursor) if q.cursor else None,
        limit=q.limit,
    )
    cursor = items[-1].id if len(items) == q.limit else None
    return TaskList(items, cursor)


# --- gateway -------------------------------------------------------------------------


async def submit(call: Call) -> Answer:
    key = call.headers.get("idempotency-key")
    if key is not None:
        key = convert(key, IdempotencyKey)  # type: ignore[arg-type]
    task, created = await _tasks(call).create(call.body, key)
    return json_response(task, 202 if created else 200)


async def get_task(call: Call) -> TaskView:
    q: GetQuery = call.query
    task: TaskView = await _tasks(call).get(_task_id(call), owner=q.owner, refresh=q.refresh)
    return task


async def list_tasks(call: Call) -> TaskList:
    return await _page(call, call.query)


async def cancel(call: Call) -> TaskView:
    q: OwnerQuery = call.query
    task: TaskView = await _tasks(call).cancel(_task_id(call), owner=q.owner)
    return task


# --- admin ----------------------------------------------------------------------------


async def admin_list(call: Call) -> TaskList:
    return await _page(call, call.query)


async def admin_get(call: Call) -> TaskDetail:
    tasks = _tasks(call)
    task_id = _task_id(call)
    task = await tasks.get(task_id)
    ledger = [LedgerEntry(k, a) for k, a in await tasks.store.ledger_of(task_id)]
    return TaskDetail(task, ledger)


async def admin_cancel(call: Call) -> TaskView:
    task: TaskView = await _tasks(call).cancel(_task_id(call))
    return task


def _credit(c: Any) -> Credit:
    return Credit(c.owner, c.balance, c.topups, c.captured, c.held)


async def topup(call: Call) -> TopUpAnswer:
    body: TopUp = call.body
    store = _tasks(call).store
    try:
        applied = await store.topup(body.owner, body.amount, body.key, body.note)
    except ValueError:
        # The key names another top-up: a retry must be the very same top-up.
        raise Conflict("key: already used for a different top-up (owner or amount)") from None
    return TopUpAnswer(applied, _credit(await store.credit(body.owner)))


async def credit(call: Call) -> Credit:
    owner = convert(call.path_params["owner"], Owner)  # type: ignore[arg-type]
    return _credit(await _tasks(call).store.credit(owner))


async def credits(call: Call) -> Balances:
    store = _tasks(call).store
    q: CreditsQuery = call.query
    rows = await store.balances(after=q.cursor, limit=q.limit)
    items = [_credit(await store.credit(o)) for o, _ in rows]
    return Balances(items, rows[-1][0] if len(rows) == q.limit else None)


_TASK_ID = {"task_id": TaskId}
_IDEMPOTENCY = Header(
    "idempotency-key",
    IdempotencyKey,
    "the same key (per owner) answers the same task: never a second one or a second hold",
)

ENDPOINTS = [
    Endpoint(
        "POST", "/v1/tasks", submit,
        "Record a task and its credit hold, then submit it upstream (Idempotency-Key header)",
        scope=Scope.GATEWAY, body=TaskRequest, response=TaskView, status=202,
        errors=(402, 404, 422, 429, 503), tags=("tasks",), headers=(_IDEMPOTENCY,),
        # A replay of an Idempotency-Key answers the task it already made: 200, not 202.
        other_responses={200: TaskView}, planes=DATA,
    ),
    Endpoint(
        "GET", "/v1/tasks", list_tasks, "An owner's tasks, newest first (keyset pages)",
        scope=Scope.GATEWAY, response=TaskList, errors=(422,), tags=("tasks",),
        query=OwnerListQuery, planes=DATA,
    ),
    Endpoint(
        "GET", "/v1/tasks/{task_id}", get_task,
        "A task: status, progress, results, costs (refresh=true reads the upstream when stale)",
        scope=Scope.GATEWAY, response=TaskView, errors=(404, 422), tags=("tasks",),
        query=GetQuery, path_types=_TASK_ID, planes=DATA,
    ),
    Endpoint(
        "POST", "/v1/tasks/{task_id}/cancel", cancel,
        "Cancel a live task (upstream too where supported); 409 if it has ended",
        scope=Scope.GATEWAY, response=TaskView, errors=(404, 409, 422), tags=("tasks",),
        query=OwnerQuery, path_types=_TASK_ID, planes=DATA,
    ),
    Endpoint(
        "GET", "/v1/admin/tasks", admin_list, "Tasks with filters (keyset pages)",
        scope=Scope.ADMIN, response=TaskList, errors=(422,), tags=("tasks",), query=ListQuery,
    ),
    Endpoint(
        "GET", "/v1/admin/tasks/{task_id}", admin_get, "A task and its ledger entries",
        scope=Scope.ADMIN, response=TaskDetail, errors=(404, 422), tags=("tasks",),
        path_types=_TASK_ID,
    ),
    Endpoint(
        "POST", "/v1/admin/tasks/{task_id}/cancel", admin_cancel, "Cancel a live task",
        scope=Scope.ADMIN, response=TaskView, errors=(404, 409, 422), tags=("tasks",),
        path_types=_TASK_ID,
    ),
    Endpoint(
        "POST", "/v1/admin/credits", topup, "Top up an owner's credit (idempotent per key)",
        scope=Scope.ADMIN, body=TopUp, response=TopUpAnswer, errors=(409, 422), tags=("credits",),
    ),
    Endpoint(
        "GET", "/v1/admin/credits", credits, "Every owner's credit (cursor pages)",
        scope=Scope.ADMIN, response=Balances, errors=(422,), tags=("credits",),
        query=CreditsQuery,
    ),
    Endpoint(
        "GET", "/v1/admin/credits/{owner}", credit,
        "One owner's credit: balance (the sum of its ledger), top-ups, captured, held",
        scope=Scope.ADMIN, response=Credit, errors=(404, 422), tags=("credits",),
        path_types={"owner": Owner},
    ),
]  # fmt: skip

__all__ = ["ENDPOINTS", "NotFound"]
