"""Selection over HTTP: select, release, renew (gateway) and explain (admin).

``POST /v1/select`` is the only answer that carries an account's decrypted
credentials, and only to a gateway token. Decrypted values are registered with
:func:`scheduler.core.logs.register_secret` the first time they are seen, so they
never reach a log line or an error message.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from accounts.crypto import Cipher
from accounts.errors import NoAccountAvailable
from accounts.model import Account, Kind, Platform
from accounts.rules import quota_pause
from accounts.validation import convert
from snapshot.keys import Bucket

from ..core.logs import register_secret
from ..selection.pool import verdict
from ..selection.reports import Outcome, Released, Renewed
from ..selection.scoring import Weights, score
from ..selection.select import SelectRequest
from ..selection.store import RuntimeState
from .endpoints import Call, Endpoint, Scope, error_response

# Decrypted credentials kept per ciphertext: Fernet costs tens of microseconds and
# the select answer is the hot path. Bounded so a churning fleet cannot grow it.
_CREDENTIALS_CACHE_MAX = 10_000


class SelectedAccount(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    platform: Platform
    kind: Kind
    base_url: str | None
    credentials: Any


class SelectAnswer(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: str
    # Epoch seconds (Redis server time); renew before it for long streams.
    lease_expires_at: float
    account: SelectedAccount
    sticky: bool
    path: str
    attempts: int
    waited_ms: int


class RenewBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ttl_s: float | None = None


class Credentials:
    """Decrypt-once cache of credential documents, every value registered as a secret."""

    def __init__(self, cipher: Cipher) -> None:
        self.cipher = cipher
        self._cache: dict[str, Any] = {}

    def get(self, account: Account) -> Any:
        token = account.credentials_enc
        if token is None:
            return None
        found = self._cache.get(token)
        if found is None:
            found = self.cipher.decrypt(token)
            register_secret(*_strings(found), msgspec.json.encode(found).decode())
            if len(self._cache) >= _CREDENTIALS_CACHE_MAX:
                self._cache.clear()
            self._cache[token] = found
        return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _services(call: Call) -> Any:
    s = call.services
    if getattr(s, "selector", None) is None:
        raise NoAccountAvailable(
            "selection is not running", bucket="", exclusions={}, retry_after_s=5
        )
    return s


async def select(call: Call) -> Any:
    s = _services(call)
    try:
        sel = await s.selector.select(call.body)
    except NoAccountAvailable as exc:
        return error_response(exc)
    account = sel.account
    return SelectAnswer(
        lease_id=sel.lease_id,
        lease_expires_at=sel.expires_at,
        account=SelectedAccount(
            id=account.id,
            name=account.name,
            platform=account.platform,
            kind=account.kind,
            base_url=account.base_url,
            credentials=s.credentials.get(account),
        ),
        sticky=sel.sticky,
        path=sel.path,
        attempts=sel.attempts,
        waited_ms=round(sel.waited_s * 1000),
    )


async def release(call: Call) -> Released:
    lease_id = call.request.path_params["lease_id"]
    released: Released = await _services(call).reporter.release(lease_id, call.body)
    return released


async def renew(call: Call) -> Renewed:
    lease_id = call.request.path_params["lease_id"]
    renewed: Renewed = await _services(call).reporter.renew(lease_id, call.body.ttl_s)
    return renewed


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    priority: int
    concurrency: int
    state: RuntimeState
    excluded: str | None
    why: str | None
    score: float | None
    load: float | None


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    bucket: str
    snapshot_version: int
    bindings: dict[str, str | None]
    exclusions: dict[str, int]
    candidates: list[Candidate]


def _explain_request(call: Call) -> SelectRequest:
    q = call.request.query_params
    data: dict[str, Any] = {k: q[k] for k in ("group", "platform", "model") if k in q}
    for key in ("session_hash", "previous_response_id"):
        if q.get(key):
            data[key] = q[key]
    if "exclude" in q:
        data["exclude"] = [x for x in q["exclude"].split(",") if x]
    return convert(data, SelectRequest)


async def explain(call: Call) -> Explanation:
    """Filter and score for a hypothetical request: every candidate, no lease taken."""
    s = _services(call)
    selector = s.selector
    req = _explain_request(call)
    cfg = selector.settings()
    snap = await selector.snapshot(Bucket(req.group, req.platform))
    ids = [a.id for a in snap.accounts]
    states = await selector.runtime.read_many(req.platform.value, ids)
    resp_key, sess_key = selector.binding_keys(req)
    keys = [k for k in (resp_key, sess_key) if k]
    bound = dict(zip(keys, await selector.runtime.bindings(keys), strict=True)) if keys else {}
    now = time.time()
    excluded = {a: "excluded_by_request" for a in req.exclude}
    passed = []
    candidates = {}
    for account in snap.accounts:
        state = states[account.id]
        reason = excluded.get(account.id)
        if reason is None:
            r = verdict(account, state, req.model, cfg, now)
            reason = r.value if r is not None else None
        why = quota_pause(account, state.windows, cfg.quota, now).why
        candidates[account.id] = (account, state, reason, why)
        if reason is None:
            passed.append((account, state, 0))
    scored = {x.account.id: x for x in score(passed, Weights.from_settings(cfg.scoring), now)}
    counts: dict[str, int] = {}
    out = []
    for account, state, reason, why in candidates.values():
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
        sc = scored.get(account.id)
        out.append(
            Candidate(
                id=account.id, name=account.name, priority=account.priority,
                concurrency=account.concurrency, state=state, excluded=reason, why=why,
                score=round(sc.score, 6) if sc else None, load=round(sc.load, 6) if sc else None,
            )
        )  # fmt: skip
    out.sort(key=lambda c: (c.score is None, -(c.score or 0.0)))
    return Explanation(
        bucket=str(snap.bucket),
        snapshot_version=snap.version,
        bindings={("response" if k == resp_key else "session"): v for k, v in bound.items()},
        exclusions=dict(sorted(counts.items())),
        candidates=out,
    )


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/select",
        select,
        "Pick an account and lease one of its concurrency slots",
        scope=Scope.GATEWAY,
        body=SelectRequest,
        response=SelectAnswer,
        errors=(404, 422, 503),
        tags=("selection",),
    ),
    Endpoint(
        "POST",
        "/v1/leases/{lease_id}/release",
        release,
        "Release a lease and report the request's outcome",
        scope=Scope.GATEWAY,
        body=Outcome,
        response=Released,
        errors=(404, 422),
        tags=("selection",),
    ),
    Endpoint(
        "POST",
        "/v1/leases/{lease_id}/renew",
        renew,
        "Extend a lease (long streams)",
        scope=Scope.GATEWAY,
        body=RenewBody,
        response=Renewed,
        errors=(404, 422),
        tags=("selection",),
    ),
    Endpoint(
        "GET",
        "/v1/admin/explain",
        explain,
        "Why would a request pick this account, or none: filter and scores, no lease taken",
        scope=Scope.ADMIN,
        response=Explanation,
        errors=(404, 422),
        tags=("selection",),
        query={
            "group": "group name (required)",
            "platform": "platform (required)",
            "model": "model name (required)",
            "session_hash": "optional session hash",
            "previous_response_id": "optional previous response id",
            "exclude": "optional comma-separated account ids",
        },
    ),
]


def install(services: Any) -> list[Any]:
    """Build the selection subsystem into ``services``; returns its actors (start in order).

    Uses the daemon's schedule view (``services.schedule``) and settings snapshot
    when they are wired; otherwise builds a view of its own (PostgreSQL fallback).
    """
    from snapshot.settings import DEFAULT_SETTINGS
    from snapshot.source import SqlSource
    from snapshot.view import ScheduleView
    from snapshot.watcher import ScheduleWatcher

    from ..selection.refresher import ViewRefresher
    from ..selection.reports import Reporter
    from ..selection.select import ReleaseWatcher, Selector

    actors: list[Any] = []
    schedule = getattr(services, "schedule", None)
    view = schedule.view if schedule is not None else None
    if view is None:
        view = ScheduleView(services.redis, SqlSource(services.db))
        actors.append(ScheduleWatcher(view))
    snapshot = getattr(services, "settings", None)
    settings = snapshot.get if snapshot is not None else (lambda: DEFAULT_SETTINGS)
    services.selector = Selector(services.redis, view, settings, metrics=services.metrics)
    services.reporter = Reporter(services.selector, settings, services.accounts)
    services.credentials = Credentials(Cipher(services.config.crypto))
    actors.append(ReleaseWatcher(services.selector))
    # Keeps the runtime view of active buckets fresh, so selects do not read it themselves.
    actors.append(ViewRefresher(services.selector))
    return actors
