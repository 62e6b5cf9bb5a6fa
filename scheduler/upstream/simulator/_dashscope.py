"""DashScope's asynchronous task API, as the adapter in ``upstream/dashscope.py`` reads it."""

from __future__ import annotations

import time
from typing import Any

from ._common import Match, bearer, decode_body, json_response, number, split
from ._server import Request, Response
from ._state import SimTask, World

_STATUS = {
    "pending": "PENDING",
    "running": "RUNNING",
    "succeeded": "SUCCEEDED",
    "failed": "FAILED",
    "cancelled": "CANCELED",
}
_SUBMIT = {
    ("services", "aigc", "video-generation", "video-synthesis"): "video",
    ("services", "aigc", "image2video", "video-synthesis"): "video",
    ("services", "aigc", "text2image", "image-synthesis"): "image",
}
_ERROR_CODES = {
    400: "InvalidParameter",
    401: "InvalidApiKey",
    403: "AccessDenied",
    404: "ModelNotFound",
    429: "Throttling.RateQuota",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def _stamp(at: float) -> str:
    # DashScope writes "2025-07-27 21:05:15.212" (local time of the region).
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


class DashScopeSim:
    name = "dashscope"

    def __init__(self, world: World) -> None:
        self.world = world

    def match(self, method: str, path: str) -> Match | None:
        parts = split(path)
        if parts[:2] != ["api", "v1"]:
            return None
        rest = tuple(parts[2:])
        if method == "POST" and rest in _SUBMIT:
            return "submit", self.submit, (_SUBMIT[rest],)
        if len(rest) == 2 and rest[0] == "tasks" and method == "GET":
            return "fetch", self.fetch, (rest[1],)
        if len(rest) == 3 and rest[0] == "tasks" and rest[2] == "cancel" and method == "POST":
            return "cancel", self.cancel, (rest[1],)
        return None

    def account(self, req: Request) -> str | None:
        return bearer(req)

    def error(
        self, world: World, status: int, code: Any, message: str, *, account: str | None
    ) -> Response:
        body = {
            "request_id": world.new_id("req-"),
            "code": code or _ERROR_CODES.get(status, "InternalError"),
            "message": message,
        }
        headers = []
        if status == 429:
            headers.append(("retry-after", f"{world.knobs.retry_after_s:g}"))
        return json_response(body, status, headers)

    def _bad(self, message: str, code: str = "InvalidParameter") -> Response:
        return self.error(self.world, 400, code, message, account=None)

    def submit(self, req: Request, account: str, kind: str) -> Response:
        if req.headers.get("x-dashscope-async", "").lower() != "enable":
            return self.error(
                self.world,
                403,
                "AccessDenied",
                "current user api does not support synchronous calls",
                account=account,
            )
        body = decode_body(req)
        if body is None:
            return self._bad("Request body is not valid JSON.")
        model, inp = body.get("model"), body.get("input")
        params = body.get("parameters") or {}
        if not isinstance(model, str) or not model:
            return self._bad(
                'Required parameter "model" missing from request.', "BadRequest.EmptyModel"
            )
        if not isinstance(inp, dict) or not isinstance(inp.get("prompt"), str) or not inp["prompt"]:
            return self._bad("Field required: input.prompt", "BadRequest.EmptyInput")
        if not isinstance(params, dict):
            return self._bad("parameters must be an object")
        if kind == "image":
            n = number(params.get("n"), 4, 1, 4)
            seconds = 0.0
        else:
            n = number(params.get("n"), 1, 1, 1)
            seconds = number(params.get("duration"), 5, 1, 15) or 0.0
        if n is None or (kind == "video" and not seconds):
            return self._bad("Invalid parameter: n or duration out of range")
        task = self.world.create_task(
            platform=self.name,
            account=account,
            kind=kind,
            model=model,
            client_key=req.headers.get("x-client-request-id"),
            outputs=int(n),
            seconds=seconds,
            params=params,
        )
        if self.world.rng.random() < self.world.knobs.submit_timeout_after_create_rate:
            return Response(hang=True)
        return json_response(
            {
                "request_id": self.world.new_id("req-"),
                "output": {"task_status": "PENDING", "task_id": task.id},
            }
        )

    def fetch(self, req: Request, account: str, task_id: str) -> Response:
        task = self.world.find(self.name, account, task_id)
        if task is None:
            output: dict[str, Any] = {"task_id": task_id, "task_status": "UNKNOWN"}
            return json_response({"request_id": self.world.new_id("req-"), "output": output})
        state = self.world.observe_fetch(task)
        return json_response(self._answer(task, state))

    def _answer(self, task: SimTask, state: str) -> dict[str, Any]:
        wall = self.world.wall() - (self.world.now() - task.created)
        output: dict[str, Any] = {
            "task_id": task.id,
            "task_status": _STATUS[state],
            "submit_time": _stamp(wall),
            "scheduled_time": _stamp(wall + (task.running_at - task.created)),
        }
        answer: dict[str, Any] = {"request_id": self.world.new_id("req-"), "output": output}
        if state == "failed":
            output.update(code="InternalError.Algo", message="Inner error: generation failed.")
        if state != "succeeded":
            return answer
        output["end_time"] = _stamp(wall + ((task.done_at or task.created) - task.created))
        made = task.produced()
        if task.kind == "video":
            output["video_url"] = f"https://dashscope-result.example/{task.id}.mp4"
            answer["usage"] = {"video_duration": task.seconds, "video_count": 1, "SR": 720}
            return answer
        output["results"] = [
            {"url": f"https://dashscope-result.example/{task.id}-{i}.png"} for i in range(made)
        ] + [
            {"code": "InternalError.Algo", "message": "output generation failed"}
            for _ in range(task.outputs - made)
        ]
        output["task_metrics"] = {
            "TOTAL": task.outputs,
            "SUCCEEDED": made,
            "FAILED": task.outputs - made,
        }
        answer["usage"] = {"image_count": made}
        return answer

    def cancel(self, req: Request, account: str, task_id: str) -> Response:
        task = self.world.find(self.name, account, task_id)
        if task is None:
            return self.error(
                self.world, 400, "UnsupportedOperation", "The task does not exist.", account=account
            )
        task.cancels += 1
        if task.state(self.world.now()) != "pending":
            return self.error(
                self.world,
                400,
                "UnsupportedOperation",
                "Failed to cancel the task, please confirm if the task is in PENDING status.",
                account=account,
            )
        task.cancelled_at = self.world.now()
        return json_response({"request_id": self.world.new_id("req-")})
