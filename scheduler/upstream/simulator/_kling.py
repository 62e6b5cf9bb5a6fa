"""Kling's video API, as the adapter in ``upstream/kling.py`` reads it.

Tokens are verified for real: HS256 with the access key's secret (knob
``kling_secrets``, else :func:`default_secret`), ``exp`` and ``nbf`` against
the simulator's clock, so an adapter that does not regenerate its token before
expiry gets ``401 / 1004`` once the clock has moved past it.
"""

from __future__ import annotations

from typing import Any

import jwt

from ._common import Match, bearer, decode_body, json_response, number, split
from ._server import Request, Response
from ._state import SimTask, World

_STATUS = {
    "pending": "submitted",
    "running": "processing",
    "succeeded": "succeed",
    "failed": "failed",
    "cancelled": "failed",
}
# HTTP status -> Kling service code for the simulator's generic faults.
_CODES = {400: 1200, 401: 1000, 403: 1103, 404: 1203, 429: 1302, 500: 5000, 503: 5001, 504: 5002}
_STATUS_OF_CODE = {
    **{c: 401 for c in (1000, 1001, 1002, 1003, 1004)},
    **{c: 429 for c in (1100, 1101, 1102, 1302, 1303, 1304)},
    1103: 403,
    1200: 400,
    1201: 400,
    1202: 404,
    1203: 404,
    1300: 400,
    1301: 400,
    5000: 500,
    5001: 503,
    5002: 504,
}
ENDPOINTS = ("text2video", "image2video")
# Verified tokens remembered; beyond this many the cache starts over.
_VERIFIED_MAX = 10_000


def default_secret(access_key: str) -> str:
    """The secret of an access key the knobs do not list (at least 32 bytes, as HS256 wants)."""
    return f"sim-secret-{access_key}".ljust(32, ".")


def secret_for(world: World, access_key: str) -> str:
    return world.knobs.kling_secrets.get(access_key, default_secret(access_key))


class KlingSim:
    name = "kling"

    def __init__(self, world: World) -> None:
        self.world = world
        # token -> (access key, exp, nbf, secret it verified with): a client reuses a
        # token for its whole life, and HS256 verification is most of a fetch's cost.
        self._verified: dict[str, tuple[str, float, float, str]] = {}

    def match(self, method: str, path: str) -> Match | None:
        parts = split(path)
        if parts[:2] != ["v1", "videos"] or len(parts) < 3 or parts[2] not in ENDPOINTS:
            return None
        if method == "POST" and len(parts) == 3:
            return "submit", self.submit, (parts[2],)
        if method == "GET" and len(parts) == 4:
            return "fetch", self.fetch, (parts[2], parts[3])
        return None

    def account(self, req: Request) -> str | None:
        """The token's issuer, once its signature and times check out (else None: 401)."""
        token = bearer(req)
        if token is None:
            return None
        claims = self._verified.get(token)
        if claims is None or secret_for(self.world, claims[0]) != claims[3]:
            claims = self._verify(token)
            if claims is None:
                return None
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified.clear()
            self._verified[token] = claims
        access_key, exp, nbf, _secret = claims
        now = self.world.wall()
        # Times against the simulator's clock on every request, cached or not.
        return access_key if nbf <= now < exp else None

    def _verify(self, token: str) -> tuple[str, float, float, str] | None:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            access_key = unverified.get("iss")
            if not isinstance(access_key, str):
                return None
            secret = secret_for(self.world, access_key)
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                options={"verify_exp": False, "verify_nbf": False, "require": ["exp", "nbf"]},
            )
        except jwt.PyJWTError:
            return None
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            return None
        return access_key, float(exp), float(nbf), secret

    def error(
        self, world: World, status: int, code: Any, message: str, *, account: str | None
    ) -> Response:
        if isinstance(code, int):
            status = _STATUS_OF_CODE.get(code, status)
        else:
            code = _CODES.get(status, 5000)
        if status == 401 and message == "Invalid API-key provided.":
            message = "Authorization is invalid or has expired"
        body = {"code": code, "message": message, "request_id": world.new_id("req-")}
        headers = [("retry-after", f"{world.knobs.retry_after_s:g}")] if status == 429 else []
        return json_response(body, status, headers)

    def _bad(self, message: str, code: int = 1201) -> Response:
        return self.error(self.world, 400, code, message, account=None)

    def submit(self, req: Request, account: str, endpoint: str) -> Response:
        body = decode_body(req)
        if body is None:
            return self._bad("Request body is not valid JSON", 1200)
        prompt, image = body.get("prompt"), body.get("image")
        if endpoint == "text2video" and (not isinstance(prompt, str) or not prompt):
            return self._bad("prompt is required")
        if endpoint == "image2video" and (not isinstance(image, str) or not image):
            return self._bad("image is required")
        if isinstance(prompt, str) and len(prompt) > 2500:
            return self._bad("prompt must not exceed 2500 characters")
        seconds = number(body.get("duration"), 5, 3, 15)
        if seconds is None or body.get("mode", "std") not in ("std", "pro"):
            return self._bad("invalid duration or mode")
        external = body.get("external_task_id")
        if external is not None and not isinstance(external, str):
            return self._bad("external_task_id must be a string")
        if external and self.world.find_by_client(self.name, account, external) is not None:
            return self._bad("external_task_id already exists")
        task = self.world.create_task(
            platform=self.name,
            account=account,
            kind=endpoint,
            model=str(body.get("model_name") or "kling-v1"),
            client_key=external or None,
            outputs=1,
            seconds=seconds,
            params=body,
            task_id=str(8672837_00000000000 + len(self.world.tasks)),
        )
        if self.world.rng.random() < self.world.knobs.submit_timeout_after_create_rate:
            return Response(hang=True)
        return self._ok(self._record(task, "pending"))

    def fetch(self, req: Request, account: str, endpoint: str, ident: str) -> Response:
        task = self.world.find(self.name, account, ident)
        if task is None:
            task = self.world.find_by_client(self.name, account, ident)
        if task is None or task.kind != endpoint:
            return self._bad("Task not found")
        return self._ok(self._record(task, self.world.observe_fetch(task)))

    def _ok(self, data: dict[str, Any]) -> Response:
        return json_response(
            {"code": 0, "message": "SUCCEED", "request_id": self.world.new_id("req-"), "data": data}
        )

    def _record(self, task: SimTask, state: str) -> dict[str, Any]:
        created_ms = int((self.world.wall() - (self.world.now() - task.created)) * 1000)
        data: dict[str, Any] = {
            "task_id": task.id,
            "task_status": _STATUS[state],
            "task_info": {"external_task_id": task.client_key or ""},
            "created_at": created_ms,
            "updated_at": int(self.world.wall() * 1000),
        }
        if state == "failed":
            data["task_status_msg"] = "Failure to pass the risk control system"
        if state == "succeeded":
            data["task_status_msg"] = ""
            data["final_unit_deduction"] = str(task.seconds / 5)
            data["task_result"] = {
                "videos": [
                    {
                        "id": f"v-{task.id}",
                        "url": f"https://kling-result.example/{task.id}.mp4",
                        "duration": f"{task.seconds + 0.042:.3f}",
                    }
                ]
            }
        return data
