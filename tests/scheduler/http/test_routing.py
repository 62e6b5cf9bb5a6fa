"""The framework-free router the data plane will route the Endpoint table with."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.http.routing import Match, NoRoute, Router

ROUTES = [
    ("POST", "/v1/select", "select"),
    ("POST", "/v1/leases/{lease_id}/release", "release"),
    ("POST", "/v1/leases/{lease_id}/renew", "renew"),
    ("GET", "/v1/admin/accounts/export", "export"),
    ("GET", "/v1/admin/accounts/{id}", "get"),
    ("PATCH", "/v1/admin/accounts/{id}", "patch"),
    ("GET", "/livez", "livez"),
]


def test_literal_templated_404_and_405():
    router = Router(ROUTES)
    assert router.match("POST", "/v1/select") == Match("select", {})
    assert router.match("POST", "/v1/leases/openai~g~a~1/release") == Match(
        "release", {"lease_id": "openai~g~a~1"}
    )
    # A literal segment declared first wins over a parameter, as in starlette.
    assert router.match("GET", "/v1/admin/accounts/export") == Match("export", {})
    assert router.match("GET", "/v1/admin/accounts/a%2Fb") == Match("get", {"id": "a/b"})
    assert router.match("HEAD", "/livez") == NoRoute(("GET",))
    assert router.match("GET", "/v1/select") == NoRoute(("POST",))
    assert router.match("DELETE", "/v1/admin/accounts/x") == NoRoute(("GET", "PATCH"))
    assert Router([("POST", "/x", 1), ("GET", "/x", 2)]).match("PUT", "/x") == NoRoute(
        ("GET", "POST")
    )
    for missing in ("/v1/leases//release", "/v1/leases/x/release/", "/nope", "", "/v1/select/"):
        assert router.match("POST", missing) == NoRoute(), missing


def test_declaring_a_route_twice_or_a_bad_parameter_fails_at_build():
    with pytest.raises(ValueError, match="twice"):
        Router([("GET", "/a", 1), ("GET", "/a", 2)])
    with pytest.raises(ValueError, match="identifier"):
        Router([("GET", "/a/{not-a-name}", 1)])


@given(st.text(min_size=1, max_size=40))
def test_any_segment_value_round_trips_through_percent_encoding(value):
    router = Router(ROUTES)
    found = router.match("POST", f"/v1/leases/{quote(value, safe='')}/renew")
    assert found == Match("renew", {"lease_id": value})
