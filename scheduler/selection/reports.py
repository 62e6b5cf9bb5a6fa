"""Release outcomes: a finished request gives its lease back and says how it went.

One script call per release removes the lease and applies the outcome to the
account's shared runtime state (so every instance sees it on its next
selection):

* 429: rate-limited until the reset the headers give (``Retry-After`` /
  ``retry-after-ms``, Codex and Anthropic reset headers, via
  :func:`accounts.retry.retry_after`), else ``runtime.rate_limited_default_s``;
* 529: overloaded for ``runtime.overloaded_s``;
* 401/403: the account is set to ``error`` in PostgreSQL through the repository
  (its buckets become dirty and are rebuilt) and held temporarily-unschedulable
  in Redis meanwhile, so no instance picks it while the rebuild runs;
* any status: quota readings from the usage headers, EWMAs of error rate,
  latency and TTFT, last use; on success the previous_response_id binding.

Unparseable header *values* are ignored (upstream garbage must not fail a
release); a malformed header *map* (bad names, control characters) is a 422.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from accounts.errors import NotFound, ValidationFailed
from accounts.quota import parse_usage
from accounts.retry import retry_after
from snapshot.settings import Settings

from ..core.logs import get_logger
from . import fields as F
from .select import ResponseId, Selector
from .store import LeaseRef, encode_reading, parse_lease_id

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
    # What the outcome changed: rate_limited, overloaded, account_error, quota, response_binding.
    effects: list[str]


class Renewed(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: str
    expires_at: float


def outcome_fields(
    ref: LeaseRef, outcome: ReleaseOutcome, cfg: Settings, now: float
) -> tuple[dict[str, str], list[str]]:
    """The state-hash fields the outcome sets, and the names of its effects. Pure."""
    fields = {F.LAST_USED: str(F.s_to_ms(now))}
    effects = []
    status = outcome.status
    if status == 429:
        until = retry_after(outcome.headers, now) or now + cfg.runtime.rate_limited_default_s
        fields[F.RATE_LIMITED_UNTIL] = str(F.s_to_ms(until))
        effects.append("rate_limited")
    elif status == 529:
        fields[F.OVERLOADED_UNTIL] = str(F.s_to_ms(now + cfg.runtime.overloaded_s))
        effects.append("overloaded")
    elif status in (401, 403):
        fields[F.UNSCHEDULABLE_UNTIL] = str(F.s_to_ms(now + AUTH_HOLD_S))
        fields[F.UNSCHEDULABLE_REASON] = f"upstream answered {status}"
        effects.append("account_error")
    for window in parse_usage(ref.platform, outcome.headers, now):
        name, value = encode_reading(window)
        fields[name] = value
        if "quota" not in effects:
            effects.append("quota")
    return fields, effects


def _samples(outcome: ReleaseOutcome) -> tuple[str, str, str]:
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

    async def release(self, lease_id: str, outcome: ReleaseOutcome) -> Released:
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
        if "account_error" in effects and self.accounts is not None:
            changed = await self.accounts.mark_error(
                ref.account_id, f"upstream answered {outcome.status}"
            )
            log.warning("account marked error", account_id=ref.account_id, changed=changed)
        return Released(account_id=ref.account_id, effects=effects)

    async def renew(self, lease_id: str, ttl_s: float | None) -> Renewed:
        """Push the lease's expiry to now + ttl (capped by ``leases.max_ttl_s``)."""
        ref = parse_lease_id(lease_id)
        cfg = self.settings().leases
        if ttl_s is not None and not ttl_s > 0:
            raise ValidationFailed.one("ttl_s", "must be > 0")
        ttl = min(ttl_s if ttl_s is not None else cfg.ttl_s, cfg.max_ttl_s)
        expires = await self.selector.runtime.renew(ref, ttl)
        if expires is None:
            raise NotFound("unknown lease: never granted, already released, or expired")
        return Renewed(lease_id=lease_id, expires_at=expires)
