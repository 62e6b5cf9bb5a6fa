"""One delivery attempt: the Standard Webhooks body and signature, one POST, its answer.

The body is ``{"type", "timestamp", "data"}`` (the Standard Webhooks payload
shape) with the event's *creation* time, so every attempt of one event sends the
same bytes; ``webhook-id`` is the event key, the same on every attempt, which is
what lets a receiver drop the duplicate a crash between delivery and commit can
cause. Only ``webhook-timestamp`` (and so the signature) changes per attempt, as
the convention asks: receivers reject stale timestamps to stop replays.

Nothing here raises for a receiver's behaviour: timeouts, refused connections,
garbage answers all become an :class:`Answer`. The destination URL and the
secret never appear in an Answer's error text (a URL may carry a token).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import msgspec
import trio
from standardwebhooks.webhooks import Webhook

from ._rules import parse_retry_after
from ._store import Claim

# Enough of a receiver's answer to show an operator why it failed.
_BODY_SNIPPET = 200
_USER_AGENT = "stationmaster-webhooks/1"


@dataclass(frozen=True, slots=True)
class Answer:
    """How an attempt ended: an HTTP status, or no answer (``status_code`` None)."""

    status_code: int | None
    error: str | None = None
    retry_after_s: float | None = None
    # The request can never succeed (malformed URL, unsupported scheme).
    unrecoverable: bool = False


class Signer:
    """Standard Webhooks signing with one ``whsec_`` secret (the ``standardwebhooks`` package)."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)

    def headers(self, msg_id: str, body: str, now: datetime) -> dict[str, str]:
        # Whole seconds: the header is an integer and the signature covers it.
        stamp = datetime.fromtimestamp(int(now.timestamp()), tz=UTC)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": self._webhook.sign(msg_id, stamp, body),
        }


def render_body(claim: Claim) -> str:
    return msgspec.json.encode(
        {"type": claim.type, "timestamp": claim.created_at, "data": claim.payload}
    ).decode()


async def deliver(
    client: httpx.AsyncClient, signer: Signer, claim: Claim, *, timeout_s: float
) -> Answer:
    """POST the event to its destination; the whole attempt is bounded by ``timeout_s``.

    The bound is on the whole attempt, not per read: a receiver that trickles
    bytes must not hold a slot longer than one that hangs.
    """
    body = render_body(claim)
    now = datetime.now(UTC)
    headers = {
        **signer.headers(claim.event_key, body, now),
        "content-type": "application/json",
        "user-agent": _USER_AGENT,
    }
    try:
        with trio.fail_after(timeout_s):
            return await _post(client, claim.destination, body, headers, now)
    except trio.TooSlowError:
        return Answer(None, f"no answer within {timeout_s:g}s")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        return Answer(None, f"invalid destination ({type(exc).__name__})", unrecoverable=True)
    except httpx.TransportError as exc:
        # Type name only: httpx messages can quote the URL.
        return Answer(None, f"connection failed ({type(exc).__name__})")


@functools.lru_cache(maxsize=4096)
def _url(destination: str) -> httpx.URL:
    # Parsing a URL is a fifth of httpx's cost per request; destinations repeat.
    return httpx.URL(destination)


async def _post(
    client: httpx.AsyncClient, url: str, body: str, headers: dict[str, str], now: datetime
) -> Answer:
    # A prepared Request through client.send(): skips merging client defaults
    # (none are set) in build_request. The transport reads at most a small answer
    # (see core.transport.TrioTransport).
    request = httpx.Request("POST", _url(url), headers=headers, content=body.encode())
    response = await client.send(request)
    code = response.status_code
    if 200 <= code < 300:
        return Answer(code)
    text = response.content[:_BODY_SNIPPET].decode("utf-8", errors="replace")
    return Answer(
        code,
        f"HTTP {code}: {text}" if text else f"HTTP {code}",
        retry_after_s=parse_retry_after(response.headers.get("retry-after"), now),
    )
