"""Kling video generation (text to video, image to video).

Shapes (recorded in ``tests/upstream/fixtures/kling_*.json`` with sources):

* auth: ``Authorization: Bearer <JWT>``, HS256 over ``{iss: access_key, exp:
  now + 1800, nbf: now - 5}`` signed with the secret key. We regenerate a token
  once less than :data:`TOKEN_MARGIN_S` of its life is left, so a request never
  leaves with a token about to expire.
* submit ``POST /v1/videos/text2video`` (``prompt``) or ``/v1/videos/image2video``
  (``image``), with ``model_name``, ``mode`` (std/pro), ``duration`` ("5"/"10"),
  ``external_task_id`` = OUR task id; answer envelope ``{code, message,
  request_id, data: {task_id, task_status, task_info: {external_task_id},
  created_at, updated_at}}``; ``code != 0`` is an error.
* fetch ``GET /v1/videos/{text2video|image2video}/{id}``, where ``id`` is the task
  id or our external_task_id ("choose one ... fill the value in the request
  path"); ``task_status`` submitted / processing / succeed / failed,
  ``task_status_msg``, ``task_result.videos[{id, url, duration}]``. An unknown id
  answers 400 with code 1201 "Task not found".
* errors (HTTP status, code): 401 1000-1004 auth; 429 1100-1102 account
  exception (arrears, resource pack depleted) and 403 1103 no access: account-
  level, AuthFailed; 400 1200/1201, 404 1202/1203, 400 1300/1301 (policy,
  content safety): Rejected; 429 1302 (too fast), 1303 (concurrency over the
  resource pack): RateLimited; 429 1304 IP whitelist: AuthFailed; 500 5000,
  503 5001, 504 5002: Transient.
* no cancel endpoint; the API imposes no query QPS limit (concurrency only).

The upstream id we hand out is ``"<endpoint>/<task_id>"`` (``text2video/86728…``)
because the query path depends on the endpoint that created the task.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import msgspec
from jwt.warnings import InsecureKeyLengthWarning

from accounts.model import Account

from ._common import Prices, as_float, base_url, credential, param_number
from ._http import Exchange, Reply, retry_after_s
from .errors import AuthFailed, RateLimited, Rejected, Transient, UpstreamError
from .model import UpstreamRequest, UpstreamState, UpstreamStatus, UpstreamTask

PLATFORM = "kling"
DEFAULT_BASE_URL = "https://api-singapore.klingai.com"
# The lifetime Kling's own example uses, and how long before its end we stop using it.
TOKEN_LIFETIME_S = 1800
TOKEN_MARGIN_S = 300
# Kling's example backdates nbf by 5 s for clock skew between us and them.
NBF_SKEW_S = 5
ENDPOINTS = ("text2video", "image2video")
_STATES = {
    "submitted": UpstreamState.PENDING,
    "processing": UpstreamState.RUNNING,
    "succeed": UpstreamState.SUCCEEDED,
    "failed": UpstreamState.FAILED,
}
# Billing units are micro-USD per video second: standard and professional mode.
BUILTIN_PRICES = {"std": 28_000, "pro": 98_000}
KIND_PRICES = {"video": 98_000}
_AUTH_CODES = frozenset({1000, 1001, 1002, 1003, 1004, 1100, 1101, 1102, 1103, 1304})
_RATE_CODES = frozenset({1302, 1303})
_NOT_FOUND_CODES = frozenset({1201, 1203})


class _Video(msgspec.Struct):
    url: str | None = None
    duration: str | float | None = None
    id: str | None = None


class _Result(msgspec.Struct):
    videos: list[_Video] = msgspec.field(default_factory=list)


class _Info(msgspec.Struct):
    external_task_id: str | None = None


class _Data(msgspec.Struct):
    task_id: str | None = None
    task_status: str | None = None
    task_status_msg: str | None = None
    task_info: _Info | None = None
    task_result: _Result | None = None
    final_unit_deduction: str | float | None = None


class _Envelope(msgspec.Struct):
    code: int
    message: str | None = None
    request_id: str | None = None
    data: _Data | None = None


class Tokens:
    """HS256 API tokens per (access key, secret key), regenerated before they expire."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # Keyed by a digest of both keys: a rotated secret must not reuse an old token.
        self._cache: dict[str, tuple[str, float]] = {}

    def token(self, access_key: str, secret_key: str) -> str:
        now = self._clock()
        key = hashlib.sha256(f"{access_key}\0{secret_key}".encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and cached[1] - now > TOKEN_MARGIN_S:
            return cached[0]
        exp = int(now) + TOKEN_LIFETIME_S
        payload = {"iss": access_key, "exp": exp, "nbf": int(now) - NBF_SKEW_S}
        with warnings.catch_warnings():
            # The secret's length is Kling's choice, not ours: no warning per token.
            # (Synchronous, so no other trio task runs while the filter is changed.)
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            token = jwt.encode(payload, secret_key, algorithm="HS256", headers={"typ": "JWT"})
        self._cache[key] = (token, float(exp))
        return token


class Kling:
    """The Kling adapter; one instance serves every Kling account."""

    platform = PLATFORM
    supports_cancel = False
    supports_lookup = True
    poll_interval_s = 10.0
    qps_per_account: float | None = None  # Kling limits concurrency, not queries

    def __init__(
        self,
        exchange: Exchange,
        prices: Mapping[str, int] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._x = exchange
        self._prices = Prices(BUILTIN_PRICES, KIND_PRICES, prices or {})
        self.tokens = Tokens(clock)

    def _headers(self, account: Account, credentials: Any) -> dict[str, str]:
        ak = credential(PLATFORM, account, credentials, "access_key")
        sk = credential(PLATFORM, account, credentials, "secret_key")
        return {"authorization": f"Bearer {self.tokens.token(ak, sk)}"}

    async def submit(
        self, account: Account, credentials: Any, req: UpstreamRequest
    ) -> UpstreamTask:
        if req.kind != "video":
            raise Rejected(f"kind `{req.kind}` is not supported", platform=PLATFORM)
        endpoint = "image2video" if req.params.get("image") else "text2video"
        self.estimate_cost(req)  # validates duration and mode before anything is sent
        body = {"model_name": req.model, **req.params, "external_task_id": req.task_id}
        body["duration"] = str(int(self._seconds(req)))
        url = f"{base_url(account, DEFAULT_BASE_URL)}/v1/videos/{endpoint}"
        headers = self._headers(account, credentials)
        reply = await self._x.send(
            "POST", url, account_id=account.id, headers=headers, json=body, submit=True
        )
        try:
            data = self._data(reply, account, submit=True)
        except Rejected:
            # A resubmit after an ambiguous one: the external id is taken. If the
            # task exists under our id, this submit has in fact already happened.
            existing = await self.lookup(account, credentials, req.task_id)
            if existing is None:
                raise
            return existing
        return self._task(data, endpoint, account)

    def _task(self, data: _Data | None, endpoint: str, account: Account) -> UpstreamTask:
        state = _STATES.get((data and data.task_status) or "")
        if data is None or not data.task_id or state is None:
            raise Transient(
                "answer without task_id/task_status", platform=PLATFORM, account_id=account.id
            )
        return UpstreamTask(upstream_id=f"{endpoint}/{data.task_id}", state=state)

    async def fetch(self, account: Account, credentials: Any, upstream_id: str) -> UpstreamStatus:
        endpoint, _, task_id = upstream_id.partition("/")
        if endpoint not in ENDPOINTS or not task_id:
            raise Rejected(f"not a Kling upstream id: {upstream_id!r}", platform=PLATFORM)
        data = await self._get(account, credentials, endpoint, task_id)
        if data is None:
            return UpstreamStatus(state=UpstreamState.UNKNOWN)
        return status_from(data, self.poll_interval_s)

    async def _get(
        self, account: Account, credentials: Any, endpoint: str, task_id: str
    ) -> _Data | None:
        url = f"{base_url(account, DEFAULT_BASE_URL)}/v1/videos/{endpoint}/{task_id}"
        reply = await self._x.send(
            "GET", url, account_id=account.id, headers=self._headers(account, credentials)
        )
        try:
            return self._data(reply, account)
        except Rejected as exc:
            if exc.details.get("code") in _NOT_FOUND_CODES:
                return None
            raise

    async def cancel(self, account: Account, credentials: Any, upstream_id: str) -> None:
        raise Rejected("Kling tasks cannot be cancelled", platform=PLATFORM, account_id=account.id)

    async def lookup(self, account: Account, credentials: Any, task_id: str) -> UpstreamTask | None:
        for endpoint in ENDPOINTS:
            data = await self._get(account, credentials, endpoint, task_id)
            if data is not None:
                return self._task(data, endpoint, account)
        return None

    def _seconds(self, req: UpstreamRequest) -> float:
        return param_number(PLATFORM, req.params, "duration", 5, lo=1, hi=15)

    def _unit(self, req: UpstreamRequest) -> int:
        mode = str(req.params.get("mode", "std"))
        if mode not in ("std", "pro"):
            raise Rejected("params.mode: must be std or pro", platform=PLATFORM)
        return self._prices.unit(req.kind, f"{req.model}:{mode}", req.model, mode)

    def estimate_cost(self, req: UpstreamRequest) -> int:
        return round(self._seconds(req) * self._unit(req))

    def final_cost(self, req: UpstreamRequest, status: UpstreamStatus) -> int:
        if status.state is not UpstreamState.SUCCEEDED:
            return 0
        seconds = status.usage.get("video_duration")
        if seconds is None:
            seconds = self._seconds(req) * len(status.result_urls)
        # Kling bills the requested length (5.04 s delivered is a 5 s video); never
        # more than the estimate.
        return min(round(seconds * self._unit(req)), self.estimate_cost(req))

    def _data(self, reply: Reply, account: Account, *, submit: bool = False) -> _Data | None:
        try:
            env = msgspec.json.decode(reply.body, type=_Envelope)
        except (msgspec.DecodeError, msgspec.ValidationError):
            if reply.status == 200:
                self._x.decode(reply, _Envelope, account_id=account.id, submit=submit)
            raise self._x.error(
                reply, "unreadable error body", account_id=account.id, submit=submit
            ) from None
        if reply.status == 200 and env.code == 0:
            return env.data
        raise self._error(reply, env, account, submit)

    def _error(self, reply: Reply, env: _Envelope, account: Account, submit: bool) -> UpstreamError:
        code = env.code
        msg = f"HTTP {reply.status} code {code}: {env.message or ''}".rstrip(": ")
        err: UpstreamError
        if code in _AUTH_CODES:
            err = AuthFailed(msg, platform=PLATFORM, account_id=account.id)
        elif code in _RATE_CODES:
            wait = retry_after_s(reply.headers)
            err = RateLimited(msg, platform=PLATFORM, account_id=account.id, retry_after_s=wait)
        elif 1200 <= code < 1400:
            err = Rejected(msg, platform=PLATFORM, account_id=account.id)
        else:  # 5000-5002 and anything unknown: the generic reading of the HTTP status
            err = self._x.error(reply, msg, account_id=account.id, submit=submit)
            if reply.status < 500 and code >= 5000:
                err = Transient(msg, platform=PLATFORM, account_id=account.id)
        err.details["code"] = code  # lets fetch and lookup tell "not found"
        return err


def status_from(data: _Data, poll_after_s: float | None = None) -> UpstreamStatus:
    """Our status from a Kling task record (also used on recorded fixtures)."""
    state = _STATES.get(data.task_status or "", UpstreamState.UNKNOWN)
    videos = data.task_result.videos if data.task_result else []
    urls = tuple(v.url for v in videos if v.url)
    usage: dict[str, float] = {}
    if state is UpstreamState.SUCCEEDED:
        usage["video_count"] = float(len(urls))
        seconds = [as_float(v.duration) for v in videos if v.url]
        if seconds and all(s is not None for s in seconds):
            usage["video_duration"] = float(sum(s for s in seconds if s is not None))
        units = as_float(data.final_unit_deduction)
        if units is not None:
            usage["kling_units"] = units
    return UpstreamStatus(
        state=state,
        progress=100.0 if state.terminal else None,
        result_urls=urls,
        failure_reason=(data.task_status_msg or "failed")
        if state is UpstreamState.FAILED
        else None,
        usage=usage,
        poll_after_s=None if state.terminal else poll_after_s,
    )
