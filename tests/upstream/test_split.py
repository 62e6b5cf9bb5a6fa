"""The request target's fast path agrees with the parsed one (property test).

Guard checked (broken once, seen red): a fast path that kept a fragment
(``#`` added to the plain-target pattern) disagreed with urlsplit.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.upstream._http import _split, _split_parsed

_segment = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="/?"),
    max_size=12,
)


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=st.sampled_from(["127.0.0.1", "example.com", "dashscope-intl.aliyuncs.com"]),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    segments=st.lists(_segment, min_size=1, max_size=4),
    query=st.one_of(st.just(""), st.from_regex(r"\?[a-z0-9=&]{1,10}", fullmatch=True)),
)
def test_fast_and_parsed_split_agree(
    scheme: str, host: str, port: int | None, segments: list[str], query: str
) -> None:
    # (An empty query, "…?", is kept by the fast path and dropped by urlsplit: excluded.)
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}/" + "/".join(segments) + query
    assert _split(url, None) == _split_parsed(url, None)
