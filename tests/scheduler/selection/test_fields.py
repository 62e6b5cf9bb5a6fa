"""Every name a Lua script uses for a hash field is declared once, in Python.

The runtime-state fields live in :mod:`scheduler.selection.fields`; the only
other lower-case words the scripts return are the snapshot's activation
outcomes (:class:`snapshot.schedule.PublishOutcome` and ``MOVED``), the field
names of a quota reading (:class:`accounts.model.QuotaWindow`, whose times
``release.lua`` rebases), the snapshot's ``seq`` hash, the usage prober's
probe record (``scheduler.usage.store.RECORD_FIELDS``) and Lua's type names. A misspelt field in a
script (``'rl_untill'``) would silently never match what Python writes: this
test reads every ``.lua`` file under ``scheduler/`` and ``snapshot/`` and fails
on any name-like string literal declared in neither place.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from accounts.model import QuotaWindow
from scheduler.selection import fields
from scheduler.usage.store import RECORD_FIELDS
from snapshot.keys import SEQ_EPOCH, SEQ_NUMBER
from snapshot.schedule import MOVED, PublishOutcome

from ...support import ROOT

LUA_FILES = sorted([*ROOT.glob("scheduler/**/*.lua"), *ROOT.glob("snapshot/**/*.lua")])
# A string literal that reads like a field name: lower case, digits, '_' and ':'.
_NAME = re.compile(r"^[a-z][a-z0-9_]*(:[a-z0-9]+)?$")
_LITERAL = re.compile(r"'([^'\\]*)'|\"([^\"\\]*)\"")
# Lua's own words a script may compare against (``type(x) == 'number'``).
LUA_WORDS = frozenset({"nil", "number", "string", "table", "boolean"})
DECLARED = (
    fields.STATE_FIELDS
    | {o.value for o in PublishOutcome}
    | {MOVED}
    # alloc.lua: the fields of a bucket's seq hash.
    | {SEQ_NUMBER, SEQ_EPOCH}
    # The usage prober's scripts: the fields of its probe record hash.
    | set(RECORD_FIELDS)
    # release.lua rebases a quota reading's times: the reading's own field names.
    | set(QuotaWindow.__struct_fields__)
    | LUA_WORDS
)


def names_in(text: str) -> set[str]:
    """Name-like string literals of a Lua source, comments left out."""
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    found = {a or b for a, b in _LITERAL.findall(code)}
    return {s for s in found if _NAME.match(s)}


def test_there_are_scripts_to_check() -> None:
    names = {p.name for p in LUA_FILES}
    assert {"acquire.lua", "release.lua", "activate.lua"} <= names


@pytest.mark.parametrize("script", LUA_FILES, ids=lambda p: p.name)
def test_every_field_name_in_a_script_is_declared(script: Path) -> None:
    undeclared = names_in(script.read_text()) - DECLARED
    assert not undeclared, f"{script.name} uses undeclared names {sorted(undeclared)}"


def test_the_check_catches_a_misspelt_field() -> None:
    source = "redis.call('HMGET', KEYS[2], 'rl_until', 'ol_untill') -- 'comment_ok'"
    assert names_in(source) - DECLARED == {"ol_untill"}


def test_the_scripts_use_the_deadline_fields() -> None:
    acquire = (ROOT / "scheduler/selection/acquire.lua").read_text()
    assert set(fields.DEADLINE_FIELDS) <= names_in(acquire)
