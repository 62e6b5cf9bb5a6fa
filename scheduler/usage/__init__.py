"""The quota usage prober: active usage reads that bring paused accounts back at reset.

Quota readings normally arrive with each reported response; a paused account
gets no traffic, so nothing refreshes its reading. The prober reads the usage
endpoints of subscription accounts (:mod:`.adapters`: Anthropic OAuth, OpenAI
Codex; no other platform has one) on a schedule (:mod:`.rules`: just after a
paused window's reset, often near a threshold, rarely when idle), within a
fleet-wide global and per-platform rate, one instance per account at a time
(:mod:`.store`), and writes what it reads through selection's write path, so
every instance selects with it. See :mod:`.prober` and :mod:`.service`.

May import ``selection`` (the runtime write path), ``upstream`` and ``core``.
"""

from .adapters import ADAPTERS, UsageAdapter, adapter_for, read_usage
from .errors import CannotProbe, ProbeBusy, ProbeRateLimited
from .install import install
from .model import ExtraWindow, UsageReport
from .prober import Prober, load_probeable
from .service import ProbeResult, UsageProbe, open_client
from .store import ProbeStore

__all__ = [
    "ADAPTERS",
    "CannotProbe",
    "ExtraWindow",
    "ProbeBusy",
    "ProbeRateLimited",
    "ProbeResult",
    "ProbeStore",
    "Prober",
    "UsageAdapter",
    "UsageProbe",
    "UsageReport",
    "adapter_for",
    "install",
    "load_probeable",
    "open_client",
    "read_usage",
]
