"""The sticky paths of selection: previous_response_id binding, then session binding.

A bound account passes the very same filter as the pool (:func:`accounts.rules.check`,
quota pause included) against the live local view, never the pool cache; a hard
failure deletes the binding (compare-and-delete: only if it still names that
account), a soft miss (full, rate-limited, overloaded, slow)
keeps it and lets the request spill over to the pool.
"""

from __future__ import annotations

from typing import Protocol

from accounts.model import Account
from accounts.rules import Reason, check, is_hard
from snapshot.schedule import BucketSnapshot
from snapshot.settings import Settings

from .bindings import BindingCache
from .model import Round, SelectRequest
from .store import RuntimeStore
from .view import RuntimeView


class Selector(Protocol):
    """What the sticky paths need of :class:`scheduler.selection.select.Selector`."""

    runtime: RuntimeStore
    view: RuntimeView
    bindings: BindingCache

    def binding_keys(self, req: SelectRequest) -> tuple[str | None, str | None]: ...

    def remember_binding(self, key: str, account_id: str | None) -> None: ...

    async def acquire(
        self,
        req: SelectRequest,
        cfg: Settings,
        rnd: Round,
        account: Account,
        path: str,
        bind_mode: int,
    ) -> Reason | None: ...


async def read_bindings(sel: Selector, keys: list[str]) -> dict[str, str | None]:
    """Bound account ids, from the local cache or one MGET for the missing ones."""
    found: dict[str, str | None] = {}
    missing = []
    for key in keys:
        live, account_id = sel.bindings.lookup(key)
        if live:
            found[key] = account_id
        else:
            missing.append(key)
    if missing:
        for key, value in zip(missing, await sel.runtime.bindings(missing), strict=True):
            found[key] = value
            sel.remember_binding(key, value)
    return found


async def try_sticky(
    sel: Selector, req: SelectRequest, snap: BucketSnapshot, cfg: Settings, rnd: Round, now: float
) -> bool:
    """Try the bound accounts in order; returns whether a session binding still stands."""
    resp_key, sess_key = sel.binding_keys(req)
    keys = [k for k in (resp_key, sess_key) if k is not None]
    if not keys:
        return False
    bound = await read_bindings(sel, keys)
    session_bound = sess_key is not None and bound.get(sess_key) is not None
    for path, key in (("response", resp_key), ("session", sess_key)):
        account_id = bound.get(key) if key is not None else None
        if account_id is None or account_id in rnd.excluded:
            continue
        reason = await _try_bound(sel, req, snap, cfg, rnd, now, account_id, path)
        if reason is None:
            return True
        rnd.sticky_reasons.append((path, reason))
        if is_hard(reason):
            assert key is not None
            # Only if it still names this account: another instance may have re-bound
            # the session since our (up to 2 s old) read. Either way, read it afresh next.
            await sel.runtime.unbind(key, account_id)
            sel.bindings.discard(key)
            session_bound = session_bound and key != sess_key
    return session_bound


async def _try_bound(
    sel: Selector,
    req: SelectRequest,
    snap: BucketSnapshot,
    cfg: Settings,
    rnd: Round,
    now: float,
    account_id: str,
    path: str,
) -> Reason | None:
    """Filter and acquire one bound account; None on success (``rnd.selection`` set)."""
    account = snap.by_id.get(account_id)
    if account is None:
        # Gone from the bucket's snapshot: disabled, in error, or moved. Hard.
        return Reason.DISABLED
    state = sel.view.get(account_id)
    reason = check(account, state, req.model, cfg.quota, now)
    if reason is None and state.ttft_ms is not None and state.ttft_ms > cfg.sticky.slow_ttft_ms:
        reason = Reason.SLOW
    if reason is None:
        reason = await sel.acquire(req, cfg, rnd, account, path, bind_mode=1)
    if reason is not None:
        rnd.excluded[account_id] = reason
    return reason
