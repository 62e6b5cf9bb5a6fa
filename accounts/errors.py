"""The one exception tree of stationmaster.

Every error the daemon raises on purpose derives from :class:`StationmasterError`,
so callers can catch the root and the HTTP layer can map each branch to one status
code and one JSON body::

    StationmasterError
    ├── ConfigError                 invalid configuration (key path + reason); exit 2
    ├── ValidationFailed            bad input: one or more (field, reason) pairs; 422
    ├── NotFound                    the named thing does not exist; 404
    │   └── UnknownBucket           no account in that group for that platform
    ├── Conflict                    compare-and-set lost (carries current version); 409
    │   └── NameTaken               another account has this name; 409
    ├── PreconditionRequired        a compare-and-set write sent no version; 428
    ├── Unauthorized / Forbidden    missing or wrong-scope bearer token; 401 / 403
    ├── PayloadTooLarge             request body over the configured limit; 413
    ├── UnsupportedMediaType        a JSON route sent another Content-Type; 415
    ├── MethodNotAllowed            the route exists, not with this method (Allow); 405
    ├── StoreUnavailable            PostgreSQL or Redis did not answer in time; 503
    ├── UpstreamError               an upstream provider misbehaved
    │   ├── UpstreamTransient       worth retrying (timeouts, 5xx, 429)
    │   └── UpstreamRejected        final (4xx other than 429)
    ├── NoAccountAvailable          nothing fits the request (exclusion counts); 503
    ├── ModelNotServed              no account of the bucket could ever serve the model; 404
    └── SupervisorError             an essential actor kept crashing; exit 1

Lower-layer errors (asyncpg, coredis, OS errors) are translated at the store
boundary with ``raise StoreUnavailable(...) from exc`` so nothing above the store
modules needs to know the drivers. Messages never carry secrets: credentials and
tokens are never formatted into them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class StationmasterError(Exception):
    """Root of every deliberate stationmaster error."""

    code: str = "internal"
    status: int = 500

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class ConfigError(StationmasterError):
    """Configuration is invalid: ``key`` is the dotted path, ``reason`` why."""

    code = "invalid_config"
    status = 500

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}", details={"key": key, "reason": reason})
        self.key = key
        self.reason = reason


class FieldError(tuple[str, str]):
    """A (field, reason) pair; a tuple so it is hashable and cheap."""

    __slots__ = ()

    def __new__(cls, field: str, reason: str) -> FieldError:
        return super().__new__(cls, (field, reason))

    @property
    def field(self) -> str:
        return self[0]

    @property
    def reason(self) -> str:
        return self[1]


class ValidationFailed(StationmasterError):
    """Bad input. ``errors`` lists every (field, reason) found."""

    code = "invalid_request"
    status = 422

    def __init__(self, errors: Sequence[tuple[str, str]], *, message: str | None = None) -> None:
        self.errors = [FieldError(f, r) for f, r in errors]
        first = self.errors[0] if self.errors else FieldError("$", "invalid")
        super().__init__(
            message or f"{first.field}: {first.reason}",
            details={"errors": [{"field": f, "reason": r} for f, r in self.errors]},
        )

    @classmethod
    def one(cls, field: str, reason: str) -> ValidationFailed:
        return cls([(field, reason)])


class BadRequest(ValidationFailed):
    """Malformed request (not JSON, wrong shape at the top level); 400."""

    code = "bad_request"
    status = 400


class NotFound(StationmasterError):
    code = "not_found"
    status = 404


class UnknownBucket(NotFound):
    """No account anywhere in this (group, platform): nothing was kept of the request."""

    code = "unknown_bucket"


class Conflict(StationmasterError):
    """A compare-and-set lost; ``current_version`` is what is stored now."""

    code = "version_conflict"
    status = 409

    def __init__(self, message: str, *, current_version: int | None = None) -> None:
        super().__init__(message, details={"current_version": current_version})
        self.current_version = current_version


class NameTaken(Conflict):
    """A create or rename would give an account a name another one has (unique per deployment)."""

    code = "name_taken"

    def __init__(self, name_length: int) -> None:
        # The name itself is not echoed: the caller sent it, and it may be long.
        super().__init__(f"another account already has this name ({name_length} characters)")
        self.details["field"] = "name"


class Unauthorized(StationmasterError):
    code = "unauthorized"
    status = 401


class Forbidden(StationmasterError):
    code = "forbidden"
    status = 403


class PayloadTooLarge(StationmasterError):
    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(StationmasterError):
    code = "unsupported_media_type"
    status = 415


class MethodNotAllowed(StationmasterError):
    """``allowed`` lists the route's methods (the ``Allow`` header, RFC 9110)."""

    code = "method_not_allowed"
    status = 405

    def __init__(self, message: str, *, allowed: Sequence[str]) -> None:
        super().__init__(message, details={"allowed": list(allowed)})
        self.allowed = list(allowed)


class StoreUnavailable(StationmasterError):
    """PostgreSQL or Redis did not answer; ``store`` names which.

    ``retry_after_s`` is the hint an HTTP answer carries (``Retry-After``): an
    outage is usually short, and the daemon recovers from it by itself.
    """

    code = "store_unavailable"
    status = 503

    def __init__(self, store: str, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(
            f"{store}: {message}", details={"store": store, "retry_after_s": retry_after_s}
        )
        self.store = store


class UpstreamError(StationmasterError):
    code = "upstream_error"
    status = 502


class UpstreamTransient(UpstreamError):
    code = "upstream_transient"


class UpstreamRejected(UpstreamError):
    code = "upstream_rejected"


class NoAccountAvailable(StationmasterError):
    """Nothing fits: ``exclusions`` counts candidates by reason."""

    code = "no_available_accounts"
    status = 503

    def __init__(
        self,
        message: str,
        *,
        bucket: str,
        exclusions: Mapping[str, int],
        retry_after_s: float,
    ) -> None:
        super().__init__(
            message,
            details={
                "bucket": bucket,
                "exclusions": dict(exclusions),
                "retry_after_s": retry_after_s,
            },
        )
        self.bucket = bucket
        self.exclusions = dict(exclusions)
        self.retry_after_s = retry_after_s


class ModelNotServed(StationmasterError):
    """No account of the bucket supports the model: retrying cannot help (unlike a 503)."""

    code = "model_not_served"
    status = 404

    def __init__(self, message: str, *, bucket: str, model: str, served: Sequence[str]) -> None:
        super().__init__(
            message, details={"bucket": bucket, "model": model, "served_models": list(served)}
        )
        self.bucket = bucket
        self.model = model
        self.served = list(served)


class SupervisorError(StationmasterError):
    """An essential actor crashed more often than the restart policy allows."""

    code = "supervisor_failed"

    def __init__(self, actor: str, message: str) -> None:
        super().__init__(f"{actor}: {message}", details={"actor": actor})
        self.actor = actor


class PreconditionRequired(StationmasterError):
    """A write that must be compare-and-set came without the version it expects."""

    code = "precondition_required"
    status = 428
