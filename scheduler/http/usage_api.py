"""Admin API: read one account's usage now (``POST /v1/admin/accounts/{id}/probe``).

Runs one probe through the same path the prober uses (the account's probe lock
and the probe rates apply; its schedule does not) and answers what it read: the
5h / 7d readings now stored for the account, extra windows (model-specific
weeks, shown only), the pause verdict with the new readings, and the result
(``ok``, ``cannot_probe``, ``auth_failed``, ``rate_limited``, ``failed``). A probe that
reached the upstream answers 200 whatever the upstream said; 404 for an unknown
account, 409 `not_probeable` for an account without a usage endpoint, 409 (with Retry-After)
while another probe holds the account, 429 (with Retry-After) while the probe
rates stay used up.
"""

from __future__ import annotations

from accounts.errors import StoreUnavailable

from ..usage import ProbeResult, UsageProbe
from .endpoints import Call, Endpoint, Scope


async def probe_account(call: Call) -> ProbeResult:
    usage: UsageProbe | None = call.services.usage
    if usage is None:
        raise StoreUnavailable("usage", "the usage prober is not set up on this instance")
    return await usage.probe_now(call.path_params["id"])


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/admin/accounts/{id}/probe",
        probe_account,
        "Read the account's usage now (OAuth accounts of anthropic and openai) and show it",
        scope=Scope.ADMIN,
        response=ProbeResult,
        errors=(404, 409, 422, 429),
        tags=("accounts",),
    ),
]
