"""Release outcomes: a finished request gives its lease back and says how it went.

One script call per release removes the lease and applies the outcome to the
account's shared runtime state (so every instance sees it on its next
selection):

* 429: rate-limited until the reset the headers give (``Retry-After`` /
  ``retry-after-ms``, Codex, Anthropic and OpenAI ``x-ratelimit-*`` reset
  headers, via :func:`accounts.retry.retry_after`), else
  ``runtime.rate_limited_default_s``;
* 529: overloaded for ``runtime.overloaded_s``;
* 401/403: the account is set to ``error`` in PostgreSQL through the repository
  (its buckets become dirty and are rebuilt) and held temporarily-unschedulable
  in Redis meanwhile, so no instance picks it while the rebuild runs;
* any status: quota readings from the usage headers, what is left of OpenAI's
  ``x-ratelimit-*`` limits (a soft penalty in scoring until their reset), EWMAs
  of error rate, latency and TTFT, last use; on success the previous_response_id
  binding.

:data:`RELEASE_HEADERS_DOC` says the same to API users (the release route's
OpenAPI description).

Deadlines go to Redis as durations: the script adds Redis ``TIME`` (one clock
for every instance, whatever their own clocks say).

A late report (the lease expired, or was given back already) still applies its
account-level effects: a 401 after the lease's TTL must take the account out of
rotation all the same. Only the lease bookkeeping depends on the lease, and the
answer's ``lease`` says which happened (``released`` or ``gone``). A lease id
naming an account this instance does not know in that bucket is a 404 and
changes nothing (nothing is written for made-up accounts).

Unparseable header *values* are ignored (upstream garbage must not fail a
release); a malformed header *map* (bad names, control characters) is a 422.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from accounts.errors import NotFound, ValidationFailed
from accounts.openai_limits import openai_headroom
from accounts.quota import parse_usage
from accounts.retry import retry_after
from snapshot.keys import Bucket
from snapshot.settings import Settings

from ..core.logs import get_logger
from .select import ResponseId, Selector
from .store import Effects, LeaseRef, RenewReply, RuntimeStore, parse_lease_id

log = get_logger("reports")

# An account that answered 401/403 is held out this long in Redis while the
# PostgreSQL write makes the snapshot drop it (a rebuild takes well under this).
AUTH_HOLD_S = 300.0
# Statuses that count as a failed request in the error-rate average. 429 is
# not a failure of the account (it is rate limiting, handled by its deadline).
_ERROR_STATUSES = frozenset({401, 403, 408})

HeaderName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
]
HeaderValue = Annotated[str, msgspec.Meta(max_length=8192, pattern=r"^[^\x00-\x08\x0a-\x1f\x7f]*$")]
Millis = Annotated[float, msgspec.Meta(ge=0, le=86_400_000)]


class ReleaseOutcome(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the request on a lease ended, as the gateway saw it."""

    status: Annotated[int, msgspec.Meta(ge=100, le=599)]
    latency_ms: Millis | None = None
    ttft_ms: Millis | None = None
    response_id: ResponseId | None = None
    headers: Annotated[dict[HeaderName, HeaderValue], msgspec.Meta(max_length=200)] = msgspec.field(
        default_factory=dict
    )


class Released(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    # "released": the lease was live and is given back; "gone": it had expired or
    # was released before; the outcome's effects applied to the account all the same.
    lease: Literal["released", "gone"]
    # What the outcome changed: rate_limited, overloaded, account_error, quota, response_binding.
    effects: list[str]


class Renewed(msgspec.Struct, frozen=True, kw_only=True):
    """A renewal's result (times in epoch seconds, Redis server time).

    ``clamped_by`` names the cap that cut the TTL asked for (``max_ttl_s``: one
    renewal's reach; ``max_lifetime_s``: the lease's whole life), None when it
    was granted in full or the lease already ran longer than asked (a renew
    never shortens a lease).
    """

    lease_id: str
    expires_at: float
    now: float
    requested_ttl_s: float
    clamped_by: str | None
    max_ttl_s: float
    max_lifetime_s: float
    lifetime_ends_at: float | None


def outcome_effects(
    ref: LeaseRef, outcome: ReleaseOutcome, cfg: Settings, now: float
) -> tuple[Effects, list[str]]:
    """What the outcome does to the account (durations, relative readings), and its names. Pure.

    ``now`` is this instance's clock, used only to turn absolute times in the
    headers (an HTTP date, an epoch reset) into durations.
    """
    names = []
    rate_limited_s = overloaded_s = unschedulable_s = None
    reason = ""
    status = outcome.status
    if status == 429:
        until = retry_after(outcome.headers, now)
        rate_limited_s = max(0.0, until - now) if until else cfg.runtime.rate_limited_default_s
        names.append("rate_limited")
    elif status == 529:
        overloaded_s = cfg.runtime.overloaded_s
        names.append("overloaded")
    elif status in (401, 403):
        unschedulable_s = AUTH_HOLD_S
        reason = f"upstream answered {status}"
        names.append("account_error")
    readings = tuple(parse_usage(ref.platform, outcome.headers, now))
    if readings:
        names.append("quota")
    headroom = headroom_s = None
    room = openai_headroom(outcome.headers, now)
    if room is not None:
        headroom, headroom_s = room.fraction, max(0.0, room.until - now)
        names.append("rate_limit_headroom")
    effects = Effects(
        rate_limited_s=rate_limited_s,
        overloaded_s=overloaded_s,
        unschedulable_s=unschedulable_s,
        unschedulable_reason=reason,
        headroom=headroom,
        headroom_s=headroom_s,
        readings=readings,
        error=outcome.status >= 500 or outcome.status in _ERROR_STATUSES,
        latency_ms=outcome.latency_ms,
        ttft_ms=outcome.ttft_ms,
    )
    return effects, names


def auth_hold(status: int) -> Effects:
    """What a 401/403 does in Redis: held out while PostgreSQL and the snapshot catch up."""
    return Effects(
        unschedulable_s=AUTH_HOLD_S,
        unschedulable_reason=f"upstream answered {status}",
        last_used=False,
    )


async def mark_account_error(accounts: Any, account_id: str, status: int) -> bool:
    """Persist the account error a 401/403 means (through the repository); True if it changed."""
    if accounts is None:
        return False
    changed = bool(await accounts.mark_error(account_id, f"upstream answered {status}"))
    log.warning("account marked error", account_id=account_id, changed=changed)
    return changed


async def account_error(
    runtime: RuntimeStore,
    accounts: Any,
    platform: str,
    account_id: str,
    status: int,
    *,
    alpha: float = 0.2,
) -> bool:
    """The account-error path of a 401/403 seen outside a release (the usage prober).

    The same as a reported 401/403: the same temporary hold in Redis, computed by
    the script from Redis TIME (so no instance picks the account while its
    buckets are rebuilt), and the same ``mark_error`` with the same reason.
    Returns True if the row changed.
    """
    await runtime.apply(platform, account_id, auth_hold(status), alpha=alpha)
    return await mark_account_error(accounts, account_id, status)


RELEASE_HEADERS_DOC = """Gives the lease back and reports how the request ended.

`headers` are the upstream's response headers (names case-insensitive). Exactly
these are read; every other header is ignored, and so is a malformed value
(never an error):

* `retry-after-ms` (milliseconds) and `retry-after` (seconds or an HTTP date):
  on a 429, the account is rate-limited until then.
* `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests`,
  `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-tokens` (OpenAI API keys;
  resets are durations such as `6m0s`, `1s`, `20ms`): on a 429, the account is
  rate-limited until the reset of each family whose remaining is 0 (of every
  family given when none is 0). With `x-ratelimit-limit-requests` /
  `x-ratelimit-limit-tokens`, on any status, `remaining / limit` of the tightest
  family lowers the account's score (the `quota_headroom` term) until that
  family's reset.
* `x-codex-primary-*` and `x-codex-secondary-*` (`used-percent`, `window-minutes`,
  `reset-at`, `reset-after-seconds`; Codex OAuth accounts): 5-hour and 7-day
  quota readings (auto-pause, scoring); on a 429, a used-up window's reset.
* `anthropic-ratelimit-unified-5h-*` / `-7d-*` (`utilization`, `reset`, `status`)
  and `anthropic-ratelimit-unified-status`, `-reset`, `-representative-claim`
  (Anthropic OAuth accounts): 5-hour and 7-day quota readings; on a 429, the
  resets of the limits that refused.
* `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-remaining` and
  `-reset` (Anthropic API keys, RFC 3339): on a 429, the reset of each family
  whose remaining is 0.

The latest reset wins (the account waits until every limit that refused it has
lifted); with none usable, a 429 rate-limits for `runtime.rate_limited_default_s`.
Status 529: overloaded for `runtime.overloaded_s`. 401/403: the account is marked
`error`. Any status: latency, time to first token and error-rate averages; a 2xx
with `response_id` binds it to the account for `previous_response_id`."""


class Reporter:
    """Applies release outcomes and renewals for one Selector's runtime store."""

    def __init__(
        self, selector: Selector, settings: Callable[[], Settings], accounts: Any = None
    ) -> None:
        self.selector = selector
        self.settings = settings
        # accounts.repository.AccountRepository (mark_error); None in pure-Redis setups.
        self.accounts = accounts

    async def release(self, lease_id: str, outcome: ReleaseOutcome) -> Released:
        """Give the lease back with its outcome; its effects apply even when it is gone.

        NotFound (nothing changed) only when the lease names an account this
        instance does not know in that bucket.
        """
        ref = parse_lease_id(lease_id)
        cfg = self.settings()
        effects, names = outcome_effects(ref, outcome, cfg, self.selector.clock())
        response_key = None
        if 200 <= outcome.status < 300 and outcome.response_id:
            keys = self.selector.runtime.keys
            response_key = keys.response(ref.platform, ref.group, outcome.response_id)
            names.append("response_binding")
        released = await self.selector.runtime.release(
            ref,
            effects,
            alpha=cfg.runtime.ewma_alpha,
            response_key=response_key,
            response_ttl_s=cfg.sticky.response_ttl_s,
            when_gone=self._known(ref),
        )
        if released is None:
            raise NotFound("unknown lease: not an account of that bucket here, and not live")
        # The state after the release (quota readings, deadlines) goes into this
        # instance's view at once: the very next select here sees a pause it caused.
        if released.live:
            self.selector.on_release(ref.platform.value, ref.account_id, released.state)
        else:
            self.selector.view.put(ref.account_id, released.state)
        if response_key is not None:
            self.selector.remember_binding(response_key, ref.account_id)
        if "account_error" in names:
            await mark_account_error(self.accounts, ref.account_id, outcome.status)
        return Released(
            account_id=ref.account_id,
            lease="released" if released.live else "gone",
            effects=names,
        )

    def _known(self, ref: LeaseRef) -> bool:
        """Whether the lease's account is in its bucket's snapshot here (late reports apply)."""
        snap = self.selector.buckets.get(Bucket(ref.group, ref.platform))
        return snap is not None and ref.account_id in snap.by_id

    async def renew(self, lease_id: str, ttl_s: float | None) -> Renewed:
        """Extend the lease to now + ttl; never shorter than it is, and say what capped it.

        The TTL asked for (``leases.ttl_s`` when None) is capped at
        ``leases.max_ttl_s``, and the expiry at grant + ``leases.max_lifetime_s``.
        """
        ref = parse_lease_id(lease_id)
        cfg = self.settings().leases
        if ttl_s is not None and not ttl_s > 0:
            raise ValidationFailed.one("ttl_s", "must be > 0")
        asked = ttl_s if ttl_s is not None else cfg.ttl_s
        reply = await self.selector.runtime.renew(
            ref, min(asked, cfg.max_ttl_s), max_lifetime_s=cfg.max_lifetime_s
        )
        if reply is None:
            raise NotFound("unknown lease: never granted, already released, or expired")
        ends = None if ref.granted_ms is None else ref.granted_ms / 1000.0 + cfg.max_lifetime_s
        return Renewed(
            lease_id=lease_id,
            expires_at=reply.expires_at,
            now=reply.now,
            requested_ttl_s=asked,
            clamped_by=_clamp_reason(reply, asked, cfg.max_ttl_s, ends),
            max_ttl_s=cfg.max_ttl_s,
            max_lifetime_s=cfg.max_lifetime_s,
            lifetime_ends_at=ends,
        )


def _clamp_reason(
    reply: RenewReply, asked: float, max_ttl_s: float, ends: float | None
) -> str | None:
    """Which cap cut the TTL asked for, when the lease now ends before now + asked."""
    # Redis counts milliseconds: half of one is slack on the comparisons.
    if reply.expires_at >= reply.now + asked - 0.0005:
        return None
    if ends is not None and reply.now + min(asked, max_ttl_s) > ends + 0.0005:
        return "max_lifetime_s"
    return "max_ttl_s"
