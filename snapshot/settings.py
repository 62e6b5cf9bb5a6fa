"""Settings: the typed document, its PostgreSQL store, and the hot-path snapshot.

Public surface (implementation lives in the private ``_settings_*`` modules):

* :class:`Settings` and its sections, :data:`DEFAULT_SETTINGS`, the pure helpers
  :func:`parse_document`, :func:`merge_patch`, :func:`assignment_patch`,
  :func:`reset_patch`, :func:`to_document`;
* :class:`SettingsStore`, the one versioned row in PostgreSQL (compare-and-set
  writes) and :func:`publish_invalidation` / :func:`settings_channel`, the Redis
  channel every instance listens on;
* :class:`SettingsSnapshot`, the actor whose synchronous :meth:`~SettingsSnapshot.get`
  the scheduler calls once per request.
"""

from __future__ import annotations

from ._settings_model import (
    DEFAULT_SETTINGS,
    FallbackSettings,
    LeaseSettings,
    RuntimeSettings,
    ScoringSettings,
    Settings,
    SnapshotSettings,
    StickySettings,
    UsageSettings,
    WaitSettings,
    assignment_patch,
    merge_patch,
    parse_document,
    parse_scalar,
    reset_patch,
    to_document,
    unknown_keys,
)
from ._settings_snapshot import SettingsSnapshot, SnapshotStats
from ._settings_store import (
    EMPTY_RECORD,
    Invalidation,
    SettingsRecord,
    SettingsStore,
    publish_invalidation,
    settings_channel,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "EMPTY_RECORD",
    "FallbackSettings",
    "Invalidation",
    "LeaseSettings",
    "RuntimeSettings",
    "ScoringSettings",
    "Settings",
    "SettingsRecord",
    "SettingsSnapshot",
    "SettingsStore",
    "SnapshotSettings",
    "SnapshotStats",
    "StickySettings",
    "UsageSettings",
    "WaitSettings",
    "assignment_patch",
    "merge_patch",
    "parse_document",
    "parse_scalar",
    "publish_invalidation",
    "reset_patch",
    "settings_channel",
    "to_document",
    "unknown_keys",
]
