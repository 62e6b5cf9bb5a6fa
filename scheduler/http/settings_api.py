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

from datetime import datetime
from typing import Any

import msgspec
from starlette.responses import Response

from accounts.errors import PreconditionRequired, StoreUnavailable, ValidationFailed
from snapshot.settings import Settings, SettingsRecord, SettingsSnapshot, SettingsStore

from .endpoints import Call, Endpoint, Scope, json_response

PATH = "/v1/admin/settings"


class SettingsView(msgspec.Struct, frozen=True, kw_only=True):
    """The stored settings and what this instance serves."""

    version: int
    settings: Settings
    document: dict[str, Any]
    updated_at: datetime | None
    instance_version: int


def _snapshot(call: Call) -> SettingsSnapshot:
    snapshot: SettingsSnapshot | None = call.services.settings
    if snapshot is None:
        raise StoreUnavailable("postgres", "the settings snapshot is not running")
    return snapshot


def _answer(record: SettingsRecord, snapshot: SettingsSnapshot) -> Response:
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
    raw = call.request.headers.get("if-match")
    if raw is None:
        raise PreconditionRequired(
            'settings writes need If-Match: "<version>" (GET shows the current version)'
        )
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 18:
        raise ValidationFailed.one("If-Match", 'must be the settings version, e.g. "3"')
    return int(text)


async def get_settings(call: Call) -> Response:
    snapshot = _snapshot(call)
    return _answer(await SettingsStore(call.services.db).load(), snapshot)


async def put_settings(call: Call) -> Response:
    snapshot = _snapshot(call)
    expected = if_match_version(call)
    record = await snapshot.write(call.body, expected_version=expected)
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
        body=dict[str, Any],
        response=SettingsView,
        errors=(409, 428, 503),
        tags=("settings",),
    ),
]
