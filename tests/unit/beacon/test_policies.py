"""Consumers' requests become AuthorizationPolicies, and an app may only open access to itself."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0.service_mesh import MeshPolicy, PolicyTargetType
from conftest import (
    MANAGED_BY,
    MODEL,
    OWNER,
    POLICY_ROLLBACK,
    RELATION_ID,
    REQUESTED_BY,
    UNPROTECTED,
    beacon_state,
    istio_runs_waypoint,
    mesh_relation,
    policies_in,
    request_policies,
    requested_by,
    seed_model_operator,
    seed_service,
    wire_policy,
)
from ops import testing
from policies import claimed_services, policy_error
from support.fake_kube import FakeKubeServer

HONEST = "receiver1"
LIAR = "liar"
SERVICES = {
    "receiver1": {"app.kubernetes.io/name": "receiver1"},
    "receiver1-admin": {"app.kubernetes.io/name": "receiver1"},
    "receiver1-endpoints": {},
    "victim": {"app.kubernetes.io/name": "victim"},
    "victim-admin": {"app.kubernetes.io/name": "victim"},
    "unlabelled": {},
}


def _policy(**fields: Any) -> MeshPolicy:
    base: dict[str, Any] = {
        "source_namespace": MODEL,
        "source_app_name": "sender",
        "target_namespace": MODEL,
        "target_app_name": "receiver1",
    }
    return MeshPolicy(**{**base, **fields})


UNIT = PolicyTargetType.unit


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        (_policy(), ""),
        (_policy(target_app_name=None, target_service="receiver1-admin"), ""),
        (_policy(target_service="receiver1-admin"), ""),
        (_policy(target_service="receiver1-endpoints"), ""),
        (_policy(target_type=UNIT), ""),
        (
            _policy(
                target_type=UNIT,
                target_app_name=None,
                target_selector_labels={"app.kubernetes.io/name": "receiver1", "tier": "a"},
            ),
            "",
        ),
        (_policy(target_app_name="victim"), 'targets app "victim"'),
        (_policy(target_namespace="elsewhere"), f'targets namespace "elsewhere", not {MODEL}'),
        (
            _policy(target_app_name=None, target_service="victim-admin"),
            'Service "victim-admin" belongs to victim',
        ),
        (_policy(target_service="victim"), 'Service "victim" belongs to victim'),
        (_policy(target_service="nothing"), 'Service "nothing" does not exist'),
        (
            _policy(target_service="unlabelled"),
            'Service "unlabelled" is not labelled app.kubernetes.io/name=receiver1',
        ),
        (
            _policy(
                target_type=UNIT,
                target_app_name=None,
                target_selector_labels={"app.kubernetes.io/name": "victim"},
            ),
            "unit policy selects pods without app.kubernetes.io/name=receiver1",
        ),
        (
            _policy(target_type=UNIT, target_app_name=None, target_selector_labels={"tier": "a"}),
            "unit policy selects pods without app.kubernetes.io/name=receiver1",
        ),
    ],
)
def test_a_policy_may_only_open_access_to_the_app_that_asks(policy: MeshPolicy, error: str):
    assert policy_error(policy, "receiver1", MODEL, SERVICES) == error


def test_applies_each_request_with_who_asked_for_it(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    relation = mesh_relation(
        HONEST,
        [wire_policy("sender1", HONEST), wire_policy("sender2", HONEST, target_type="unit")],
    )

    out = ctx.run(ctx.on.relation_changed(relation), beacon_state(relations=[relation]))

    policies = request_policies(kube, MODEL)
    assert len(policies) == 2
    for policy in policies.values():
        assert policy["metadata"]["labels"] == {
            MANAGED_BY: OWNER,
            REQUESTED_BY: HONEST,
            **POLICY_ROLLBACK,
        }
        assert policy["metadata"]["annotations"] == {
            REQUESTED_BY: HONEST,
            RELATION_ID: str(relation.id),
        }
    by_kind = {
        "app" if "targetRefs" in p["spec"] else "unit": p["spec"] for p in policies.values()
    }
    assert by_kind["app"] == {
        "action": "ALLOW",
        "targetRefs": [{"group": "", "kind": "Service", "name": HONEST}],
        "rules": [
            {
                "from": [{"source": {"principals": [f"cluster.local/ns/{MODEL}/sa/sender1"]}}],
                "to": [{"operation": {"ports": ["8080"], "methods": ["GET"], "paths": ["/foo"]}}],
            }
        ],
    }
    assert by_kind["unit"] == {
        "action": "ALLOW",
        "selector": {"matchLabels": {"app.kubernetes.io/name": HONEST}},
        "rules": [
            {
                "from": [{"source": {"principals": [f"cluster.local/ns/{MODEL}/sa/sender2"]}}],
                "to": [{"operation": {"ports": ["8080"]}}],
            }
        ],
    }
    assert not isinstance(out.unit_status, testing.BlockedStatus)


_MALFORMED_POLICY = wire_policy("sender", LIAR, endpoints=[{"ports": ["eighty"]}])

ADVERSARIAL: list[tuple[str, list[dict[str, Any]] | str, str]] = [
    ("another app", [wire_policy("sender", HONEST)], 'targets app "receiver1"'),
    (
        "another namespace",
        [wire_policy("sender", LIAR, target_namespace="kube-system")],
        f'targets namespace "kube-system", not {MODEL}',
    ),
    (
        "a Service of another app",
        [wire_policy("sender", LIAR, target_service=HONEST)],
        'Service "receiver1" belongs to receiver1',
    ),
    (
        "a unit policy with no target",
        [wire_policy("sender", None, target_type="unit")],
        "invalid data: policies[0]: policy from mesh-model/sender: a unit policy needs "
        "target_app_name or non-empty target_selector_labels",
    ),
    ("malformed JSON", "[{not json", "invalid data: policies: not valid JSON"),
    ("wrong types", [_MALFORMED_POLICY], "invalid data: policies[0].endpoints[0].ports[0]"),
    ("not a list", json.dumps({"policies": []}), "invalid data: policies: expected a list"),
]


@pytest.mark.parametrize(
    ("request_data", "reason"),
    [case[1:] for case in ADVERSARIAL],
    ids=[case[0] for case in ADVERSARIAL],
)
def test_refuses_a_request_beyond_the_asking_app_and_still_serves_the_others(
    ctx: testing.Context[IstioBeaconCharm],
    kube: FakeKubeServer,
    request_data: list[dict[str, Any]] | str,
    reason: str,
):
    seed_service(kube, HONEST)
    seed_service(kube, LIAR)
    honest = mesh_relation(HONEST, [wire_policy("sender", HONEST)])
    liar = mesh_relation(LIAR, request_data)

    out = ctx.run(ctx.on.relation_changed(liar), beacon_state(relations=[honest, liar]))

    assert set(requested_by(kube)) == {HONEST}
    assert len(request_policies(kube)) == 1
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(f"refused a request from {LIAR}: {reason}")


def test_reports_every_refused_app(ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer):
    one = mesh_relation("liar1", [wire_policy("sender", HONEST)])
    two = mesh_relation("liar2", "{")

    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[one, two]))

    assert out.unit_status == testing.BlockedStatus(
        f'refused a request from liar1: targets app "receiver1"; liar1{UNPROTECTED}'
        " (and 1 more from liar1, liar2; see juju debug-log)"
    )
    assert request_policies(kube) == {}


def test_follows_a_changed_request_and_deletes_what_is_no_longer_asked(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    relation = mesh_relation(HONEST, [wire_policy("sender1", HONEST)])
    out = ctx.run(ctx.on.relation_changed(relation), beacon_state(relations=[relation]))
    before = set(request_policies(kube))

    changed = dataclasses.replace(
        relation,
        remote_app_data={"policies": json.dumps([wire_policy("sender2", HONEST)])},
    )
    ctx.run(ctx.on.relation_changed(changed), dataclasses.replace(out, relations=[changed]))

    after = request_policies(kube)
    assert len(after) == 1
    assert set(after).isdisjoint(before)
    (policy,) = after.values()
    principals = policy["spec"]["rules"][0]["from"][0]["source"]["principals"]
    assert principals == [f"cluster.local/ns/{MODEL}/sa/sender2"]


def test_restores_a_policy_edited_by_hand(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    relation = mesh_relation(HONEST, [wire_policy("sender1", HONEST)])
    state = beacon_state(relations=[relation])
    ctx.run(ctx.on.relation_changed(relation), state)
    (policy,) = request_policies(kube).values()
    wanted_spec = json.loads(json.dumps(policy["spec"]))
    policy["spec"]["rules"] = [{}]  # allow everyone
    kube.put(policy, field_manager="kubectl-edit")

    ctx.run(ctx.on.update_status(), state)

    (restored,) = request_policies(kube).values()
    assert restored["spec"] == wanted_spec


def test_deletes_the_policies_of_a_removed_relation(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    stays = mesh_relation("stays", [wire_policy("sender", "stays")])
    goes = mesh_relation("goes", [wire_policy("sender", "goes")])
    out = ctx.run(ctx.on.relation_changed(goes), beacon_state(relations=[stays, goes]))
    assert set(requested_by(kube)) == {"stays", "goes"}

    ctx.run(ctx.on.relation_broken(out.get_relation(goes.id)), out)

    assert set(requested_by(kube)) == {"stays"}


def test_not_managing_policies_deletes_them_all_and_creates_none(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    seed_model_operator(kube)
    istio_runs_waypoint(kube)
    relation = mesh_relation(HONEST, [wire_policy("sender", HONEST)])
    ctx.run(
        ctx.on.config_changed(),
        beacon_state(relations=[relation], config={"model-on-mesh": True}),
    )
    # The request, the waypoint's access to the app, and the model operator's.
    assert len(policies_in(kube)) == 3

    out = ctx.run(
        ctx.on.config_changed(),
        beacon_state(
            relations=[relation],
            config={"model-on-mesh": True, "manage-authorization-policies": False},
        ),
    )

    assert policies_in(kube) == {}
    assert out.unit_status == testing.ActiveStatus("not managing authorization policies")


def test_leaves_policies_it_does_not_own_alone(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    kube.put(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "hand-made", "namespace": MODEL},
            "spec": {"rules": [{}]},
        }
    )

    ctx.run(ctx.on.config_changed(), beacon_state())
    ctx.run(
        ctx.on.config_changed(),
        beacon_state(config={"manage-authorization-policies": False}),
    )

    assert set(policies_in(kube)) == {"hand-made"}


def test_one_app_gets_at_most_the_cap_of_policies_the_rest_refused():
    from charms.istio_beacon_k8s.v0.service_mesh import (
        Endpoint,
        MeshPolicy,
        RelationRequest,
    )
    from policies import MAX_POLICIES_PER_APP, check_requests

    def wanted(source: int, target: str = "big") -> MeshPolicy:
        return MeshPolicy(
            source_namespace="m",
            source_app_name=f"s{source}",
            target_namespace="m",
            target_app_name=target,
            endpoints=[Endpoint(ports=[8080])],
        )

    flood = RelationRequest(1, "big", [wanted(i) for i in range(MAX_POLICIES_PER_APP + 3)])
    small = RelationRequest(2, "small", [wanted(0, "small")])

    accepted, refused = check_requests([flood, small], "m", {})

    assert sum(1 for item in accepted if item.app_name == "big") == MAX_POLICIES_PER_APP
    assert [item.app_name for item in accepted if item.app_name != "big"] == ["small"]
    assert [(r.app_name, r.relation_id) for r in refused] == [("big", 1)]
    assert "the last 3 are refused" in refused[0].reason
    # The first ones asked for are those kept.
    assert accepted[0].policy.source_app_name == "s0"


def test_a_service_is_claimed_by_the_one_app_whose_policies_target_it():
    def policy(app: str, relation_id: int, service: str) -> dict[str, Any]:
        return {
            "metadata": {
                "annotations": {
                    "charms.canonical.com/service-mesh.requested-by": app,
                    "charms.canonical.com/service-mesh.relation-id": str(relation_id),
                }
            },
            "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": service}]},
        }

    unattributed = {"metadata": {}, "spec": {"targetRefs": [{"kind": "Service", "name": "x"}]}}
    deployed = [
        policy("foo", 1, "foo-admin"),
        policy("foo", 1, "foo-admin"),
        policy("a", 2, "shared"),
        policy("b", 3, "shared"),  # two apps (written before the rule): nobody's claim
        unattributed,
    ]
    assert claimed_services(deployed) == {"foo-admin": "foo"}
