"""The comparison harness (tests/support/access_cases.py) the Envoy tier uses against the engine.

Here it is checked on its own: generation is reproducible and stays within what the engine
models, and the ztunnel evaluator reads istiod's Authorization format by ztunnel's rules. The
comparisons with Istio's real output run in the Envoy tier.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from access.parsing import parse_policy
from support.access_cases import (
    CALLERS,
    Ask,
    Case,
    compare_waypoint,
    compare_ztunnel,
    engine_decides,
    generate,
    ztunnel_decides,
)


@pytest.mark.parametrize("point", ["waypoint", "ztunnel"])
def test_generation_is_reproducible_readable_and_decidable(point: str):
    for seed in range(200):
        case = generate(random.Random(seed), point=point, l7_at_pods=seed % 2 == 0)
        assert case == generate(random.Random(seed), point=point, l7_at_pods=seed % 2 == 0)
        assert all(not parse_policy(m, owner="").problem for m in case.manifests)
        for ask in case.asks:
            decision, reason = engine_decides(case, ask, point)
            assert decision in ("allow", "deny"), reason


def test_generation_covers_both_answers_and_every_field():
    decisions: set[str] = set()
    seen: set[str] = set()
    for seed in range(100):
        case = generate(random.Random(seed), point="waypoint")
        decisions |= {engine_decides(case, ask, "waypoint")[0] for ask in case.asks}
        for manifest in case.manifests:
            for rule in manifest["spec"].get("rules", []):
                seen |= {k for f in rule.get("from", []) for k in f["source"]}
                seen |= {k for t in rule.get("to", []) for k in t["operation"]}
                seen |= {c["key"] for c in rule.get("when", [])}
    assert decisions == {"allow", "deny"}
    assert seen >= {
        "principals", "notPrincipals", "namespaces", "notNamespaces", "ports", "notPorts",
        "methods", "notMethods", "paths", "notPaths", "hosts", "notHosts",
        "source.namespace", "source.principal", "destination.port",
    }  # fmt: skip


SENDER, OTHER_SENDER = CALLERS[0], CALLERS[2]


def _exact(value: str) -> dict[str, str]:
    return {"exact": value}


@pytest.mark.parametrize(
    ("authorizations", "caller", "port", "expected"),
    [
        ([], SENDER, 80, "allow"),
        ([{"action": "ALLOW"}], SENDER, 80, "deny"),  # no groups: matches nothing
        ([{"groups": [{}]}], SENDER, 80, "allow"),  # a group without rules matches all
        ([{"groups": [{"rules": [{"matches": [{}]}]}]}], SENDER, 80, "allow"),
        ([{"groups": [{"rules": [{"matches": [
            {"principals": [_exact("cluster.local/ns/model/sa/sender")]}]}]}]}],
         SENDER, 80, "allow"),
        ([{"groups": [{"rules": [{"matches": [
            {"principals": [_exact("cluster.local/ns/model/sa/sender")]}]}]}]}],
         OTHER_SENDER, 80, "deny"),
        ([{"groups": [{"rules": [{"matches": [{"destinationPorts": [8080]}]},
                                 {"matches": [{"namespaces": [{"prefix": "mod"}]}]}]}]}],
         SENDER, 8080, "allow"),
        ([{"groups": [{"rules": [{"matches": [{"destinationPorts": [8080]}]},
                                 {"matches": [{"namespaces": [{"prefix": "mod"}]}]}]}]}],
         SENDER, 9090, "deny"),
        ([{"groups": [{"rules": [{"matches": [{"notPrincipals": [{"presence": {}}]}]}]}]}],
         SENDER, 80, "deny"),
        ([{"groups": [{"rules": [{"matches": [{"serviceAccounts": [
            {"namespace": "model", "serviceAccount": "sender"}]}]}]}]}], SENDER, 80, "allow"),
        ([{"groups": [{}]}, {"action": "DENY", "groups": [{"rules": [{"matches": [
            {"notDestinationPorts": [9090]}]}]}]}], SENDER, 80, "deny"),
        ([{"groups": [{}]}, {"action": "DENY", "groups": [{"rules": [{"matches": [
            {"notDestinationPorts": [9090]}]}]}]}], SENDER, 9090, "allow"),
    ],
)  # fmt: skip
def test_ztunnel_evaluator(
    authorizations: list[dict[str, Any]], caller: tuple[str, str], port: int, expected: str
):
    assert ztunnel_decides(authorizations, caller, port) == expected


def test_the_evaluator_refuses_fields_it_does_not_read():
    with pytest.raises(ValueError, match="sourceIps"):
        ztunnel_decides([{"groups": [{"rules": [{"matches": [{"sourceIps": []}]}]}]}], SENDER, 1)


def test_the_comparisons_report_disagreements():
    manifest = {
        "metadata": {"name": "p", "namespace": "model"},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "target"}}},
    }  # an ALLOW policy without rules: nothing is allowed
    case = Case((manifest,), (Ask(SENDER, 8080, "GET", "/", "target"),))
    assert compare_ztunnel(case, [{"action": "ALLOW"}]) == []
    (mismatch,) = compare_ztunnel(case, [{"action": "ALLOW", "groups": [{}]}])
    assert (mismatch.engine, mismatch.istio) == ("deny", "allow")
    assert compare_waypoint(case, [403]) == []
    (mismatch,) = compare_waypoint(case, [200])
    assert mismatch.istio == "envoy 200"


class _ToolsThatAllowEverything:
    """Stands in for istio-check and the Envoy waypoint: every request is allowed."""

    def check(self, manifests: list[Any]) -> dict[str, Any]:
        return {
            "objects": [
                {"name": m["metadata"]["name"], "ztunnel": {"applies": True,
                 "authorization": {"groups": [{}]}}}
                for m in manifests
            ]
        }  # fmt: skip

    def waypoint(self, manifests: list[Any], services: list[str]) -> dict[str, Any]:
        return {"services": [{"service": s, "http_filters": []} for s in services]}

    def request(self, *_: Any) -> Any:
        return type("Reply", (), {"status": 200})()


def test_the_tool_runs_count_requests_and_collect_disagreements():
    from contextlib import contextmanager

    from support.access_cases import (
        compare_with_envoy,
        compare_with_istiod,
        waypoint_cases,
        ztunnel_cases,
    )

    tools = _ToolsThatAllowEverything()

    @contextmanager
    def run_waypoint(rbac: Any, ports: Any):
        assert {entry["service"] for entry in rbac["services"]} == set(ports)
        yield tools

    seen = compare_with_envoy(tools, run_waypoint, waypoint_cases(5))
    assert seen.asked == 5 * 24
    assert seen.answers == {"200"}
    assert seen.mismatches  # the engine denies some of the generated requests
    assert all(m.engine == "deny" for m in seen.mismatches)
    seen = compare_with_istiod(tools, ztunnel_cases(5, l7_at_pods=False))
    assert seen.answers == {"allow"}
    assert all(m.engine == "deny" for m in seen.mismatches)
