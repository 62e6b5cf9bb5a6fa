"""Admin API for the settings document: ``GET/PUT /v1/admin/settings`` (admin bearer token).

``GET`` answers what PostgreSQL holds (``version``, the full effective
``settings``, the partial ``document`` an operator set) plus ``instance_version``,
the version this instance's snapshot serves (equal once the change propagated).

``PUT`` takes a JSON merge patch (RFC 7386): objects merge key by key, ``null``
resets a key (or a whole section) to its default. It must carry
``If-Match: "<version>"`` (version 0 = never written); without it the answer is
428, a stale version 409 with ``details.current_version``, an invalid merged
document 422 naming the field, and nothing is written. Both answers carry
``ETag: "<version>"``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, get_type_hints

import msgspec

from accounts.errors import PreconditionRequired, StoreUnavailable, ValidationFailed
from snapshot.settings import Settings, SettingsRecord, SettingsSnapshot, SettingsStore

from .endpoints import Answer, Call, Endpoint, Header, Scope, UtcTime, json_response

PATH = "/v1/admin/settings"
# The settings version in If-Match: "3", 3 or W/"3" (0 = never written).
IF_MATCH_PATTERN = r'^(?:W/)?"?([0-9]{1,18})"?$'
IfMatch = Annotated[str, msgspec.Meta(pattern=IF_MATCH_PATTERN)]
_IF_MATCH = re.compile(IF_MATCH_PATTERN)


def _patch_struct(struct: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """The merge-patch shape of ``struct``: every field optional, ``null`` allowed, no others.

    Generated from the settings structs themselves, so the published body schema
    and the decoding that enforces it cannot drift from the document's fields.
    """
    hints = get_type_hints(struct, include_extras=True)
    fields: list[tuple[str, Any, Any]] = []
    for name in struct.__struct_fields__:
        tp = hints[name]
        inner = msgspec.inspect.type_info(tp)
        if isinstance(inner, msgspec.inspect.StructType):
            tp = _patch_struct(inner.cls)
        fields.append((name, tp | None | msgspec.UnsetType, msgspec.UNSET))
    return msgspec.defstruct(
        struct.__name__ + "Patch", fields, kw_only=True, forbid_unknown_fields=True
    )


# The PUT body: a JSON merge patch of the settings document (RFC 7386).
SettingsPatch = _patch_struct(Settings)


class SettingsView(msgspec.Struct, frozen=True, kw_only=True):
    """The stored settings and what this instance serves."""

    version: int
    settings: Settings
    document: dict[str, Any]
    updated_at: UtcTime | None
    instance_version: int


def _snapshot(call: Call) -> SettingsSnapshot:
    snapshot: SettingsSnapshot | None = call.services.settings
    if snapshot is None:
        raise StoreUnavailable("postgres", "the settings snapshot is not running")
    return snapshot


def _answer(record: SettingsRecord, snapshot: SettingsSnapshot) -> Answer:
    view = SettingsView(
        version=record.version,
        settings=record.settings,
        document=record.document,
        updated_at=record.updated_at,
        instance_version=snapshot.version,
    )
    return json_response(view, 200, {"etag": f'"{record.version}"'})


def if_match_version(call: Call) -> int:
    """The version in ``If-Match`` (``"3"``, ``3`` or ``W/"3"``); 428 when absent."""
    raw = call.headers.get("if-match")
    if raw is None:
        raise PreconditionRequired(
            'settings writes need If-Match: "<version>" (GET shows the current version)'
        )
    # ASCII digits only (str.isdigit would take "²", which int() refuses).
    match = _IF_MATCH.fullmatch(raw.strip())
    if match is None:
        raise ValidationFailed.one("If-Match", 'must be the settings version, e.g. "3"')
    return int(match.group(1))


async def get_settings(call: Call) -> Answer:
    snapshot = _snapshot(call)
    return _answer(await SettingsStore(call.services.db).load(), snapshot)


async def put_settings(call: Call) -> Answer:
    snapshot = _snapshot(call)
    expected = if_match_version(call)
    patch: dict[str, Any] = msgspec.to_builtins(call.body)  # absent fields left out, nulls kept
    record = await snapshot.write(patch, expected_version=expected)
    return _answer(record, snapshot)


ENDPOINTS = [
    Endpoint(
        "GET",
        PATH,
        get_settings,
        "The settings document: stored version, effective values, what was set",
        scope=Scope.ADMIN,
        response=SettingsView,
        errors=(503,),
        tags=("settings",),
    ),
    Endpoint(
        "PUT",
        PATH,
        put_settings,
        "Change settings with a JSON merge patch (null resets to the default); "
        'needs If-Match: "<version>"',
        scope=Scope.ADMIN,
        body=SettingsPatch,
        response=SettingsView,
        errors=(409, 428, 503),
        tags=("settings",),
        headers=(
            Header(
                "If-Match",
                IfMatch,
                'the version you change: "<version>" (0 = never written); 428 without it',
                required=True,
            ),
        ),
        description="Every field of the document may be set, or reset to its default with "
        "null; unknown fields are refused (422). A stale version answers 409.",
    ),
]
