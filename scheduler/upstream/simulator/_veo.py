"""Veo on the Gemini API (long-running operations), as ``upstream/veo.py`` reads it."""

from __future__ import annotations

from typing import Any

from ._common import Match, decode_body, json_response, number, split
from ._server import Request, Response
from ._state import SimTask, World

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


_RESPONSE_TYPE = (
    "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
)


class VeoSim:
    name = "gemini"

    def __init__(self, world: World) -> None:
        self.world = world

    def match(self, method: str, path: str) -> Match | None:
        parts = split(path)
        if parts[:2] != ["v1beta", "models"] or len(parts) < 3:
            return None
        if method == "POST" and len(parts) == 3 and parts[2].endswith(":predictLongRunning"):
            return "submit", self.submit, (parts[2].removesuffix(":predictLongRunning"),)
        if method == "GET" and len(parts) == 5 and parts[3] == "operations":
            return "fetch", self.fetch, (parts[2], parts[4])
        return None

    def account(self, req: Request) -> str | None:
        return req.headers.get("x-goog-api-key") or req.query.get("key") or None

    def error(
        self, world: World, status: int, code: Any, message: str, *, account: str | None
    ) -> Response:
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": code if isinstance(code, str) else _STATUS.get(status, "UNKNOWN"),
            }
        }
        headers = [("retry-after", f"{world.knobs.retry_after_s:g}")] if status == 429 else []
        return json_response(body, status, headers)

    def _bad(self, message: str) -> Response:
        return self.error(self.world, 400, None, message, account=None)

    def submit(self, req: Request, account: str, model: str) -> Response:
        body = decode_body(req)
        if body is None:
            return self._bad("Invalid JSON payload received.")
        instances, params = body.get("instances"), body.get("parameters") or {}
        if (
            not isinstance(instances, list)
            or len(instances) != 1
            or not isinstance(instances[0], dict)
        ):
            return self._bad("instances must hold exactly one instance")
        prompt = instances[0].get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return self._bad("instances[0].prompt is required")
        if not isinstance(params, dict):
            return self._bad("parameters must be an object")
        seconds = number(params.get("durationSeconds"), 8, 4, 8)
        samples = number(params.get("sampleCount"), 1, 1, 4)
        if seconds is None or samples is None:
            return self._bad("durationSeconds must be 4-8 and sampleCount 1-4")
        task = self.world.create_task(
            platform=self.name,
            account=account,
            kind="video",
            model=model,
            client_key=None,
            outputs=int(samples),
            seconds=seconds,
            params=params,
        )
        if self.world.rng.random() < self.world.knobs.submit_timeout_after_create_rate:
            return Response(hang=True)
        return json_response({"name": f"models/{model}/operations/{task.id}"})

    def fetch(self, req: Request, account: str, model: str, op_id: str) -> Response:
        task = self.world.find(self.name, account, op_id)
        if task is None or task.model != model:
            return self.error(self.world, 404, None, "Operation not found.", account=account)
        return json_response(self._operation(task, self.world.observe_fetch(task)))

    def _operation(self, task: SimTask, state: str) -> dict[str, Any]:
        op: dict[str, Any] = {"name": f"models/{task.model}/operations/{task.id}"}
        if state in ("pending", "running"):
            return op
        op["done"] = True
        if state == "failed":
            op["error"] = {"code": 13, "message": "Video generation failed.", "status": "INTERNAL"}
            return op
        made = task.produced()
        video: dict[str, Any] = {
            "generatedSamples": [
                {
                    "video": {
                        "uri": f"https://generativelanguage.example/files/{task.id}-{i}:download"
                    }
                }
                for i in range(made)
            ]
        }
        if made < task.outputs:
            video["raiMediaFilteredCount"] = task.outputs - made
            video["raiMediaFilteredReasons"] = ["The sample was filtered by the safety filters."]
        op["response"] = {
            "@type": _RESPONSE_TYPE,
            "generateVideoResponse": video,
        }
        return op
