"""Alibaba DashScope (Model Studio) asynchronous tasks: Wan video and image synthesis.

Shapes (recorded in ``tests/upstream/fixtures/dashscope_*.json`` with sources):

* submit ``POST /api/v1/services/aigc/video-generation/video-synthesis`` (video) or
  ``/api/v1/services/aigc/text2image/image-synthesis`` (image), header
  ``X-DashScope-Async: enable``, body ``{model, input: {prompt, ...},
  parameters: {size, duration, n, ...}}``; answer ``{request_id, output:
  {task_id, task_status}}``.
* fetch ``GET /api/v1/tasks/{task_id}``: ``output.task_status`` one of PENDING,
  RUNNING, SUCCEEDED, FAILED, CANCELED, UNKNOWN (invalid or expired id: task
  data is kept about 24 h); video ``output.video_url``, image ``output.results``
  (each ``{url}`` or ``{code, message}``), ``output.task_metrics`` {TOTAL,
  SUCCEEDED, FAILED}; failures ``output.code`` / ``output.message``; ``usage``
  {video_duration | output_video_duration | duration, video_count, image_count}.
  A multi-output job reports SUCCEEDED when only some outputs succeeded: the
  final cost follows ``usage`` / the outputs that exist, never the request.
* cancel ``POST /api/v1/tasks/{task_id}/cancel``, only while PENDING (else
  ``400 UnsupportedOperation``).
* errors: HTTP status + ``{request_id, code, message}``; 429 ``Throttling*``,
  401 ``InvalidApiKey``, 403 ``AccessDenied*``, 400 ``Arrearage`` (an account in
  arrears: account-level, so AuthFailed), 400 ``InvalidParameter`` /
  ``DataInspectionFailed``, 500 ``InternalError``.
* the task query API is limited to about 20 QPS per account.

DashScope has no client-supplied task id, so a crashed submit cannot be found
again (``supports_lookup = False``); our task id travels in
``X-Client-Request-Id`` only for tracing (and the simulator's counters).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from accounts.model import Account

from ._common import Prices, as_float, base_url, credential, param_number
from ._http import Exchange, Reply
from .errors import AuthFailed, Rejected, UpstreamError
from .model import UpstreamRequest, UpstreamState, UpstreamStatus, UpstreamTask

PLATFORM = "dashscope"
DEFAULT_BASE_URL = "https://dashscope-intl.aliyuncs.com"
SUBMIT_PATHS = {
    "video": "/api/v1/services/aigc/video-generation/video-synthesis",
    "image": "/api/v1/services/aigc/text2image/image-synthesis",
}
_STATES = {
    "PENDING": UpstreamState.PENDING,
    "RUNNING": UpstreamState.RUNNING,
    "SUCCEEDED": UpstreamState.SUCCEEDED,
    "FAILED": UpstreamState.FAILED,
    "CANCELED": UpstreamState.CANCELLED,
    "UNKNOWN": UpstreamState.UNKNOWN,
}
# Request fields that go under `input`; everything else is a `parameters` entry.
_INPUT_FIELDS = frozenset(
    {"prompt", "negative_prompt", "img_url", "image_url", "audio_url", "ref_images_url"}
)
# Billing units are micro-USD; list prices per video second / per image (Model Studio).
BUILTIN_PRICES = {
    "wan2.1-t2v-turbo": 36_000,
    "wan2.1-t2v-plus": 100_000,
    "wan2.2-t2v-plus": 100_000,
    "wanx2.1-t2i-turbo": 20_000,
    "wanx2.1-t2i-plus": 30_000,
    "wan2.2-t2i-flash": 20_000,
}
KIND_PRICES = {"video": 100_000, "image": 30_000}
# DashScope's documented defaults: a 5 s video; image synthesis makes 4 images.
DEFAULT_DURATION_S = 5.0
DEFAULT_IMAGE_N = 4.0


class _Error(msgspec.Struct):
    code: str | None = None
    message: str | None = None


class _Result(msgspec.Struct):
    url: str | None = None
    code: str | None = None
    message: str | None = None


class _Output(msgspec.Struct):
    task_id: str | None = None
    task_status: str | None = None
    video_url: str | None = None
    results: list[_Result] = msgspec.field(default_factory=list)
    task_metrics: dict[str, int] | None = None
    code: str | None = None
    message: str | None = None


class _Answer(msgspec.Struct):
    output: _Output
    usage: dict[str, Any] | None = None
    request_id: str | None = None


class DashScope:
    """The DashScope adapter; one instance serves every DashScope account."""

    platform = PLATFORM
    supports_cancel = True
    supports_lookup = False
    poll_interval_s = 10.0
    qps_per_account: float | None = 20.0

    def __init__(self, exchange: Exchange, prices: Mapping[str, int] | None = None) -> None:
        self._x = exchange
        self._prices = Prices(BUILTIN_PRICES, KIND_PRICES, prices or {})

    def _headers(self, account: Account, credentials: Any) -> dict[str, str]:
        key = credential(PLATFORM, account, credentials, "api_key")
        return {"authorization": f"Bearer {key}"}

    async def submit(
        self, account: Account, credentials: Any, req: UpstreamRequest
    ) -> UpstreamTask:
        path = SUBMIT_PATHS.get(req.kind)
        if path is None:
            raise Rejected(f"kind `{req.kind}` is not supported", platform=PLATFORM)
        self.estimate_cost(req)  # validates the numeric parameters before anything is sent
        body = {
            "model": req.model,
            "input": {k: v for k, v in req.params.items() if k in _INPUT_FIELDS},
            "parameters": {k: v for k, v in req.params.items() if k not in _INPUT_FIELDS},
        }
        headers = self._headers(account, credentials)
        headers["x-dashscope-async"] = "enable"
        headers["x-client-request-id"] = req.task_id
        url = base_url(account, DEFAULT_BASE_URL) + path
        reply = await self._x.send(
            "POST", url, account_id=account.id, headers=headers, json=body, submit=True
        )
        if reply.status != 200:
            raise self._error(reply, account, submit=True)
        answer = self._x.decode(reply, _Answer, account_id=account.id, submit=True)
        state = _STATES.get(answer.output.task_status or "")
        if not answer.output.task_id or state is None:
            raise self._x.error(
                Reply(502, reply.headers, b""),
                "submit answer without task_id/task_status",
                account_id=account.id,
                submit=True,
            )
        return UpstreamTask(upstream_id=answer.output.task_id, state=state)

    async def fetch(self, account: Account, credentials: Any, upstream_id: str) -> UpstreamStatus:
        url = f"{base_url(account, DEFAULT_BASE_URL)}/api/v1/tasks/{upstream_id}"
        reply = await self._x.send(
            "GET", url, account_id=account.id, headers=self._headers(account, credentials)
        )
        if reply.status != 200:
            raise self._error(reply, account)
        answer = self._x.decode(reply, _Answer, account_id=account.id, submit=False)
        return status_from(answer, self.poll_interval_s)

    async def cancel(self, account: Account, credentials: Any, upstream_id: str) -> None:
        url = f"{base_url(account, DEFAULT_BASE_URL)}/api/v1/tasks/{upstream_id}/cancel"
        reply = await self._x.send(
            "POST", url, account_id=account.id, headers=self._headers(account, credentials)
        )
        if reply.status != 200:
            raise self._error(reply, account)

    async def lookup(self, account: Account, credentials: Any, task_id: str) -> UpstreamTask | None:
        raise Rejected("DashScope cannot find a task by the caller's id", platform=PLATFORM)

    def _units(self, req: UpstreamRequest) -> float:
        if req.kind == "image":
            return param_number(PLATFORM, req.params, "n", DEFAULT_IMAGE_N, lo=1, hi=16)
        seconds = param_number(PLATFORM, req.params, "duration", DEFAULT_DURATION_S, lo=1, hi=60)
        return seconds * param_number(PLATFORM, req.params, "n", 1, lo=1, hi=4)

    def estimate_cost(self, req: UpstreamRequest) -> int:
        return round(self._units(req) * self._prices.unit(req.kind, req.model))

    def final_cost(self, req: UpstreamRequest, status: UpstreamStatus) -> int:
        if status.state is not UpstreamState.SUCCEEDED:
            return 0
        produced = produced_units(req, status, self._units(req))
        unit = self._prices.unit(req.kind, req.model)
        # Never more than the estimate: the hold is the most a user can be charged.
        return min(round(produced * unit), self.estimate_cost(req))

    def _error(self, reply: Reply, account: Account, *, submit: bool = False) -> UpstreamError:
        try:
            err = msgspec.json.decode(reply.body, type=_Error)
        except (msgspec.DecodeError, msgspec.ValidationError):
            err = _Error()
        reason = f"{err.code or 'error'}: {err.message or ''}".strip(": ")
        if err.code == "Arrearage":
            return AuthFailed(
                f"HTTP {reply.status}: {reason}", platform=PLATFORM, account_id=account.id
            )
        return self._x.error(reply, reason, account_id=account.id, submit=submit)


def produced_units(req: UpstreamRequest, status: UpstreamStatus, asked: float) -> float:
    """Images made, or video seconds made, from usage; else from the outputs that exist."""
    outputs = float(len(status.result_urls))
    if req.kind == "image":
        return status.usage.get("image_count", outputs)
    count = status.usage.get("video_count", outputs)
    seconds = status.usage.get("video_duration")
    if seconds is None:  # no usage reported: each output at the requested length
        seconds = asked / max(1.0, float(req.params.get("n", 1) or 1))
    return seconds * count


def status_from(answer: _Answer, poll_after_s: float | None = None) -> UpstreamStatus:
    """Our status from a DashScope task answer (also used on recorded fixtures)."""
    out = answer.output
    state = _STATES.get(out.task_status or "", UpstreamState.UNKNOWN)
    urls = tuple(r.url for r in out.results if r.url)
    if out.video_url:
        urls = (out.video_url, *urls)
    usage = _usage(answer.usage or {}, out, urls)
    reason = None
    if state is UpstreamState.FAILED:
        reason = f"{out.code or 'failed'}: {out.message or ''}".strip(": ")
    elif state is UpstreamState.SUCCEEDED and _partial(out):
        failed = [r for r in out.results if not r.url]
        reason = f"partial: {len(failed)} of {len(out.results)} outputs failed"
    return UpstreamStatus(
        state=state,
        progress=100.0 if state.terminal else None,
        result_urls=urls,
        failure_reason=reason,
        usage=usage,
        poll_after_s=None if state.terminal else poll_after_s,
    )


def _partial(out: _Output) -> bool:
    metrics = out.task_metrics or {}
    return bool(metrics.get("FAILED")) or any(not r.url for r in out.results)


def _usage(raw: Mapping[str, Any], out: _Output, urls: tuple[str, ...]) -> dict[str, float]:
    usage: dict[str, float] = {}
    for ours, theirs in (
        ("video_duration", ("video_duration", "output_video_duration", "duration")),
        ("video_count", ("video_count",)),
        ("image_count", ("image_count",)),
    ):
        for name in theirs:
            value = as_float(raw.get(name))
            if value is not None:
                usage[ours] = value
                break
    if "image_count" not in usage and out.results:
        usage["image_count"] = float(len([r for r in out.results if r.url]))
    return usage
