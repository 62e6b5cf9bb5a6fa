"""Usage adapters: which accounts can be probed, and one read over HTTP, classified.

Probe-able accounts are OAuth (subscription) accounts of the platforms that
have a usage endpoint:

========== ===================================== ============================
platform   endpoint                              credentials fields
========== ===================================== ============================
anthropic  ``GET /api/oauth/usage``              ``access_token``
openai     ``GET /backend-api/wham/usage``       ``access_token``, ``account_id``
========== ===================================== ============================

Every other platform, and API-key accounts, have no usage endpoint: no probe
(their readings come only from response headers). A read answers a
:class:`~scheduler.usage.model.UsageReport` or raises one of
:mod:`scheduler.usage.errors`; nothing else escapes (no httpx error, no decode
error), and no message carries a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import trio

from accounts.model import Account, Kind
from accounts.retry import retry_after

from . import _anthropic, _codex
from ._parse import clip
from .errors import AuthFailed, CannotProbe, RateLimited, Transient
from .model import UsageReport

# An answer bigger than this is not a usage document (and not worth buffering).
MAX_BODY = 256 * 1024
# Connect phase of a probe: an unreachable upstream fails fast, whatever timeout_s says.
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class UsageAdapter:
    """One platform's usage endpoint."""

    platform: str
    url: Callable[[Account], str]
    # headers from the credentials document (CannotProbe when a field is missing)
    headers: Callable[[Account, Mapping[str, Any]], dict[str, str]]
    parse: Callable[[Any, float], UsageReport]
    error_message: Callable[[Any], str | None]


def _field(account: Account, credentials: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = credentials.get(name)
        if isinstance(value, str) and value:
            return value
    raise CannotProbe(
        f"account credentials lack `{names[0]}`",
        platform=str(account.platform),
        account_id=account.id,
    )


ADAPTERS: dict[str, UsageAdapter] = {
    "anthropic": UsageAdapter(
        "anthropic",
        _anthropic.url,
        lambda a, c: _anthropic.headers(_field(a, c, "access_token")),
        _anthropic.parse,
        _anthropic.error_message,
    ),
    "openai": UsageAdapter(
        "openai",
        _codex.url,
        lambda a, c: _codex.headers(
            _field(a, c, "access_token"), _field(a, c, "account_id", "chatgpt_account_id")
        ),
        _codex.parse,
        _codex.error_message,
    ),
}


def adapter_for(account: Account) -> UsageAdapter | None:
    """The account's usage adapter, or None when it has no usage endpoint."""
    if account.kind != Kind.OAUTH:
        return None
    return ADAPTERS.get(str(account.platform))


async def read_usage(
    adapter: UsageAdapter,
    client: httpx.AsyncClient,
    account: Account,
    credentials: Any,
    *,
    timeout_s: float,
    clock: Callable[[], float] = time.time,
) -> UsageReport:
    """One read of the account's usage; the readings are stamped ``clock()`` at the answer."""
    if not isinstance(credentials, Mapping):
        raise CannotProbe(
            "account has no readable credentials", platform=adapter.platform, account_id=account.id
        )
    request = client.build_request(
        "GET",
        adapter.url(account),
        headers=adapter.headers(account, credentials),
        timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
    )
    status, hdrs, body = await _exchange(client, request, adapter, account, timeout_s)
    now = clock()
    doc = _decode(body)
    if status == 200:
        try:
            return adapter.parse(doc, now)
        except ValueError as exc:
            raise Transient(
                f"unreadable usage answer: {exc}", platform=adapter.platform, account_id=account.id
            ) from None
    raise _classify(adapter, account, status, hdrs, doc, now)


async def _exchange(
    client: httpx.AsyncClient,
    request: httpx.Request,
    adapter: UsageAdapter,
    account: Account,
    timeout_s: float,
) -> tuple[int, httpx.Headers, bytes]:
    # One overall deadline: a body trickling in byte by byte cannot hold a probe slot.
    with trio.move_on_after(timeout_s + CONNECT_TIMEOUT_S):
        try:
            response = await client.send(request, stream=True)
            try:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise Transient(
                            "usage answer too large",
                            platform=adapter.platform,
                            account_id=account.id,
                        )
            finally:
                await response.aclose()
            return response.status_code, response.headers, body
        except httpx.HTTPError as exc:
            raise Transient(
                f"no usage answer ({type(exc).__name__})",
                platform=adapter.platform,
                account_id=account.id,
            ) from None
    raise Transient("no usage answer in time", platform=adapter.platform, account_id=account.id)


def _decode(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


def _classify(
    adapter: UsageAdapter,
    account: Account,
    status: int,
    headers: httpx.Headers,
    doc: Any,
    now: float,
) -> Exception:
    said = adapter.error_message(doc)
    msg = f"HTTP {status}" + (f": {clip(said)}" if said else "")
    where = {"platform": adapter.platform, "account_id": account.id}
    if status == 401:
        return AuthFailed(msg, **where)
    if status in (403, 404):
        # 403: the token lacks the scope (Anthropic: user:profile); 404: no usage route
        # at this base URL. Neither says anything is wrong with the account itself.
        return CannotProbe(msg, **where)
    if status == 429:
        until = retry_after(headers, now)
        return RateLimited(msg, **where, retry_after_s=None if until is None else until - now)
    return Transient(msg, **where)
