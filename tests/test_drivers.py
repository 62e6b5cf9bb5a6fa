"""One module per driver: only it imports the library that speaks to a store or the wire.

STYLE: "Only one module per store imports its driver; everything else talks to
those modules". Redis has two such modules (coredis for everything, hiredis for
the hot-path scripts), the data plane one (httptools), the control plane one
(hypercorn). import-linter does not look at third-party imports here, so this
test reads every module's imports itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWNERS = {
    "asyncpg": {"accounts/db.py"},
    "trio_asyncio": {"accounts/db.py"},
    "coredis": {"snapshot/redis.py"},
    "hiredis": {"snapshot/_resp.py"},
    # The data plane's server, the outbox's webhook client transport, and the
    # upstream simulator's server (a test and dev tool, not a store driver).
    "httptools": {
        "scheduler/http/wire.py",
        "scheduler/core/transport.py",
        "scheduler/upstream/simulator/_server.py",
    },
    "hypercorn": {"scheduler/http/server.py"},
}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_each_driver_is_imported_by_its_own_module_only():
    importers: dict[str, set[str]] = {name: set() for name in OWNERS}
    for package in ("accounts", "snapshot", "scheduler"):
        for path in (ROOT / package).rglob("*.py"):
            for name in _imported_roots(path) & OWNERS.keys():
                importers[name].add(str(path.relative_to(ROOT)))
    assert importers == OWNERS
