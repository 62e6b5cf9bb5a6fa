"""Every Redis key name of the schedule snapshot, in one place.

A bucket is one (group, platform) pair, written ``group/platform`` (group names
never contain ``/``, ``{`` or ``}``; see :data:`accounts.model.GroupName`). Every
key of one bucket carries the hash tag ``{<group>/<platform>}`` (the part between
the braces is what Redis Cluster hashes), so all of them live in one slot and
each Lua script touches a single slot::

    <prefix>sched:{<group>/<platform>}:seq                HASH n (next number), epoch
    <prefix>sched:{<group>/<platform>}:active             the active version, "<n>:<epoch>"
    <prefix>sched:{<group>/<platform>}:ready              "1" once a version was activated
    <prefix>sched:{<group>/<platform>}:lock               rebuild lock: random owner token
    <prefix>sched:{<group>/<platform>}:v:<n>:<epoch>:meta     JSON {count, built_at}
    <prefix>sched:{<group>/<platform>}:v:<n>:<epoch>:members  LIST of account ids, in order
    <prefix>sched:{<group>/<platform>}:v:<n>:<epoch>:records  HASH id -> msgspec JSON Account

A version is a :class:`Stamp`: an *epoch* and a number. The epoch is made (from
Redis ``TIME``, in microseconds) together with the counter, so when the counter
is lost -- a flush, a restart without persistence, a failover that lost writes --
the next version carries a new, larger epoch and outranks every version of the
old one, though its number starts again at 1. Readers never go back within an
epoch and always follow a newer epoch. (A legacy ``active`` holding a bare
number reads as epoch 0.)

``<prefix>sched:activated`` is the pub/sub channel (a channel, not a key: PUBLISH
reaches every node of a cluster). Messages are ``<group>/<platform> <n>:<epoch>``.
"""

from __future__ import annotations

from typing import NamedTuple

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


# Fields of the ``seq`` hash (alloc.lua uses these names).
SEQ_NUMBER = "n"
SEQ_EPOCH = "epoch"


class Stamp(NamedTuple):
    """A snapshot version: (epoch, number), compared in that order. See the module doc."""

    epoch: int
    number: int

    def encode(self) -> str:
        return f"{self.number}:{self.epoch}"

    @classmethod
    def decode(cls, raw: str | bytes | None) -> Stamp:
        """``"<n>:<epoch>"``, a legacy ``"<n>"`` (epoch 0), or nothing (:data:`NO_VERSION`)."""
        if not raw:
            return NO_VERSION
        text = raw.decode() if isinstance(raw, bytes) else raw
        number, _, epoch = text.partition(":")
        return cls(int(epoch or 0), int(number))

    def __str__(self) -> str:
        return self.encode()


# No version at all (no snapshot): below every real one.
NO_VERSION = Stamp(0, 0)


class BucketKeys:
    """Key names of one bucket under one deployment prefix."""

    __slots__ = ("active", "base", "lock", "ready", "seq")

    def __init__(self, prefix: str, bucket: Bucket) -> None:
        self.base = f"{prefix}sched:{{{bucket}}}:"
        self.seq = self.base + "seq"
        self.active = self.base + "active"
        self.ready = self.base + "ready"
        self.lock = self.base + "lock"

    def version(self, stamp: Stamp) -> tuple[str, str, str]:
        """(meta, members, records) of one version: a version is self-contained."""
        v = f"{self.base}v:{stamp.number}:{stamp.epoch}:"
        return (v + "meta", v + "members", v + "records")


def channel(prefix: str) -> str:
    """The activation pub/sub channel of this deployment."""
    return f"{prefix}sched:activated"


def activation_message(bucket: Bucket, stamp: Stamp) -> str:
    return f"{bucket} {stamp.encode()}"


def parse_activation(data: str) -> tuple[Bucket, Stamp] | None:
    """``group/platform <n>:<epoch>`` -> (Bucket, Stamp); None for anything else (ignored)."""
    name, _, version = data.partition(" ")
    try:
        return Bucket.parse(name), Stamp.decode(version)
    except (ValidationFailed, ValueError):
        return None


# Keys each script receives, in KEYS order. The scripts touch no other key, so
# the Cluster slot test can check exactly these lists.
def activate_keys(keys: BucketKeys, new: Stamp, previous: Stamp) -> list[str]:
    return [keys.active, keys.ready, keys.lock, *keys.version(new), *keys.version(previous)]


def alloc_keys(keys: BucketKeys) -> list[str]:
    return [keys.seq]


def unlock_keys(keys: BucketKeys) -> list[str]:
    return [keys.lock]
