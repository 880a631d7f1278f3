"""The access engine end to end: enrolment, the waypoint, ztunnel, the waypoint's identity."""

from __future__ import annotations

from typing import Any

import pytest
from access.evaluation import decide
from access.map import explain
from access.model import Decision, Level, Model, Point, Refused, Request, Workload, principal
from access.parsing import AuthzPolicy, parse_policy
from charms.istio_beacon_k8s.v0.service_mesh import (
    Endpoint,
    MeshPolicy,
    PolicyTargetType,
    build_authorization_policy,
)
from kube_names import MANAGED_BY, RELATION_ID, REQUESTED_BY

NS = "m"
WAYPOINT = "m-beacon-waypoint"
OWNER = "m.beacon"
MESH = {
    "istio.io/dataplane-mode": "ambient",
    "istio.io/use-waypoint": WAYPOINT,
    "istio.io/use-waypoint-namespace": NS,
}
SENDER = principal(NS, "sender")


def workload(name: str, *, pods: dict[str, str] | None = None, service: Any = "same") -> Workload:
    labels = {"app.kubernetes.io/name": name, **MESH} if pods is None else pods
    if service == "same":
        service = labels
    return Workload(name, labels, name if service is not None else None, service or {})


def ours(policy: MeshPolicy, relation_id: int = 3) -> AuthzPolicy:
    manifest = build_authorization_policy(
        policy,
        labels={MANAGED_BY: OWNER},
        annotations={REQUESTED_BY: policy.target_app_name or "", RELATION_ID: str(relation_id)},
    )
    return parse_policy(manifest, OWNER)


def app_policy(source: str = "sender", target: str = "receiver", **endpoint: Any) -> AuthzPolicy:
    endpoints = [Endpoint(**endpoint)] if endpoint else []
    return ours(MeshPolicy(NS, source, NS, target, endpoints=endpoints))


def unit_policy(source: str = "sender", target: str = "receiver", ports=(9090,)) -> AuthzPolicy:
    return ours(
        MeshPolicy(
            NS,
            source,
            NS,
            target,
            target_type=PolicyTargetType.unit,
            endpoints=[Endpoint(ports=list(ports))],
        )
    )


def foreign(spec: dict[str, Any], name: str = "theirs") -> AuthzPolicy:
    return parse_policy({"metadata": {"name": name, "namespace": NS}, "spec": spec}, OWNER)


def model(*policies: AuthzPolicy, **changes: Any) -> Model:
    fields: dict[str, Any] = {
        "namespace": NS,
        "workloads": (workload("sender"), workload("receiver")),
        "waypoint": WAYPOINT,
        "waypoint_ready": True,
        "policies": policies,
    }
    fields.update(changes)
    return Model(**fields)


def ask(m: Model, port: int = 8080, level: Level = Level.app, **attrs: Any) -> Request:
    source = attrs.pop("source", SENDER)
    return Request(source, "receiver", port, level=level, **attrs)


def test_an_app_policy_allows_through_the_waypoint_then_the_pods_let_the_waypoint_in():
    m = model(app_policy(ports=[8080], methods=["GET"]))
    verdict = decide(m, ask(m, method="GET"))
    assert verdict.decision is Decision.allow
    assert [s.point for s in verdict.steps] == [Point.waypoint, Point.ztunnel]
    assert "auto-allow-waypoint-policy" in verdict.steps[1].reason


def test_an_allow_through_the_waypoint_is_decided_by_the_app_policy_not_the_pods_hop():
    policy = app_policy(ports=[8080], methods=["GET"])
    m = model(policy, auto_allow_waypoint=True)
    verdict = decide(m, ask(m, method="GET"))
    assert verdict.decision is Decision.allow
    assert verdict.deciding_step is verdict.steps[0]
    assert verdict.policy == policy
    assert verdict.reason == (
        f"AuthorizationPolicy {policy.name} (asked for by receiver over relation 3, "
        "service-mesh) allows it"
    )
    assert verdict.steps[1].point is Point.ztunnel
    assert verdict.steps[1].decision is Decision.allow
    assert verdict.steps[1].policy is not None
    assert verdict.steps[1].policy != policy


def test_when_the_pods_refuse_the_waypoint_the_pods_hop_decides():
    no_waypoint = foreign(
        {
            "action": "DENY",
            "selector": {"matchLabels": {"app.kubernetes.io/name": "receiver"}},
            "rules": [{"from": [{"source": {"principals": [principal(NS, WAYPOINT)]}}]}],
        },
        name="no-waypoint",
    )
    m = model(app_policy(ports=[8080], methods=["GET"]), no_waypoint)
    verdict = decide(m, ask(m, method="GET"))
    assert verdict.decision is Decision.deny
    assert [s.decision for s in verdict.steps] == [Decision.allow, Decision.deny]
    assert verdict.deciding_step is verdict.steps[1]
    assert verdict.policy == no_waypoint
    assert verdict.reason == "AuthorizationPolicy no-waypoint (not made by the beacon) denies it"


def test_straight_to_the_pods_the_pods_hop_decides_and_names_the_relation():
    policy = unit_policy()
    m = model(policy)
    verdict = decide(m, ask(m, port=9090, level=Level.unit))
    assert verdict.decision is Decision.allow
    assert verdict.deciding_step is verdict.steps[-1]
    assert verdict.policy == policy
    assert "(asked for by receiver over relation 3, service-mesh) allows it" in verdict.reason


@pytest.mark.parametrize(
    ("attrs", "expected", "words"),
    [
        ({"port": 9000, "method": "GET"}, Decision.deny, "opens 8080 and 8081, not 9000"),
        ({"method": "POST"}, Decision.deny, "allows GET, not POST"),
        ({"method": "GET", "path": "/other"}, Decision.deny, "allows the paths /data/*, not"),
        ({"method": "GET", "path": "/data/1"}, Decision.allow, "allows it"),
        ({}, Decision.unknown, "give method=, path= to decide"),
    ],
)
def test_nearest_misses_in_words(attrs: dict[str, Any], expected: Decision, words: str):
    m = model(app_policy(ports=[8080, 8081], methods=["GET"], paths=["/data/*"]))
    verdict = decide(m, ask(m, **attrs))
    assert verdict.decision is expected
    assert words in verdict.reason
    if expected is Decision.deny:
        assert verdict.reason.startswith("related, but AuthorizationPolicy receiver-app-from-")
        assert "asked for by receiver over relation 3, service-mesh" in verdict.reason


def test_no_relation_grants_access():
    m = model(app_policy(source="someone-else"))
    verdict = decide(m, ask(m))
    assert verdict.decision is Decision.deny
    assert verdict.reason.startswith("no relation between these apps grants access")


def test_a_refused_request_is_named_as_the_nearest_miss():
    m = model(
        app_policy(source="someone-else"),
        refused=(Refused("receiver", 4, "targets namespace other, not m"),),
    )
    verdict = decide(m, ask(m))
    assert "the beacon refused receiver's request over relation 4" in verdict.reason


def test_a_foreign_deny_is_named():
    deny_all = {"action": "DENY", "targetRefs": [_service("receiver")], "rules": [{}]}
    m = model(app_policy(), foreign(deny_all))
    verdict = decide(m, ask(m))
    assert verdict.decision is Decision.deny
    assert verdict.reason == "AuthorizationPolicy theirs (not made by the beacon) denies it"


def _service(name: str) -> dict[str, str]:
    return {"group": "", "kind": "Service", "name": name}


def test_a_policy_on_the_waypoints_gateway_applies_to_every_service_behind_it():
    gateway = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": WAYPOINT}
    m = model(foreign({"action": "DENY", "targetRefs": [gateway], "rules": [{}]}))
    assert decide(m, ask(m)).decision is Decision.deny


def test_a_policy_on_another_service_does_not_apply():
    m = model(foreign({"targetRefs": [_service("elsewhere")], "rules": []}))
    assert decide(m, ask(m)).decision is Decision.allow


def test_a_deny_policy_without_rules_denies_nothing():
    m = model(app_policy(), foreign({"action": "DENY", "targetRefs": [_service("receiver")]}))
    assert decide(m, ask(m)).decision is Decision.allow


def test_without_any_policy_everything_is_allowed_but_a_bound_service_guards_its_pods():
    m = model()
    assert decide(m, ask(m)).decision is Decision.allow
    # istiod's implicit ALLOW for the waypoint is an ALLOW policy on the pods: direct traffic
    # from anything else is refused.
    assert decide(m, ask(m, level=Level.unit)).decision is Decision.deny
    unbound = workload(
        "receiver",
        pods={"app.kubernetes.io/name": "receiver", "istio.io/dataplane-mode": "ambient"},
        service={"app.kubernetes.io/name": "receiver"},
    )
    m = model(workloads=(unbound,))
    assert decide(m, ask(m, level=Level.unit)).decision is Decision.allow


def test_a_target_off_the_mesh_enforces_nothing():
    off = workload("receiver", pods={"app.kubernetes.io/name": "receiver"})
    m = model(app_policy(ports=[1]), workloads=(workload("sender"), off))
    verdict = decide(m, ask(m))
    assert verdict.decision is Decision.allow
    assert verdict.reason == "receiver is not on the mesh, so nothing is enforced"


def test_the_namespace_label_puts_pods_on_the_mesh_and_a_pod_label_can_take_them_off():
    plain = workload("receiver", pods={"app.kubernetes.io/name": "receiver"}, service={})
    namespace_labels = {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": WAYPOINT}
    m = model(app_policy(ports=[1]), workloads=(plain,), namespace_labels=namespace_labels)
    assert decide(m, ask(m)).decision is Decision.deny  # bound through the namespace label
    opted_out = workload("receiver", pods={"istio.io/dataplane-mode": "none"}, service={})
    m = model(app_policy(ports=[1]), workloads=(opted_out,), namespace_labels=namespace_labels)
    assert decide(m, ask(m)).decision is Decision.allow


def test_a_service_without_waypoint_skips_app_policies():
    unbound = workload(
        "receiver",
        pods={"app.kubernetes.io/name": "receiver", "istio.io/dataplane-mode": "ambient"},
        service={"app.kubernetes.io/name": "receiver"},
    )
    m = model(app_policy(ports=[1]), workloads=(unbound,))
    verdict = decide(m, ask(m))
    assert verdict.decision is Decision.allow
    assert [s.point for s in verdict.steps] == [Point.ztunnel]
    assert any("uses no waypoint" in note for note in verdict.notes)


def test_a_waypoint_not_ready_is_not_used():
    m = model(app_policy(ports=[1]), waypoint_ready=False)
    verdict = decide(m, ask(m))
    assert verdict.decision is Decision.allow
    assert any("not ready" in note for note in verdict.notes)


def test_a_service_bound_to_another_waypoint_is_unknown():
    labels = {**MESH, "istio.io/use-waypoint": "their-waypoint"}
    m = model(workloads=(workload("receiver", pods=labels),))
    verdict = decide(m, ask(m))
    assert verdict.decision is Decision.unknown
    assert "which this beacon does not run" in verdict.reason


def test_an_app_without_a_service_is_unknown_at_app_level():
    m = model(workloads=(workload("receiver", service=None),))
    assert decide(m, ask(m)).decision is Decision.unknown
    assert decide(m, ask(m, level=Level.unit)).decision is Decision.allow


def test_an_unknown_target_is_unknown():
    m = model()
    verdict = decide(m, Request(SENDER, "ghost", 80))
    assert verdict.decision is Decision.unknown
    assert verdict.reason == "the model has no app ghost"


def test_unit_level_goes_past_the_waypoint_to_the_pods():
    m = model(app_policy(ports=[8080]), unit_policy(ports=[9090]))
    allowed = decide(m, ask(m, port=9090, level=Level.unit))
    assert allowed.decision is Decision.allow
    assert [s.point for s in allowed.steps] == [Point.ztunnel]
    refused = decide(m, ask(m, port=8080, level=Level.unit))
    assert refused.decision is Decision.deny
    assert "opens 9090, not 8080" in refused.reason


def test_a_bound_service_makes_the_pods_refuse_direct_traffic_without_a_unit_policy():
    m = model(app_policy())
    verdict = decide(m, ask(m, level=Level.unit))
    assert verdict.decision is Decision.deny
    assert "bound to the waypoint, so its pods accept only the waypoint" in verdict.reason


def test_the_waypoint_identity_needs_a_way_in_when_auto_allow_is_off():
    m = model(app_policy(), unit_policy(), auto_allow_waypoint=False)
    verdict = decide(m, ask(m))
    assert verdict.decision is Decision.deny
    assert verdict.steps[0].decision is Decision.allow
    assert "none allows the waypoint's identity" in verdict.reason
    assert principal(NS, WAYPOINT) in verdict.reason
    # With only app policies, nothing selects the pods: the waypoint gets through.
    assert decide(model(app_policy(), auto_allow_waypoint=False), ask(m)).decision is (
        Decision.allow
    )


def test_an_unknown_auto_allow_setting_makes_the_waypoint_hop_unknown():
    m = model(app_policy(), unit_policy(), auto_allow_waypoint=None)
    verdict = decide(m, ask(m))
    assert verdict.decision is Decision.unknown
    assert verdict.reason.startswith("depends on istiod's auto-allow-waypoint-policy")
    assert "on, allow" in verdict.reason
    assert "off, deny" in verdict.reason
    # Direct traffic to pods with no unit policy: the implicit policy alone would refuse it.
    direct = decide(model(auto_allow_waypoint=None), ask(m, level=Level.unit))
    assert direct.decision is Decision.unknown
    # Where both settings agree, the answer is known.
    assert decide(model(unit_policy(), auto_allow_waypoint=None), ask(m, port=9090,
                  level=Level.unit)).decision is Decision.allow  # fmt: skip


def test_an_explicit_policy_for_the_waypoint_lets_it_in():
    for_waypoint = foreign(
        {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "receiver"}},
            "rules": [{"from": [{"source": {"principals": [principal(NS, WAYPOINT)]}}]}],
        }
    )
    m = model(app_policy(), unit_policy(), for_waypoint, auto_allow_waypoint=False)
    assert decide(m, ask(m)).decision is Decision.allow


def test_a_unit_policy_with_http_fields_allows_nothing_at_the_pods():
    bad = foreign(
        {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "receiver"}},
            "rules": [
                {
                    "from": [{"source": {"principals": [SENDER]}}],
                    "to": [{"operation": {"methods": ["GET"]}}],
                }
            ],
        }
    )
    m = model(bad)
    verdict = decide(m, ask(m, level=Level.unit, method="GET"))
    assert verdict.decision is Decision.deny
    assert "names methods, which ztunnel cannot check" in verdict.reason


def test_a_caller_off_the_mesh_goes_past_the_waypoint_without_identity():
    m = model(app_policy())
    verdict = decide(m, ask(m, source=None))
    assert verdict.decision is Decision.deny
    assert any("not on the mesh" in note for note in verdict.notes)
    assert decide(model(app_policy(), unit_policy(), waypoint_ready=False), ask(m, source=None))


def test_custom_at_the_waypoint_is_unknown_and_named():
    m = model(app_policy(), foreign({"action": "CUSTOM", "targetRefs": [_service("receiver")],
                                     "rules": [{}]}, name="ext"))  # fmt: skip
    verdict = decide(m, ask(m))
    assert verdict.decision is Decision.unknown
    assert "ext" in verdict.reason
    assert "external authorizer" in verdict.reason


def test_explain_takes_sources_in_this_and_other_models():
    m = model(ours(MeshPolicy("other", "far", NS, "receiver")))
    assert explain(m, "far/other", "receiver", 80).decision is Decision.allow
    assert explain(m, "far", "receiver", 80).decision is Decision.deny
    remote = explain(m, "far/other", "receiver", 80)
    assert remote.request.source_principal == principal("other", "far")
    assert any("assuming it is on the mesh" in note for note in remote.notes)


def test_explain_treats_a_source_off_the_mesh_as_without_identity():
    off = workload("sender", pods={"app.kubernetes.io/name": "sender"})
    m = model(app_policy(), workloads=(off, workload("receiver")))
    explanation = explain(m, "sender", "receiver", 8080)
    assert explanation.request.source_principal is None
    assert explanation.decision is Decision.deny
    assert any("carries no mesh identity" in note for note in explanation.notes)


def test_a_caller_related_at_the_other_level_is_told_so():
    m = model(app_policy(source="someone-else"), unit_policy(ports=[9090]))
    through_service = decide(m, ask(m, port=9090, method="GET"))
    assert through_service.decision is Decision.deny
    assert through_service.reason.startswith("related at the other level only:")
    assert "(level=unit)" in through_service.reason
    unbound = workload(
        "receiver",
        pods={"app.kubernetes.io/name": "receiver", "istio.io/dataplane-mode": "ambient"},
        service={"app.kubernetes.io/name": "receiver"},
    )
    m = model(app_policy(), foreign({"selector": {"matchLabels": {"app.kubernetes.io/name":
              "receiver"}}, "rules": [{"from": [{"source": {"principals": ["x"]}}]}]}),
              workloads=(workload("sender"), unbound))  # fmt: skip
    straight = decide(m, ask(m, level=Level.unit))
    assert straight.decision is Decision.deny
    assert "through its Service (level=app), not its pods straight" in straight.reason
    bound = decide(model(app_policy()), ask(m, level=Level.unit))
    assert "lets sender in through the Service (level=app)" in bound.reason
