"""The integration tier's probe requests and the outcomes it accepts, TCP mode included."""

from __future__ import annotations

import json

import pytest
from mesh_probe import (
    ALLOWED,
    CONNECTED,
    FORBIDDEN,
    REFUSED,
    ProbeResult,
    Request,
    case,
    format_table,
    tcp_case,
)


def result(outcome: str, status: int | None = None, method: str | None = "GET") -> ProbeResult:
    return ProbeResult.from_dict(
        {"url": "x", "method": method, "outcome": outcome, "status": status, "error": None}
    )


def test_a_tcp_request_is_sent_without_a_method():
    item = tcp_case("outsider/0", "modeloperator.m.svc.cluster.local", 17071, CONNECTED)

    assert item.request.to_dict() == {
        "url": "tcp://modeloperator.m.svc.cluster.local:17071",
        "timeout": 5.0,
    }
    assert item.describe() == "outsider/0 TCP tcp://modeloperator.m.svc.cluster.local:17071"


def test_an_http_request_is_sent_with_its_method():
    item = case("sender1/0", "http://receiver1:8080/foo", FORBIDDEN, method="DELETE")

    assert json.loads(json.dumps(item.request.to_dict())) == {
        "url": "http://receiver1:8080/foo",
        "method": "DELETE",
        "timeout": 5.0,
    }


def test_the_tester_s_tcp_result_parses_with_a_null_method():
    parsed = result("connected", method=None)

    assert (parsed.method, parsed.outcome, parsed.status) == (None, "connected", None)


def test_an_unknown_outcome_is_refused():
    with pytest.raises(ValueError, match="unknown outcome"):
        result("maybe")


@pytest.mark.parametrize(
    ("expected", "outcome", "status", "matches"),
    [
        (CONNECTED, "connected", None, True),
        (CONNECTED, "reset", None, False),
        (CONNECTED, "response", 200, False),
        (REFUSED, "refused", None, True),
        (REFUSED, "reset", None, True),
        (REFUSED, "connected", None, False),
        (REFUSED, "timeout", None, False),
        (ALLOWED, "response", 200, True),
        (ALLOWED, "response", 403, False),
        (FORBIDDEN, "response", 403, True),
        (FORBIDDEN, "refused", None, False),
    ],
)
def test_expectations(expected, outcome: str, status: int | None, matches: bool):
    assert expected.matches(result(outcome, status)) is matches


def test_the_failure_table_marks_the_mismatches():
    rows = [
        (case("a/0", "http://b:8080/foo", ALLOWED), result("response", 200)),
        (case("a/0", "http://b:8080/bar/", ALLOWED), result("refused")),
    ]

    lines = format_table(rows).splitlines()

    assert lines[0].startswith("   a/0 GET http://b:8080/foo")
    assert lines[1].startswith("!! a/0 GET http://b:8080/bar/")


def test_requests_default_to_get_with_five_seconds():
    assert Request(url="http://b/").to_dict() == {
        "url": "http://b/",
        "method": "GET",
        "timeout": 5.0,
    }
