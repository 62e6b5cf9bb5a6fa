"""Pure input rules: credential masking and import parsing (hypothesis, no servers)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounts.errors import ValidationFailed
from accounts.inputs import AccountCreate, mask_credentials, parse_import

leaf = st.one_of(st.text(max_size=60), st.integers(), st.booleans(), st.none(), st.floats())
documents = st.recursive(
    st.dictionaries(st.text(min_size=1, max_size=10), leaf, min_size=1, max_size=5),
    lambda inner: st.dictionaries(
        st.text(min_size=1, max_size=10), st.one_of(inner, st.lists(inner, max_size=3))
    ),
    max_leaves=12,
)


def string_leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in string_leaves(v)]
    if isinstance(value, list):
        return [s for v in value for s in string_leaves(v)]
    return [value] if isinstance(value, str) else []


def keys_of(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: keys_of(v) for k, v in value.items()}
    if isinstance(value, list):
        return [keys_of(v) for v in value]
    return None


@given(documents)
def test_mask_keeps_the_shape_and_hides_every_value(doc: dict[str, Any]) -> None:
    masked = mask_credentials(doc)
    assert keys_of(masked) == keys_of(doc)
    for out in string_leaves(masked):
        assert out == "****" or (out.startswith("****") and len(out) == 8)
    # No value long enough to be a secret survives anywhere in the masked leaves.
    shown = "\n".join(string_leaves(masked))
    for secret in string_leaves(doc):
        if len(secret) >= 12:
            assert secret not in shown


group = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
model = st.from_regex(r"[A-Za-z0-9_.:/@*+-]{1,20}", fullmatch=True)
creates = st.builds(
    dict,
    name=st.from_regex(r"[A-Za-z][A-Za-z0-9 _-]{0,20}", fullmatch=True).map(str.strip),
    platform=st.sampled_from(["openai", "anthropic", "gemini", "dashscope"]),
    groups=st.lists(group, min_size=1, max_size=4, unique=True),
    models=st.lists(model, max_size=4),
    priority=st.integers(-1000, 1000),
    concurrency=st.integers(1, 100),
    auto_pause_5h_threshold=st.one_of(st.none(), st.floats(0.01, 1.0)),
    schedulable=st.booleans(),
    credentials=st.fixed_dictionaries(
        {"api_key": st.from_regex(r"[A-Za-z0-9]{8,40}", fullmatch=True)}
    ),
)


def to_csv(rows: list[dict[str, Any]]) -> str:
    fields = [f for f in rows[0] if f != "credentials"] + ["credentials.api_key"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        cells = {k: v for k, v in r.items() if k != "credentials"}
        cells["groups"] = ";".join(r["groups"])
        cells["models"] = ";".join(r["models"])
        cells["schedulable"] = json.dumps(r["schedulable"])
        cells["auto_pause_5h_threshold"] = (
            "" if r["auto_pause_5h_threshold"] is None else repr(r["auto_pause_5h_threshold"])
        )
        cells["credentials.api_key"] = r["credentials"]["api_key"]
        writer.writerow(cells)
    return buf.getvalue()


@given(st.lists(creates.filter(lambda d: d["name"]), min_size=1, max_size=5))
def test_csv_and_json_imports_read_the_same_accounts(rows: list[dict[str, Any]]) -> None:
    from_json = parse_import(json.dumps(rows), "json")
    from_csv = parse_import(to_csv(rows), "csv")
    assert from_csv == from_json
    assert [msgspec.structs.asdict(c)["groups"] for c in from_json] == [r["groups"] for r in rows]


def test_import_reports_the_first_bad_row() -> None:
    """Bad inputs tried: a row that is not an object, a bad threshold, an empty file, not JSON."""
    good = {"name": "a", "platform": "openai", "groups": ["g"], "credentials": {"k": "v"}}
    with pytest.raises(ValidationFailed) as info:
        parse_import(json.dumps([good, good, "oops", {**good, "concurrency": 0}]), "json")
    assert info.value.message == "row 3: $: must be an object"
    assert info.value.details["row"] == 3
    with pytest.raises(ValidationFailed) as info:
        parse_import(json.dumps([good, {**good, "auto_pause_7d_threshold": 0}]), "json")
    assert info.value.message.startswith("row 2: auto_pause_7d_threshold: ")
    with pytest.raises(ValidationFailed, match="no accounts"):
        parse_import("[]", "json")
    with pytest.raises(ValidationFailed, match="not valid JSON"):
        parse_import("[{", "json")
    assert isinstance(parse_import(json.dumps([good]), "json")[0], AccountCreate)
