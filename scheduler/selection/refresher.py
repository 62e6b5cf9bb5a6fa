"""The view refresher: keeps active buckets' runtime view fresh, off the request path.

Reading a 500-account bucket's runtime state is one script call of 7 to 10 ms
(mostly reply parsing). Done inside the select that found the view stale, it
stalled one request per bucket every ``view_ttl_s``. This actor does it instead:
every ttl it re-reads each bucket selected from within :data:`ACTIVE_S`, then
rebuilds that bucket's pool caches, so the next select finds both up to date.
A select still reads for itself when the bucket was never loaded, its copy is
too old to trust (idle bucket, refresher down) or it must re-read before a 503
(see :meth:`scheduler.selection.view.RuntimeView.refresh`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel

from accounts.errors import StoreUnavailable

from ..core.logs import get_logger

if TYPE_CHECKING:
    from snapshot.keys import Bucket

    from .select import Selector

# A bucket nobody selected from for this long is left alone (its next select
# reads it if the copy is too old by then): idle buckets cost no Redis reads.
ACTIVE_S = 30.0
# Accounts per script call: a 500-account reply holds the loop ~7 ms while parsed,
# one of this size well under 1 ms, so selects run between the chunks.
CHUNK = 50

log = get_logger(__name__)


class ViewRefresher:
    """Actor: every ``view.ttl_s``, re-read the active buckets and rebuild their pool caches.

    Never crashes on Redis failures: a failed read leaves the old copy (the
    acquire script stays the authority) and is tried again next period.
    """

    name = "view-refresher"
    essential = False

    def __init__(self, selector: Selector, *, active_s: float = ACTIVE_S) -> None:
        self.selector = selector
        self.active_s = active_s
        self.rounds = 0
        # Whether the last read failed (Redis down): logs once per outage.
        self.failing = False

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.refresh_active()
            self.rounds += 1
            await trio.sleep(self.selector.view.ttl_s)

    async def refresh_active(self) -> None:
        """One period: every bucket selected from recently, re-read and rebuilt."""
        cutoff = time.monotonic() - self.active_s
        active = self.selector.active
        for bucket, used_at in list(active.items()):
            if used_at < cutoff:
                if active.get(bucket) == used_at:  # not selected again meanwhile
                    del active[bucket]
                continue
            try:
                await self._refresh(bucket)
            except StoreUnavailable as exc:
                if not self.failing:  # once per outage, not every period and bucket
                    log.warning(
                        "runtime view refresh failed", bucket=str(bucket), error=exc.message
                    )
                self.failing = True
                continue
            if self.failing:
                log.info("runtime view refresh works again", bucket=str(bucket))
                self.failing = False
            # Let requests in between buckets: each read and rebuild is CPU on the loop.
            await trio.lowlevel.checkpoint()

    async def _refresh(self, bucket: Bucket) -> None:
        sel = self.selector
        snap = sel.buckets.get(bucket)
        if snap is None or not snap.accounts:
            return
        view = sel.view
        # A select that re-read within half a period saves this one.
        await view.refresh(
            (bucket.group, bucket.platform.value),
            bucket.platform,
            [a.id for a in snap.accounts],
            force=False,
            max_age_s=view.ttl_s / 2,
            chunk=CHUNK,
        )
        cfg = sel.settings()
        now = sel.clock()
        for model in sel.pool_models(bucket):
            sel.pool(model, snap, cfg, now)
