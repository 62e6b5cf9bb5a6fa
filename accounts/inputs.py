"""What operators send to create or change an account, and what they get back.

``AccountCreate`` / ``AccountPatch`` validate everything the database would
otherwise reject (and a few things it would not: a base URL carrying a password,
a naive expiry time), so bad input fails with a field and a reason before any
write. ``AccountView`` is the read shape: credentials masked, never the values.
``parse_import`` turns a JSON or CSV file into validated creates, naming the
first bad row.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET, Meta, UnsetType

from .crypto import Cipher, DecryptError
from .errors import ConfigError, ValidationFailed
from .model import (
    Account,
    AccountName,
    Concurrency,
    GroupName,
    Kind,
    LoadFactor,
    ModelPattern,
    Platform,
    Priority,
    Status,
    Threshold,
)
from .validation import convert

# Bounds on list sizes: far above real use, low enough that one account row stays small.
Groups = Annotated[
    list[GroupName], Meta(min_length=1, max_length=64, extra_json_schema={"uniqueItems": True})
]
Models = Annotated[list[ModelPattern], Meta(max_length=512)]
# An opaque JSON object (api_key, or OAuth tokens); at least one key.
Credentials = Annotated[dict[str, Any], Meta(min_length=1, max_length=64)]
# http(s), a host name or IPv4 address, an optional port, then printable ASCII: the
# published pattern is the whole rule (no NUL, no whitespace, no user:password@).
BASE_URL_PATTERN = r"^https?://[A-Za-z0-9._~-]+(:[0-9]{1,5})?([/?#][!-~]*)?$"
BaseUrl = Annotated[str, Meta(min_length=8, max_length=2048, pattern=BASE_URL_PATTERN)]
AwareTime = Annotated[datetime, Meta(tz=True)]
# Admins switch accounts on and off; "error" is set by selection (mark_error) only.
AdminStatus = Literal["active", "disabled"]

# Mask: strings this long keep their last 4 characters so operators can tell keys apart.
_MASK_KEEP_FROM = 12


def _check_base_url(value: str | UnsetType | None) -> None:
    if not isinstance(value, str):
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("base_url: must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise ValueError("base_url: must not carry credentials (put them in credentials)")
    if any(c.isspace() for c in value):
        raise ValueError("base_url: must not contain whitespace")


def _check_groups(value: list[str] | UnsetType) -> None:
    if isinstance(value, list) and len(set(value)) != len(value):
        raise ValueError("groups: must not repeat a group")


class AccountCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new account. The server assigns the id, version and timestamps."""

    name: AccountName
    platform: Platform
    kind: Kind = Kind.APIKEY
    groups: Groups
    models: Models = msgspec.field(default_factory=list)
    priority: Priority = 0
    concurrency: Concurrency = 1
    load_factor: LoadFactor | None = None
    base_url: BaseUrl | None = None
    credentials: Credentials
    status: AdminStatus = "active"
    schedulable: bool = True
    expires_at: AwareTime | None = None
    auto_pause_on_expired: bool = True
    auto_pause_5h_threshold: Threshold | None = None
    auto_pause_7d_threshold: Threshold | None = None
    auto_pause_5h_disabled: bool = False
    auto_pause_7d_disabled: bool = False

    def __post_init__(self) -> None:
        _check_base_url(self.base_url)
        _check_groups(self.groups)


class AccountPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A partial change: absent fields stay as they are; ``null`` clears a nullable field.

    ``version`` is the compare-and-set precondition when the caller cannot send
    an ``If-Match`` header; it is not a column to write.
    """

    version: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    name: AccountName | UnsetType = UNSET
    platform: Platform | UnsetType = UNSET
    kind: Kind | UnsetType = UNSET
    groups: Groups | UnsetType = UNSET
    models: Models | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    concurrency: Concurrency | UnsetType = UNSET
    load_factor: LoadFactor | UnsetType | None = UNSET
    base_url: BaseUrl | UnsetType | None = UNSET
    credentials: Credentials | UnsetType = UNSET
    status: AdminStatus | UnsetType = UNSET
    schedulable: bool | UnsetType = UNSET
    expires_at: AwareTime | UnsetType | None = UNSET
    auto_pause_on_expired: bool | UnsetType = UNSET
    auto_pause_5h_threshold: Threshold | UnsetType | None = UNSET
    auto_pause_7d_threshold: Threshold | UnsetType | None = UNSET
    auto_pause_5h_disabled: bool | UnsetType = UNSET
    auto_pause_7d_disabled: bool | UnsetType = UNSET

    def __post_init__(self) -> None:
        _check_base_url(self.base_url)
        _check_groups(self.groups)

    def changes(self) -> dict[str, Any]:
        """Field name -> new value for every field present, ``version`` excluded."""
        return {
            name: getattr(self, name)
            for name in self.__struct_fields__
            if name != "version" and getattr(self, name) is not UNSET
        }


class AccountView(msgspec.Struct, frozen=True, kw_only=True):
    """An account as admin reads show it: credentials masked, never their values.

    ``credentials`` keeps the document's keys; each string value becomes ``****``
    plus its last 4 characters (only for values of 12+ characters), other values
    ``****``. ``credentials_readable`` is false when no configured key opens them.
    """

    id: str
    name: str
    platform: Platform
    kind: Kind
    groups: list[str]
    models: list[str]
    priority: int
    concurrency: int
    load_factor: float | None
    base_url: str | None
    credentials: dict[str, Any] | None
    credentials_readable: bool
    status: Status
    error_reason: str | None
    schedulable: bool
    expires_at: AwareTime | None
    auto_pause_on_expired: bool
    auto_pause_5h_threshold: float | None
    auto_pause_7d_threshold: float | None
    auto_pause_5h_disabled: bool
    auto_pause_7d_disabled: bool
    created_at: AwareTime | None
    updated_at: AwareTime | None
    version: int


def mask_credentials(value: Any) -> Any:
    """The same shape with every leaf replaced by a mask (see :class:`AccountView`)."""
    if isinstance(value, dict):
        return {str(k): mask_credentials(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_credentials(v) for v in value]
    if isinstance(value, str) and len(value) >= _MASK_KEEP_FROM:
        return "****" + value[-4:]
    return "****"


def account_view(account: Account, cipher: Cipher) -> AccountView:
    """The masked read shape of ``account`` (decrypts in memory only to mask)."""
    masked: dict[str, Any] | None = None
    readable = True
    if account.credentials_enc is not None:
        try:
            masked = mask_credentials(cipher.decrypt(account.credentials_enc))
        except (DecryptError, ConfigError, msgspec.DecodeError):
            # Wrong or missing key, or a corrupt document: still show the account.
            readable = False
    fields = msgspec.structs.asdict(account)
    del fields["credentials_enc"]
    fields["groups"], fields["models"] = list(account.groups), list(account.models)
    return AccountView(**fields, credentials=masked, credentials_readable=readable)


# --- import files ----------------------------------------------------------------------

# CSV cells of these fields are taken as text; every other cell is read as a JSON value
# (numbers, true/false, null) and left as text when it is not one, so validation names it.
_TEXT_FIELDS = frozenset({"name", "platform", "kind", "base_url", "expires_at", "status"})
_LIST_FIELDS = frozenset({"groups", "models"})
_CREDENTIAL_PREFIX = "credentials."


def _csv_cell(field: str, cell: str) -> Any:
    if field in _LIST_FIELDS:
        return [part.strip() for part in cell.split(";") if part.strip()]
    if field in _TEXT_FIELDS:
        return cell
    try:
        return msgspec.json.decode(cell)
    except msgspec.DecodeError:
        return cell


def _csv_row(row: dict[str, str | None]) -> dict[str, Any]:
    """One CSV row as a create document: empty cells are absent, lists split on ``;``.

    Credentials come from a ``credentials`` column holding a JSON object, or from
    ``credentials.<key>`` columns (``credentials.api_key``), each cell a string.
    """
    doc: dict[str, Any] = {}
    creds: dict[str, Any] = {}
    for column, raw in row.items():
        cell = (raw or "").strip()
        if column is None or not cell:
            continue
        column = column.strip()
        if column.startswith(_CREDENTIAL_PREFIX):
            creds[column[len(_CREDENTIAL_PREFIX) :]] = cell
        else:
            doc[column] = _csv_cell(column, cell)
    if creds:
        doc.setdefault("credentials", creds)
    return doc


def _rows(text: str, fmt: Literal["json", "csv"]) -> list[Any]:
    if fmt == "csv":
        return [_csv_row(r) for r in csv.DictReader(io.StringIO(text))]
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ValidationFailed.one("$", f"not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise ValidationFailed.one("$", "must be a JSON list of account objects")
    return data


def parse_import(text: str, fmt: Literal["json", "csv"]) -> list[AccountCreate]:
    """Validate every row; raise ValidationFailed for the first bad one (1-based ``row``).

    The error's message reads ``row N: field: reason`` and its details carry ``row``.
    """
    rows = _rows(text, fmt)
    if not rows:
        raise ValidationFailed.one("$", "the file holds no accounts")
    creates: list[AccountCreate] = []
    for number, row in enumerate(rows, start=1):
        try:
            if not isinstance(row, dict):
                raise ValidationFailed.one("$", "must be an object")
            creates.append(convert(row, AccountCreate))
        except ValidationFailed as exc:
            field, reason = exc.errors[0]
            bad = ValidationFailed([(field, reason)], message=f"row {number}: {field}: {reason}")
            bad.details["row"] = number
            raise bad from None
    return creates
