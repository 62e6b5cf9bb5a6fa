"""What can go wrong talking to an upstream, classified for the caller.

Adapters never let a raw ``httpx`` error, a JSON decode error or a platform's
error code escape: each is translated at the boundary into one branch of this
tree, so the task poller decides from the class alone what to do::

    accounts.errors.UpstreamError
    └── UpstreamError               platform, account_id; root of this tree
        ├── Transient               timeout, 5xx, reset, malformed body: retry later
        │   └── RateLimited         429 / quota codes; retry_after_s when the answer says
        ├── Rejected                the request is bad: the task fails, the hold is released
        ├── AuthFailed              401/403 and account-level refusals (arrears, no
        │                           resource pack): the account-error path, like a
        │                           reported 401
        └── Ambiguous               a submit whose outcome is unknown (sent, no answer):
                                    the task may exist upstream; look it up or fail it

``Transient`` and ``Rejected`` also derive from the older
``accounts.errors.UpstreamTransient`` / ``UpstreamRejected`` so code catching
those keeps working. Messages never carry credentials or tokens: only the
platform's error code and message, cut to :data:`MAX_REASON`.
"""

from __future__ import annotations

from accounts import errors as _base

__all__ = [
    "Ambiguous",
    "AuthFailed",
    "RateLimited",
    "Rejected",
    "Transient",
    "UpstreamError",
]

# An upstream's message is quoted to the user in a failure reason; a page of HTML
# from a proxy is not a reason.
MAX_REASON = 300


def clip(text: str) -> str:
    """``text`` on one line, at most :data:`MAX_REASON` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_REASON else flat[: MAX_REASON - 1] + "…"


class UpstreamError(_base.UpstreamError):
    """Root of the adapter errors; ``platform`` and ``account_id`` say where."""

    code = "upstream_error"

    def __init__(self, message: str, *, platform: str, account_id: str | None = None) -> None:
        message = clip(message)
        super().__init__(message, details={"platform": platform, "account_id": account_id})
        self.platform = platform
        self.account_id = account_id


class Transient(UpstreamError, _base.UpstreamTransient):
    """Worth retrying later: timeout, connection reset, 5xx, a body we cannot read."""

    code = "upstream_transient"


class RateLimited(Transient):
    """The upstream refused for rate or quota; ``retry_after_s`` when it said when."""

    code = "upstream_rate_limited"
    status = 429

    def __init__(
        self,
        message: str,
        *,
        platform: str,
        account_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, platform=platform, account_id=account_id)
        self.retry_after_s = retry_after_s
        self.details["retry_after_s"] = retry_after_s


class Rejected(UpstreamError, _base.UpstreamRejected):
    """The request itself is bad (or not allowed now); ``reason`` is the upstream's word."""

    code = "upstream_rejected"
    status = 422

    def __init__(self, reason: str, *, platform: str, account_id: str | None = None) -> None:
        super().__init__(reason, platform=platform, account_id=account_id)
        self.reason = self.message


class AuthFailed(UpstreamError):
    """The account's credentials or standing were refused (401/403, arrears)."""

    code = "upstream_auth_failed"


class Ambiguous(UpstreamError):
    """A submit was sent but its outcome is unknown: the task may exist upstream."""

    code = "upstream_ambiguous"
