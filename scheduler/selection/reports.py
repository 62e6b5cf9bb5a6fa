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

Unparseable header *values* are ignored (upstream garbage must not fail a
release); a malformed header *map* (bad names, control characters) is a 422.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from accounts.errors import NotFound, ValidationFailed
from accounts.openai_limits import openai_headroom
from accounts.quota import parse_usage
from accounts.retry import retry_after
from snapshot.settings import Settings

from ..core.logs import get_logger
from .select import ResponseId, Selector
from .store import LeaseRef, RenewReply, RuntimeStore, parse_lease_id, window_field

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


class Outcome(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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


def _ms(epoch_s: float) -> str:
    return str(int(epoch_s * 1000))


def outcome_fields(
    ref: LeaseRef, outcome: Outcome, cfg: Settings, now: float
) -> tuple[dict[str, str], list[str]]:
    """The state-hash fields the outcome sets, and the names of its effects. Pure."""
    fields = {"last_used": _ms(now)}
    effects = []
    status = outcome.status
    if status == 429:
        until = retry_after(outcome.headers, now) or now + cfg.runtime.rate_limited_default_s
        fields["rl_until"] = _ms(until)
        effects.append("rate_limited")
    elif status == 529:
        fields["ol_until"] = _ms(now + cfg.runtime.overloaded_s)
        effects.append("overloaded")
    elif status in (401, 403):
        fields.update(auth_hold_fields(status, now))
        effects.append("account_error")
    for window in parse_usage(ref.platform, outcome.headers, now):
        name, value = window_field(window)
        fields[name] = value
        if "quota" not in effects:
            effects.append("quota")
    room = openai_headroom(outcome.headers, now)
    if room is not None:
        fields["rl_room"] = repr(room.fraction)
        fields["rl_room_until"] = _ms(room.until)
        effects.append("rate_limit_headroom")
    return fields, effects


def auth_hold_fields(status: int, now: float) -> dict[str, str]:
    """The state-hash fields a 401/403 sets: held out while PostgreSQL and the snapshot catch up."""
    return {"tu_until": _ms(now + AUTH_HOLD_S), "tu_reason": f"upstream answered {status}"}


async def mark_account_error(accounts: Any, account_id: str, status: int) -> bool:
    """Persist the account error a 401/403 means (through the repository); True if it changed."""
    if accounts is None:
        return False
    changed = bool(await accounts.mark_error(account_id, f"upstream answered {status}"))
    log.warning("account marked error", account_id=account_id, changed=changed)
    return changed


async def account_error(
    runtime: RuntimeStore, accounts: Any, platform: str, account_id: str, status: int
) -> bool:
    """The account-error path of a 401/403 seen outside a release (the usage prober).

    The same as a reported 401/403: the same temporary hold in Redis (so no
    instance picks the account while its buckets are rebuilt) and the same
    ``mark_error`` with the same reason. Returns True if the row changed.
    """
    await runtime.set_state(platform, account_id, auth_hold_fields(status, time.time()))
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


def _samples(outcome: Outcome) -> tuple[str, str, str]:
    failed = outcome.status >= 500 or outcome.status in _ERROR_STATUSES
    latency = "" if outcome.latency_ms is None else repr(outcome.latency_ms)
    ttft = "" if outcome.ttft_ms is None else repr(outcome.ttft_ms)
    return ("1" if failed else "0", latency, ttft)


class Reporter:
    """Applies release outcomes and renewals for one Selector's runtime store."""

    def __init__(
        self, selector: Selector, settings: Callable[[], Settings], accounts: Any = None
    ) -> None:
        self.selector = selector
        self.settings = settings
        # accounts.repository.AccountRepository (mark_error); None in pure-Redis setups.
        self.accounts = accounts

    async def release(self, lease_id: str, outcome: Outcome) -> Released:
        """Give the lease back with its outcome; NotFound (nothing changed) if it is unknown."""
        ref = parse_lease_id(lease_id)
        cfg = self.settings()
        now = time.time()
        fields, effects = outcome_fields(ref, outcome, cfg, now)
        ok_status = 200 <= outcome.status < 300
        keys = self.selector.runtime.keys
        response_key = None
        if ok_status and outcome.response_id:
            response_key = keys.response(ref.platform, ref.group, outcome.response_id)
            effects.append("response_binding")
        state = await self.selector.runtime.release(
            ref,
            alpha=cfg.runtime.ewma_alpha,
            fields=fields,
            samples=_samples(outcome),
            response_key=response_key,
            response_ttl_s=cfg.sticky.response_ttl_s,
        )
        if state is None:
            raise NotFound("unknown lease: never granted, already released, or expired")
        # The state after the release (quota readings, deadlines) goes into this
        # instance's view at once: the very next select here sees a pause it caused.
        self.selector.on_release(ref.platform.value, ref.account_id, state)
        if response_key is not None:
            self.selector.remember_binding(response_key, ref.account_id)
        if "account_error" in effects:
            await mark_account_error(self.accounts, ref.account_id, outcome.status)
        return Released(account_id=ref.account_id, effects=effects)

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
