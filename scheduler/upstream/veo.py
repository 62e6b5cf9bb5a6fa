"""Google Veo video generation on the Gemini API (platform ``gemini``): long-running operations.

Veo runs on the same API keys as Gemini chat, so a ``gemini`` account can serve
both; this adapter only carries the asynchronous video jobs.

Shapes (recorded in ``tests/upstream/fixtures/veo_*.json`` with sources):

* submit ``POST /v1beta/models/{model}:predictLongRunning``, header
  ``x-goog-api-key``, body ``{instances: [{prompt, image?}], parameters:
  {aspectRatio, durationSeconds, sampleCount, negativePrompt, resolution}}``;
  answer ``{name: "models/{model}/operations/{id}"}`` (a google.longrunning
  Operation).
* fetch ``GET /v1beta/{name}``: ``done`` absent/false while running; when done,
  either ``error`` (google.rpc.Status ``{code, message}``) or ``response.
  generateVideoResponse.generatedSamples[].video.uri`` with
  ``raiMediaFilteredCount`` / ``raiMediaFilteredReasons`` for samples removed by
  the safety filters (fewer samples than asked: partial success). An unknown
  operation answers 404 ``NOT_FOUND``.
* errors: ``{error: {code, message, status}}``; 400 INVALID_ARGUMENT /
  FAILED_PRECONDITION, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND,
  429 RESOURCE_EXHAUSTED, 500 INTERNAL, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED.
* no cancel and no lookup by a caller's id on the Gemini API (the operation name
  is the only handle, so an ambiguous submit cannot be recovered: it fails).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from accounts.model import Account

from ._common import Prices, base_url, credential, param_number
from ._http import Exchange, Reply
from .errors import AuthFailed, Rejected, UpstreamError
from .model import UpstreamRequest, UpstreamState, UpstreamStatus, UpstreamTask

PLATFORM = "gemini"
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
# Billing units are micro-USD per generated second (Gemini API list prices).
BUILTIN_PRICES = {
    "veo-3.0-generate-001": 400_000,
    "veo-3.0-fast-generate-001": 150_000,
    "veo-3.1-generate-preview": 400_000,
    "veo-3.1-fast-generate-preview": 150_000,
    "veo-2.0-generate-001": 350_000,
}
KIND_PRICES = {"video": 400_000}
DEFAULT_SECONDS = 8.0
_INSTANCE_FIELDS = frozenset({"prompt", "image", "lastFrame", "video", "referenceImages"})


class _Status(msgspec.Struct):
    code: int | None = None
    message: str | None = None
    status: str | None = None


class _Video(msgspec.Struct):
    uri: str | None = None


class _Sample(msgspec.Struct):
    video: _Video | None = None


class _VideoResponse(msgspec.Struct, rename="camel"):
    generated_samples: list[_Sample] = msgspec.field(default_factory=list)
    rai_media_filtered_count: int = 0
    rai_media_filtered_reasons: list[str] = msgspec.field(default_factory=list)


class _Response(msgspec.Struct, rename="camel"):
    generate_video_response: _VideoResponse | None = None


class _Operation(msgspec.Struct):
    name: str | None = None
    done: bool = False
    error: _Status | None = None
    response: _Response | None = None


class _ErrorBody(msgspec.Struct):
    error: _Status


class Veo:
    """The Veo adapter; one instance serves every ``gemini`` account."""

    platform = PLATFORM
    supports_cancel = False
    supports_lookup = False
    poll_interval_s = 10.0
    qps_per_account: float | None = None

    def __init__(self, exchange: Exchange, prices: Mapping[str, int] | None = None) -> None:
        self._x = exchange
        self._prices = Prices(BUILTIN_PRICES, KIND_PRICES, prices or {})

    def _headers(self, account: Account, credentials: Any) -> dict[str, str]:
        return {"x-goog-api-key": credential(PLATFORM, account, credentials, "api_key")}

    async def submit(
        self, account: Account, credentials: Any, req: UpstreamRequest
    ) -> UpstreamTask:
        if req.kind != "video" or not req.model.startswith("veo-"):
            raise Rejected(f"{req.kind} with {req.model} is not a Veo job", platform=PLATFORM)
        self.estimate_cost(req)  # validates the numbers before anything is sent
        instance = {k: v for k, v in req.params.items() if k in _INSTANCE_FIELDS}
        parameters = {k: v for k, v in req.params.items() if k not in _INSTANCE_FIELDS}
        url = f"{base_url(account, DEFAULT_BASE_URL)}/v1beta/models/{req.model}:predictLongRunning"
        reply = await self._x.send(
            "POST",
            url,
            account_id=account.id,
            headers=self._headers(account, credentials),
            json={"instances": [instance], "parameters": parameters},
            submit=True,
        )
        if reply.status != 200:
            raise self._error(reply, account, submit=True)
        op = self._x.decode(reply, _Operation, account_id=account.id, submit=True)
        if not op.name or "/operations/" not in op.name:
            raise self._x.error(
                Reply(502, reply.headers, b""),
                "answer without an operation name",
                account_id=account.id,
                submit=True,
            )
        state = _state(op)
        return UpstreamTask(upstream_id=op.name, state=state)

    async def fetch(self, account: Account, credentials: Any, upstream_id: str) -> UpstreamStatus:
        if "/operations/" not in upstream_id or upstream_id.startswith("/"):
            raise Rejected(f"not a Veo operation name: {upstream_id!r}", platform=PLATFORM)
        url = f"{base_url(account, DEFAULT_BASE_URL)}/v1beta/{upstream_id}"
        reply = await self._x.send(
            "GET", url, account_id=account.id, headers=self._headers(account, credentials)
        )
        if reply.status == 404:
            return UpstreamStatus(state=UpstreamState.UNKNOWN)
        if reply.status != 200:
            raise self._error(reply, account)
        op = self._x.decode(reply, _Operation, account_id=account.id, submit=False)
        return status_from(op, self.poll_interval_s)

    async def cancel(self, account: Account, credentials: Any, upstream_id: str) -> None:
        raise Rejected("Veo jobs on the Gemini API cannot be cancelled", platform=PLATFORM)

    async def lookup(self, account: Account, credentials: Any, task_id: str) -> UpstreamTask | None:
        raise Rejected(
            "the Gemini API cannot find an operation by the caller's id", platform=PLATFORM
        )

    def _seconds(self, req: UpstreamRequest) -> float:
        return param_number(PLATFORM, req.params, "durationSeconds", DEFAULT_SECONDS, lo=1, hi=60)

    def _samples(self, req: UpstreamRequest) -> float:
        return param_number(PLATFORM, req.params, "sampleCount", 1, lo=1, hi=4)

    def estimate_cost(self, req: UpstreamRequest) -> int:
        unit = self._prices.unit(req.kind, req.model)
        return round(self._seconds(req) * self._samples(req) * unit)

    def final_cost(self, req: UpstreamRequest, status: UpstreamStatus) -> int:
        if status.state is not UpstreamState.SUCCEEDED:
            return 0
        count = status.usage.get("video_count", float(len(status.result_urls)))
        unit = self._prices.unit(req.kind, req.model)
        return min(round(self._seconds(req) * count * unit), self.estimate_cost(req))

    def _error(self, reply: Reply, account: Account, *, submit: bool = False) -> UpstreamError:
        try:
            err = msgspec.json.decode(reply.body, type=_ErrorBody).error
        except (msgspec.DecodeError, msgspec.ValidationError):
            err = _Status()
        reason = f"{err.status or 'error'}: {err.message or ''}".strip(": ")
        if reply.status == 400 and "api key" in (err.message or "").lower():
            # Google answers a bad key with 400 INVALID_ARGUMENT: the account, not the request.
            return AuthFailed(f"HTTP 400: {reason}", platform=PLATFORM, account_id=account.id)
        return self._x.error(reply, reason, account_id=account.id, submit=submit)


def _state(op: _Operation) -> UpstreamState:
    if not op.done:
        return UpstreamState.RUNNING
    if op.error is not None:
        return UpstreamState.FAILED
    samples = _samples_of(op)
    return UpstreamState.SUCCEEDED if samples else UpstreamState.FAILED


def _samples_of(op: _Operation) -> list[str]:
    video = op.response.generate_video_response if op.response else None
    return [
        s.video.uri for s in (video.generated_samples if video else []) if s.video and s.video.uri
    ]


def status_from(op: _Operation, poll_after_s: float | None = None) -> UpstreamStatus:
    """Our status from a Veo operation (also used on recorded fixtures)."""
    state = _state(op)
    urls = tuple(_samples_of(op))
    video = op.response.generate_video_response if op.response else None
    reason = None
    if op.error is not None:
        reason = f"{op.error.status or op.error.code or 'error'}: {op.error.message or ''}".strip(
            ": "
        )
    elif video is not None and video.rai_media_filtered_count:
        why = "; ".join(video.rai_media_filtered_reasons) or "safety filter"
        what = "partial" if urls else "filtered"
        reason = f"{what}: {video.rai_media_filtered_count} sample(s) filtered ({why})"
    elif state is UpstreamState.FAILED:
        reason = "finished without a video"
    usage = {"video_count": float(len(urls))} if state is UpstreamState.SUCCEEDED else {}
    return UpstreamStatus(
        state=state,
        progress=100.0 if state.terminal else None,
        result_urls=urls,
        failure_reason=reason,
        usage=usage,
        poll_after_s=None if state.terminal else poll_after_s,
    )
