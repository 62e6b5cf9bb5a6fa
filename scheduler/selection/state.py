"""Runtime state records and their Redis encoding: lease ids, states, script replies.

Pure values and parsers shared by the runtime store (:mod:`.store`), the local
view and the reports: what a lease id encodes, one account's runtime state as
read (moved onto this instance's clock), readings as stored, and the replies of
the acquire / release / renew scripts.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Sequence

import msgspec

from accounts.errors import ValidationFailed
from accounts.model import Platform, QuotaWindow
from accounts.rules import AccountRuntime

from . import fields as F

_SEP = "~"  # not allowed in group names, platforms, uuids or hex: splits lease ids safely
# Every lease id this service issues matches this (published in the API schema as well);
# the grant time is absent only from ids issued before it was added.
LEASE_ID_PATTERN = (
    r"^(?:" + "|".join(p.value for p in Platform) + r")~[A-Za-z0-9_.-]{1,64}~[A-Za-z0-9-]{1,64}"
    r"~[0-9a-f]{1,32}(?:-[0-9]{1,15})?$"
)
_LEASE_ID = re.compile(LEASE_ID_PATTERN)


class LeaseRef(msgspec.Struct, frozen=True):
    """What a lease id encodes; ``granted_ms`` is None for ids issued before it was added."""

    platform: Platform
    group: str
    account_id: str
    lease_id: str
    granted_ms: int | None = None


def new_lease_id(platform: str, group: str, account_id: str) -> str:
    return _SEP.join((platform, group, account_id, secrets.token_hex(8)))


def parse_lease_id(lease_id: str) -> LeaseRef:
    """Decode a lease id; ValidationFailed (422) on one this service cannot have issued."""
    if len(lease_id) > 200 or _LEASE_ID.fullmatch(lease_id) is None:
        raise ValidationFailed.one("lease_id", "not a lease id issued by this service")
    platform, group, account_id, tail = lease_id.split(_SEP)
    _random, _, granted = tail.partition("-")
    return LeaseRef(
        Platform(platform), group, account_id, lease_id, int(granted) if granted else None
    )


class RuntimeState(AccountRuntime, frozen=True, kw_only=True):
    """One account's shared runtime state as last read (times in epoch seconds).

    Extends the rules' :class:`~accounts.rules.AccountRuntime` (deadlines, quota
    readings, last use) with what scoring needs, so the filter takes it as is.

    Redis keeps every time in its own clock (``TIME``); a state read from it is
    moved onto this instance's clock by the offset measured with the very reply
    that carried it (:func:`parse_state`'s ``shift_s``), so the filter compares
    deadlines with its own ``now`` and still agrees with Redis to the millisecond,
    however far this instance's clock is off.
    """

    leases: int = 0
    error_rate: float = 0.0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    # What is left of the tightest upstream rate limit (0..1, OpenAI x-ratelimit-*),
    # and until when that reading holds.
    ratelimit_room: float | None = None
    ratelimit_room_until: float | None = None


EMPTY = RuntimeState()
_window_decoder = msgspec.json.Decoder(QuotaWindow)


def parse_state(leases: int, flat: Sequence[str], shift_s: float = 0.0) -> RuntimeState:
    """A RuntimeState from a Redis HGETALL reply (flat field/value list).

    ``shift_s`` (this instance's clock minus Redis's, at the reply) moves every
    time onto this instance's clock.
    """
    leases = int(leases)
    if not flat and not leases:
        # No state at all (an idle account): one shared record, not one each (10,000
        # idle accounts: ~1.3 MB).
        return EMPTY
    pairs = iter(flat)  # field, value, field, value...: no slices copied (odd: ValueError)
    h = dict(zip(pairs, pairs, strict=True))
    windows = []
    for field in F.WINDOW_FIELDS:
        raw = h.get(field)
        if raw:
            # A reading we cannot read is no reading: never a crash on the hot path.
            with contextlib.suppress(msgspec.DecodeError):
                windows.append(_shift_reading(_window_decoder.decode(raw), shift_s))
    return RuntimeState(
        leases=leases,
        rate_limited_until=_at(h.get(F.RATE_LIMITED_UNTIL), shift_s),
        overloaded_until=_at(h.get(F.OVERLOADED_UNTIL), shift_s),
        unschedulable_until=_at(h.get(F.UNSCHEDULABLE_UNTIL), shift_s),
        unschedulable_reason=h.get(F.UNSCHEDULABLE_REASON) or None,
        last_used_at=_at(h.get(F.LAST_USED), shift_s),
        error_rate=float(h.get(F.EWMA_ERROR) or 0.0),
        latency_ms=_float(h.get(F.EWMA_LATENCY)),
        ttft_ms=_float(h.get(F.EWMA_TTFT)),
        ratelimit_room=_float(h.get(F.RATE_LIMIT_ROOM)),
        ratelimit_room_until=_at(h.get(F.RATE_LIMIT_ROOM_UNTIL), shift_s),
        windows=tuple(windows),
    )


def _at(raw: str | None, shift_s: float) -> float | None:
    # F.ms_to_s(raw) + shift_s, inlined: five of these per state parsed on the hot path.
    return float(raw) / 1000.0 + shift_s if raw else None


def _shift_reading(reading: QuotaWindow, shift_s: float) -> QuotaWindow:
    if not shift_s:
        return reading
    reset_at = None if reading.reset_at is None else reading.reset_at + shift_s
    return msgspec.structs.replace(
        reading, observed_at=reading.observed_at + shift_s, reset_at=reset_at
    )


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:  # a value we cannot read is no value: never a crash on the hot path
        return None


def relative_reading(reading: QuotaWindow, now: float) -> QuotaWindow:
    """The reading with its times relative to ``now`` (the scripts add Redis TIME)."""
    reset_at = None if reading.reset_at is None else reading.reset_at - now
    return msgspec.structs.replace(
        reading, observed_at=reading.observed_at - now, reset_at=reset_at
    )


def encode_reading(reading: QuotaWindow) -> tuple[str, str]:
    """The state-hash field and value storing one quota reading."""
    return F.window_field(reading.window), msgspec.json.encode(reading).decode()


class Effects(msgspec.Struct, frozen=True, kw_only=True):
    """What a reported outcome does to the account's state, in durations.

    ``release.lua`` turns each into a time by adding Redis ``TIME``. Readings
    are in this instance's clock; they travel relative to its now and the script
    puts them on Redis ``TIME`` too.
    """

    rate_limited_s: float | None = None
    overloaded_s: float | None = None
    # What is left of a rate limit (OpenAI x-ratelimit-*: remaining / limit), until when.
    headroom: float | None = None
    headroom_s: float | None = None
    unschedulable_s: float | None = None
    unschedulable_reason: str = ""
    readings: tuple[QuotaWindow, ...] = ()
    # EWMA samples: 1/0 for a failed/successful request (None: not a sample), latencies.
    error: bool | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    last_used: bool = True


def ms_arg(seconds: float | None) -> str:
    return "" if seconds is None else str(F.s_to_ms(seconds))


def sample_arg(value: float | None) -> str:
    return "" if value is None else repr(value)


class Released(msgspec.Struct, frozen=True):
    """What a release script did: ``live`` False when the lease was already gone."""

    live: bool
    state: RuntimeState


class Acquired(msgspec.Struct, frozen=True):
    """A granted lease; ``bound`` is the session's binding after the call (None: none)."""

    lease_id: str
    expires_at: float
    state: RuntimeState
    bound: str | None = None


class RenewReply(msgspec.Struct, frozen=True):
    """What renew.lua did (epoch seconds, Redis server time)."""

    expires_at: float
    now: float
    previous: float


class Refused(msgspec.Struct, frozen=True):
    """``kind``: full | rate_limited | overloaded | temp_unschedulable | rebound."""

    kind: str
    leases: int = 0
    until: float | None = None
    bound_to: str | None = None


DEADLINE_KIND = {1: "rate_limited", 2: "overloaded", 3: "temp_unschedulable"}
