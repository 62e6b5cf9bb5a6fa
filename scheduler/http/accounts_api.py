"""Admin API for accounts: ``/v1/admin/accounts`` (admin bearer token).

Reads never return credentials: they are write-only and shown masked (see
:class:`~accounts.inputs.AccountView`). Every answer carrying an account also
carries ``ETag: "<version>"``.

Versions: PATCH must say which version it changes, either as an
``If-Match: "<version>"`` header or a ``version`` field in the body. With
neither, the answer is 428 (``precondition_required``), because a write without
a version could silently overwrite someone else's change; with both, both must
be the stored version (else 409, as for one stale version). ``POST …/disable``
and ``DELETE`` accept an optional ``If-Match``
(an operator switching an account off should not have to read it first). A
stale version answers 409 with ``details.current_version``.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from accounts.errors import Conflict, PreconditionRequired, StoreUnavailable, ValidationFailed
from accounts.inputs import AccountCreate, AccountPatch, AccountView, account_view
from accounts.model import GroupName, Platform, Status
from accounts.repository import AccountRepository

from .endpoints import Answer, Call, Endpoint, Header, Scope, json_response

BASE = "/v1/admin/accounts"
# An admin page is rendered and masked per row; 500 keeps one answer well under a second.
MAX_API_PAGE = 500


# An account version in If-Match: "3", 3 or W/"3" (versions start at 1).
IF_MATCH_PATTERN = r'^(?:W/)?"?([1-9][0-9]{0,17})"?$'
IfMatch = Annotated[
    str, msgspec.Meta(pattern=IF_MATCH_PATTERN, description='the account version, e.g. "3"')
]
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
AccountId = Annotated[str, msgspec.Meta(extra_json_schema={"format": "uuid"})]
_IF_MATCH = re.compile(IF_MATCH_PATTERN)


class AccountQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    group: Annotated[GroupName, msgspec.Meta(description="only accounts in this group")] | None = (
        None
    )
    platform: Annotated[Platform, msgspec.Meta(description="only this platform")] | None = None
    status: Annotated[Status, msgspec.Meta(description="only this status")] | None = None
    cursor: (
        Annotated[
            str,
            msgspec.Meta(description="next_cursor of the previous page", pattern=UUID_PATTERN),
        ]
        | None
    ) = None
    limit: Annotated[
        int, msgspec.Meta(ge=1, le=MAX_API_PAGE, description=f"page size, 1..{MAX_API_PAGE}")
    ] = 100


class AccountList(msgspec.Struct, frozen=True):
    items: list[AccountView]
    next_cursor: str | None


def _repo(call: Call) -> AccountRepository:
    repo: AccountRepository | None = call.services.accounts
    if repo is None:
        raise StoreUnavailable("postgres", "the accounts repository is not running")
    return repo


def _with_etag(view: AccountView, status: int = 200, **headers: str) -> Answer:
    return json_response(view, status, {"etag": f'"{view.version}"', **headers})


def if_match(call: Call) -> int | None:
    """The version in ``If-Match`` (``"3"``, ``3`` or ``W/"3"``), None when absent."""
    raw = call.headers.get("if-match")
    if raw is None:
        return None
    # ASCII digits only (str.isdigit would take "²", which int() refuses).
    match = _IF_MATCH.fullmatch(raw.strip())
    if match is None:
        raise ValidationFailed.one("If-Match", 'must be the account version, e.g. "3"')
    return int(match.group(1))


async def list_accounts(call: Call) -> AccountList:
    q: AccountQuery = call.query
    repo = _repo(call)
    page = await repo.list_accounts(
        group=q.group, platform=q.platform, status=q.status, cursor=q.cursor, limit=q.limit
    )
    return AccountList([account_view(a, repo.cipher) for a in page.items], page.next_cursor)


async def create_account(call: Call) -> Answer:
    repo = _repo(call)
    account = await repo.create(call.body)
    view = account_view(account, repo.cipher)
    return _with_etag(view, 201, location=f"{BASE}/{account.id}")


async def get_account(call: Call) -> Answer:
    repo = _repo(call)
    account = await repo.get(call.path_params["id"])
    return _with_etag(account_view(account, repo.cipher))


async def patch_account(call: Call) -> Answer:
    body: AccountPatch = call.body
    header = if_match(call)
    field = None if body.version is msgspec.UNSET else body.version
    expected = header if header is not None else field
    if expected is None:
        raise PreconditionRequired(
            'say which version you change: an If-Match: "<version>" header or a version field'
        )
    repo = _repo(call)
    if field is not None and field != expected:
        # Two preconditions: the write applies only if the stored version is both.
        current = await repo.get(call.path_params["id"])
        raise Conflict(
            f"If-Match names version {expected}, the body version {field}; "
            f"the account is at version {current.version}",
            current_version=current.version,
        )
    account = await repo.update(call.path_params["id"], body, expected_version=expected)
    return _with_etag(account_view(account, repo.cipher))


async def disable_account(call: Call) -> Answer:
    repo = _repo(call)
    account = await repo.disable(call.path_params["id"], expected_version=if_match(call))
    return _with_etag(account_view(account, repo.cipher))


async def delete_account(call: Call) -> Answer:
    await _repo(call).delete(call.path_params["id"], expected_version=if_match(call))
    return Answer(204)


_TAGS = ("accounts",)
_IF_MATCH_HEADER = Header(
    "If-Match", IfMatch, 'the version you change: "<version>" (compare-and-set; 409 if stale)'
)
ENDPOINTS = [
    Endpoint(
        "GET",
        BASE,
        list_accounts,
        "List accounts (filters, keyset pagination by cursor; credentials masked)",
        scope=Scope.ADMIN,
        response=AccountList,
        errors=(422, 503),
        tags=_TAGS,
        query=AccountQuery,
    ),
    Endpoint(
        "POST",
        BASE,
        create_account,
        "Create an account (credentials are encrypted and never returned)",
        scope=Scope.ADMIN,
        body=AccountCreate,
        response=AccountView,
        status=201,
        errors=(409, 503),
        tags=_TAGS,
        description="Names are unique in a deployment: a name in use answers 409.",
    ),
    Endpoint(
        "GET",
        BASE + "/{id}",
        get_account,
        "One account (credentials masked); ETag is its version",
        scope=Scope.ADMIN,
        response=AccountView,
        errors=(404, 503),
        tags=_TAGS,
        path_types={"id": AccountId},
    ),
    Endpoint(
        "PATCH",
        BASE + "/{id}",
        patch_account,
        'Change fields; needs If-Match: "<version>" or a version field (428 without)',
        scope=Scope.ADMIN,
        body=AccountPatch,
        response=AccountView,
        errors=(404, 409, 428, 503),
        tags=_TAGS,
        path_types={"id": AccountId},
        headers=(_IF_MATCH_HEADER,),
        description="With If-Match and a body version, both must be the stored version "
        "(409 otherwise). A new name in use by another account answers 409.",
    ),
    Endpoint(
        "POST",
        BASE + "/{id}/disable",
        disable_account,
        "Soft-disable an account (optional If-Match)",
        scope=Scope.ADMIN,
        response=AccountView,
        errors=(404, 409, 503),
        tags=_TAGS,
        path_types={"id": AccountId},
        headers=(_IF_MATCH_HEADER,),
    ),
    Endpoint(
        "DELETE",
        BASE + "/{id}",
        delete_account,
        "Delete an account (optional If-Match)",
        scope=Scope.ADMIN,
        status=204,
        errors=(404, 409, 503),
        tags=_TAGS,
        path_types={"id": AccountId},
        headers=(_IF_MATCH_HEADER,),
    ),
]
