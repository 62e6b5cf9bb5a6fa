"""What a usage probe can end in besides a reading, classified for the prober.

The adapters translate every failure at the boundary (like the task adapters,
with the same classes where the meaning is the same)::

    scheduler.upstream.errors.UpstreamError
    ├── Transient        timeout, 5xx, an unreadable answer: back off, try later
    │   └── RateLimited  429: back off at least as long as the upstream asks
    ├── AuthFailed       401: the account-error path, exactly as a reported 401
    └── CannotProbe      403 (the token lacks the scope), 404 (no usage endpoint at
                         this base URL), credentials without the needed fields:
                         the account is fine, it just cannot be probed; asked
                         again much later
    ProbeBusy            (not an upstream error) an operator's probe found the
                         account locked by another probe (409)
    └── ProbeRateLimited the probe rates stay used up for a few seconds (429)

None of them pauses or errors an account by itself; only AuthFailed leads to
the account-error path, through :func:`scheduler.selection.reports.account_error`.
"""

from __future__ import annotations

from accounts.errors import StationmasterError

from ..upstream.errors import AuthFailed, RateLimited, Transient, UpstreamError

__all__ = [
    "AuthFailed",
    "CannotProbe",
    "ProbeBusy",
    "ProbeRateLimited",
    "RateLimited",
    "Transient",
    "UpstreamError",
]


class CannotProbe(UpstreamError):
    """This account's usage cannot be read (missing scope, no endpoint, no token)."""

    code = "usage_cannot_probe"
    status = 422


class NotProbeable(StationmasterError):
    """The account exists but has no usage endpoint (an API-key account, or a platform without one).

    409, not 422: the request is well formed; it is the account's kind that
    cannot be probed, as a later change of the account could make it probeable.
    """

    code = "not_probeable"
    status = 409

    def __init__(self, message: str, *, account_id: str) -> None:
        super().__init__(message, details={"account_id": account_id})


class ProbeBusy(StationmasterError):
    """An operator's probe could not start now: another probe holds the account."""

    code = "probe_busy"
    status = 409

    def __init__(self, message: str, *, retry_after_s: float, account_id: str) -> None:
        super().__init__(
            message, details={"retry_after_s": retry_after_s, "account_id": account_id}
        )
        self.retry_after_s = retry_after_s


class ProbeRateLimited(ProbeBusy):
    """An operator's probe found the probe rates used up longer than it waits."""

    code = "probe_rate_limited"
    status = 429
