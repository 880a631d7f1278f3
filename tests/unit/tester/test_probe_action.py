"""The probe action: real requests from the unit to loopback servers, structured results out."""

from __future__ import annotations

import json
from typing import Any

import probe
import pytest
from charm import ServiceMeshTesterCharm
from ops import testing

STATE = testing.State(containers={testing.Container("workload", can_connect=True)})
RESULT_KEYS = {"url", "method", "outcome", "status", "error", "elapsed"}


def run_probe(
    ctx: testing.Context[ServiceMeshTesterCharm], **params: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ctx.run(ctx.on.action("probe", params=params), STATE)
    assert ctx.action_results is not None
    results = json.loads(ctx.action_results["results"])
    for result in results:
        assert set(result) == RESULT_KEYS
        assert isinstance(result["elapsed"], float)
        assert result["elapsed"] >= 0
    return ctx.action_results, results


def test_a_response_is_reported_with_its_status(
    ctx: testing.Context[ServiceMeshTesterCharm], http_server: str
):
    top, results = run_probe(ctx, url=f"{http_server}/foo")

    assert results == [
        {
            "url": f"{http_server}/foo",
            "method": "GET",
            "outcome": "response",
            "status": 200,
            "error": None,
            "elapsed": results[0]["elapsed"],
        }
    ]
    assert (top["outcome"], top["status"]) == ("response", "200")


def test_a_403_is_a_response_not_an_error(
    ctx: testing.Context[ServiceMeshTesterCharm], http_server: str
):
    top, results = run_probe(ctx, url=f"{http_server}/status/403", method="post")

    assert (results[0]["outcome"], results[0]["status"], results[0]["method"]) == (
        "response",
        403,
        "POST",
    )
    assert (top["outcome"], top["status"]) == ("response", "403")


def test_a_closed_port_is_refused(ctx: testing.Context[ServiceMeshTesterCharm], closed_port: int):
    top, results = run_probe(ctx, url=f"http://127.0.0.1:{closed_port}/")

    assert results[0]["outcome"] == "refused"
    assert results[0]["status"] is None
    assert results[0]["error"]
    assert (top["outcome"], top["status"]) == ("refused", "")


def test_a_server_that_never_answers_times_out(
    ctx: testing.Context[ServiceMeshTesterCharm], silent_port: int
):
    _, results = run_probe(ctx, url=f"http://127.0.0.1:{silent_port}/", timeout=0.3)

    assert results[0]["outcome"] == "timeout"
    assert results[0]["status"] is None
    assert 0.3 <= results[0]["elapsed"] < 5


def test_a_connection_closed_without_answer_is_a_reset(
    ctx: testing.Context[ServiceMeshTesterCharm], resetting_port: int
):
    _, results = run_probe(ctx, url=f"http://127.0.0.1:{resetting_port}/", timeout=5)

    assert results[0]["outcome"] == "reset"
    assert results[0]["status"] is None


def test_a_name_that_does_not_resolve_is_unresolved(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    # .invalid is reserved (RFC 2606): no resolver may answer it.
    _, results = run_probe(ctx, url="http://no-such-host.invalid/", timeout=2)

    assert results[0]["outcome"] == "unresolved"
    assert results[0]["status"] is None


def test_several_requests_run_in_one_call_in_order(
    ctx: testing.Context[ServiceMeshTesterCharm], http_server: str, closed_port: int
):
    requests = [
        {"url": f"{http_server}/bar/", "method": "POST"},
        {"url": f"{http_server}/status/404", "method": "head", "timeout": 2},
        {"url": f"http://127.0.0.1:{closed_port}/x"},
    ]
    top, results = run_probe(ctx, requests=json.dumps(requests), method="DELETE")

    assert [(r["url"], r["method"], r["outcome"], r["status"]) for r in results] == [
        (f"{http_server}/bar/", "POST", "response", 200),
        (f"{http_server}/status/404", "HEAD", "response", 404),
        # The top-level method is the default for entries that do not name one.
        (f"http://127.0.0.1:{closed_port}/x", "DELETE", "refused", None),
    ]
    # outcome/status are top-level only when exactly one request was made.
    assert set(top) == {"results"}


def test_tcp_a_connection_still_open_after_the_hold_is_connected(
    ctx: testing.Context[ServiceMeshTesterCharm], silent_port: int
):
    # Like a TLS port: the server waits for the client to speak first.
    top, results = run_probe(ctx, url=f"tcp://127.0.0.1:{silent_port}", method="DELETE")

    assert results == [
        {
            "url": f"tcp://127.0.0.1:{silent_port}",
            "method": None,
            "outcome": "connected",
            "status": None,
            "error": None,
            "elapsed": results[0]["elapsed"],
        }
    ]
    assert results[0]["elapsed"] >= probe.TCP_HOLD_SECONDS
    assert (top["outcome"], top["status"]) == ("connected", "")


def test_tcp_the_hold_is_bounded_by_the_timeout(
    ctx: testing.Context[ServiceMeshTesterCharm], silent_port: int
):
    _, results = run_probe(ctx, url=f"tcp://127.0.0.1:{silent_port}/", timeout=0.2)

    assert results[0]["outcome"] == "connected"
    assert 0.2 <= results[0]["elapsed"] < probe.TCP_HOLD_SECONDS


def test_tcp_a_server_that_speaks_first_is_connected(
    ctx: testing.Context[ServiceMeshTesterCharm], greeting_port: int
):
    _, results = run_probe(ctx, url=f"tcp://127.0.0.1:{greeting_port}")

    assert (results[0]["outcome"], results[0]["error"]) == ("connected", None)


@pytest.mark.parametrize("server", ["closing_port", "aborting_port"])
def test_tcp_a_connection_closed_by_the_other_end_at_once_is_a_reset(
    ctx: testing.Context[ServiceMeshTesterCharm], request: pytest.FixtureRequest, server: str
):
    # What a denial by ztunnel looks like: the connect succeeds, then the connection is closed.
    port: int = request.getfixturevalue(server)
    _, results = run_probe(ctx, url=f"tcp://127.0.0.1:{port}")

    assert results[0]["outcome"] == "reset"
    assert results[0]["error"]
    assert results[0]["elapsed"] < probe.TCP_HOLD_SECONDS


def test_tcp_a_closed_port_is_refused(
    ctx: testing.Context[ServiceMeshTesterCharm], closed_port: int
):
    _, results = run_probe(ctx, url=f"tcp://127.0.0.1:{closed_port}")

    assert (results[0]["outcome"], results[0]["method"]) == ("refused", None)


def test_tcp_a_name_that_does_not_resolve_is_unresolved(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    _, results = run_probe(ctx, url="tcp://no-such-host.invalid:443", timeout=2)

    assert results[0]["outcome"] == "unresolved"


def test_tcp_and_http_mix_in_one_call(
    ctx: testing.Context[ServiceMeshTesterCharm], http_server: str, silent_port: int
):
    requests = [
        {"url": f"tcp://127.0.0.1:{silent_port}", "timeout": 0.2},
        {"url": f"{http_server}/foo", "method": "POST"},
    ]
    _, results = run_probe(ctx, requests=json.dumps(requests))

    assert [(r["method"], r["outcome"], r["status"]) for r in results] == [
        (None, "connected", None),
        ("POST", "response", 200),
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "missing parameter 'url'"),
        ({"url": "ftp://127.0.0.1/"}, "not an http:// or tcp:// URL"),
        ({"url": "127.0.0.1:8080/foo"}, "not an http:// or tcp:// URL"),
        ({"url": "tcp://127.0.0.1"}, "has no port"),
        ({"url": "tcp://127.0.0.1:443/foo"}, "only tcp://host:port"),
        ({"url": "tcp://127.0.0.1:443?x=1"}, "only tcp://host:port"),
        ({"requests": '[{"url": "tcp://a:443", "method": "GET"}]'}, "has no 'method'"),
        ({"url": "http:///foo"}, "has no host"),
        ({"url": "http://127.0.0.1:99999/"}, "not a valid URL"),
        ({"url": "http://127.0.0.1/", "method": "BREW"}, "not a supported method"),
        ({"url": "http://127.0.0.1/", "timeout": 0}, "positive number"),
        ({"requests": "[{"}, "'requests' is not valid JSON"),
        ({"requests": "{}"}, "non-empty JSON list"),
        ({"requests": "[]"}, "non-empty JSON list"),
        ({"requests": '["http://127.0.0.1/"]'}, "requests[0] must be an object"),
        ({"requests": '[{"method": "GET"}]'}, "requests[0] has no 'url'"),
        ({"requests": '[{"url": "http://a/", "verb": "GET"}]'}, "unknown keys ['verb']"),
        ({"requests": '[{"url": "http://a/", "timeout": "5"}]'}, "requests[0].timeout"),
        ({"requests": '[{"url": "http://a/"}]', "url": "http://a/"}, "not both"),
    ],
)
def test_bad_parameters_fail_the_action_with_a_clear_message(
    ctx: testing.Context[ServiceMeshTesterCharm], params: dict[str, Any], message: str
):
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("probe", params=params), STATE)

    assert message in failure.value.message
