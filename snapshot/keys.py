"""Every Redis key name of the schedule snapshot, in one place.

A bucket is one (group, platform) pair, written ``group/platform`` (group names
never contain ``/``, ``{`` or ``}``; see :data:`accounts.model.GroupName`). Every
key of one bucket carries the hash tag ``{sched/group/platform}``, so all of them
live in one Redis Cluster slot and each Lua script touches a single slot::

    <prefix>sched:{<group>/<platform>}:counter        INCR: next version number
    <prefix>sched:{<group>/<platform>}:active         the active version (decimal)
    <prefix>sched:{<group>/<platform>}:ready          "1" once a version was activated
    <prefix>sched:{<group>/<platform>}:lock           rebuild lock: random owner token
    <prefix>sched:{<group>/<platform>}:v:<N>:meta     JSON {count, built_at} (present even if empty)
    <prefix>sched:{<group>/<platform>}:v:<N>:members  LIST of account ids in priority order
    <prefix>sched:{<group>/<platform>}:v:<N>:records  HASH id -> msgspec JSON Account record

``<prefix>sched:activated`` is the pub/sub channel (a channel, not a key: PUBLISH
reaches every node of a cluster). Messages are ``<group>/<platform> <version>``.
"""

from __future__ import annotations

import msgspec

from accounts.errors import ValidationFailed
from accounts.model import Platform

_GROUP_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
# What Bucket.parse accepts, as a regular expression (published in the API schema).
BUCKET_PATTERN = r"^[A-Za-z0-9_.-]{1,64}/(?:" + "|".join(p.value for p in Platform) + r")$"


class Bucket(msgspec.Struct, frozen=True, order=True):
    """A schedule bucket: the accounts of one group on one platform.

    Hashable and ordered, so it is a dict key for selection. ``str(bucket)`` is
    ``group/platform``; :meth:`parse` reverses it.
    """

    group: str
    platform: Platform

    def __str__(self) -> str:
        return f"{self.group}/{self.platform.value}"

    @classmethod
    def parse(cls, text: str, *, field: str = "bucket") -> Bucket:
        """``group/platform`` -> Bucket; ValidationFailed naming ``field`` when malformed."""
        group, sep, platform = text.partition("/")
        if not sep or not group or len(group) > 64 or not set(group) <= _GROUP_CHARS:
            raise ValidationFailed.one(field, "expected group/platform with a valid group name")
        try:
            return cls(group, Platform(platform))
        except ValueError:
            allowed = ", ".join(p.value for p in Platform)
            raise ValidationFailed.one(field, f"unknown platform (one of {allowed})") from None


class BucketKeys:
    """Key names of one bucket under one deployment prefix."""

    __slots__ = ("active", "base", "counter", "lock", "ready")

    def __init__(self, prefix: str, bucket: Bucket) -> None:
        self.base = f"{prefix}sched:{{{bucket}}}:"
        self.counter = self.base + "counter"
        self.active = self.base + "active"
        self.ready = self.base + "ready"
        self.lock = self.base + "lock"

    def version(self, version: int) -> tuple[str, str, str]:
        """(meta, members, records) of ``version``: a version is self-contained."""
        v = f"{self.base}v:{version}:"
        return (v + "meta", v + "members", v + "records")


def channel(prefix: str) -> str:
    """The activation pub/sub channel of this deployment."""
    return f"{prefix}sched:activated"


def activation_message(bucket: Bucket, version: int) -> str:
    return f"{bucket} {version}"


def parse_activation(data: str) -> tuple[Bucket, int] | None:
    """``group/platform N`` -> (Bucket, N); None for anything else (ignored, never fatal)."""
    name, _, version = data.partition(" ")
    try:
        return Bucket.parse(name), int(version)
    except (ValidationFailed, ValueError):
        return None


# Keys each script receives, in KEYS order. The scripts touch no other key, so
# the Cluster slot test can check exactly these lists.
def activate_keys(keys: BucketKeys, new: int, previous: int) -> list[str]:
    return [keys.active, keys.ready, keys.lock, *keys.version(new), *keys.version(previous)]


def unlock_keys(keys: BucketKeys) -> list[str]:
    return [keys.lock]
