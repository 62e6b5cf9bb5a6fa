"""The wire's parsing, without sockets: any split of a pipelined burst gives the same requests."""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.http.wire import WireLimits, _Connection


class _Limits:
    limits = WireLimits()


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@st.composite
def _requests(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, str, str, bytes, dict[str, str]]]]:
    wire, expected = b"", []
    for _ in range(draw(st.integers(1, 5))):
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
        path = "/" + "/".join(draw(st.lists(_token, max_size=3)))
        query = draw(st.one_of(st.just(""), _token.map(lambda t: f"q={t}")))
        headers = {
            f"x-{k}": v for k, v in draw(st.dictionaries(_token, _token, max_size=4)).items()
        }
        body = draw(st.binary(max_size=300)) if method != "GET" else b""
        lines = [f"{method} {path}{'?' + query if query else ''} HTTP/1.1", "Host: t"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if method != "GET" and draw(st.booleans()):
            cut = draw(st.integers(0, len(body)))
            parts = [p for p in (body[:cut], body[cut:]) if p]
            framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
            lines.append("Transfer-Encoding: chunked")
        else:
            framed = body
            if method != "GET":
                lines.append(f"Content-Length: {len(body)}")
        wire += ("\r\n".join(lines) + "\r\n\r\n").encode() + framed
        expected.append((method, path, query, body, {"host": "t", **headers}))
    return wire, expected


@settings(max_examples=100, deadline=None)
@given(_requests(), st.lists(st.integers(1, 64), min_size=1, max_size=50))
def test_any_split_of_a_pipelined_burst_parses_to_the_same_requests(burst, sizes):
    """The parser callbacks keep state across reads: URL, fields and body may be cut anywhere."""
    wire, expected = burst
    conn = _Connection(None, _Limits())  # type: ignore[arg-type]  # parsing only: no socket
    chunks = []
    offset = 0
    while offset < len(wire):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(wire[offset : offset + size])
        offset += size

    async def feed() -> None:  # the callbacks read trio's clock
        for chunk in chunks:
            assert conn._feed(chunk) is None

    trio.run(feed)
    got = [
        (
            r.method,
            r.path,
            r.query,
            r.body,
            {
                k: v
                for k, v in r.headers.items()
                if k != "transfer-encoding" and k != "content-length"
            },
        )
        for r, _ in conn.ready
    ]
    assert got == expected
