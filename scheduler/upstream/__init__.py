"""Upstream platforms for asynchronous generation tasks, behind one narrow seam.

:func:`open_upstream` yields an :class:`Upstream` registry whose adapters (one
per platform: DashScope, Kling, ...) submit, fetch, cancel and look up tasks
over one shared ``httpx`` client, and classify every failure into the tree in
:mod:`scheduler.upstream.errors`. The simulator that speaks every adapter's
API lives in :mod:`scheduler.upstream.simulator`.

A capability: imports ``core`` only. ``tasks`` and ``usage`` call it.
"""

from ..core.config import UpstreamConfig, UpstreamPlatformConfig
from ._registry import Upstream, adapter_platforms, open_upstream
from .errors import Ambiguous, AuthFailed, RateLimited, Rejected, Transient, UpstreamError
from .model import Adapter, UpstreamRequest, UpstreamState, UpstreamStatus, UpstreamTask

__all__ = [
    "Adapter",
    "Ambiguous",
    "AuthFailed",
    "RateLimited",
    "Rejected",
    "Transient",
    "Upstream",
    "UpstreamConfig",
    "UpstreamError",
    "UpstreamPlatformConfig",
    "UpstreamRequest",
    "UpstreamState",
    "UpstreamStatus",
    "UpstreamTask",
    "adapter_platforms",
    "open_upstream",
]
