"""What Istio and Juju do with the beacon's objects: the beacon writes what they will enforce.

The model operator stays reachable whatever Juju's label scheme, the waypoint's identity reaches
every related app's pods, a policy Istio would not enforce is refused, and what Istio reports
about each policy is surfaced.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0.service_mesh import MeshPolicy
from conftest import (
    MANAGED_BY,
    MODEL,
    NAMESPACE_OWNER,
    OWNER,
    POLICY_ROLLBACK,
    UNPROTECTED,
    WAYPOINT,
    beacon_state,
    istio_runs_waypoint,
    mesh_relation,
    policies_in,
    request_policies,
    rollback_labels,
    seed_model_operator,
    seed_service,
    waypoint_access,
    wire_policy,
)
from model_operator import plan_service_labels
from ops import testing
from policies import WaypointBinding, policy_error
from support import juju_seed
from support.fake_kube import FakeKubeServer

APP = "receiver1"
WAYPOINT_PRINCIPAL = f"cluster.local/ns/{MODEL}/sa/{WAYPOINT}"
ON_MESH = {"model-on-mesh": True}


# --- the waypoint's identity ------------------------------------------------------------------


def test_the_waypoint_reaches_the_pods_of_every_related_app_whatever_istio_allows_implicitly(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    with_unit_policy = mesh_relation(APP, [wire_policy("sender", APP, target_type="unit")])
    app_policies_only = mesh_relation("receiver2", [wire_policy("sender", "receiver2")])
    no_policy = mesh_relation("sender", [])
    relations = [with_unit_policy, app_policies_only, no_policy]

    ctx.run(ctx.on.config_changed(), beacon_state(relations=relations))

    access = waypoint_access(kube)
    assert set(access) == {APP, "receiver2", "sender"}
    assert access[APP]["metadata"]["name"] == f"{APP}-from-waypoint"
    assert access[APP]["metadata"]["labels"] == {MANAGED_BY: OWNER, **POLICY_ROLLBACK}
    assert access[APP]["spec"] == {
        "action": "ALLOW",
        "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
        "rules": [{"from": [{"source": {"principals": [WAYPOINT_PRINCIPAL]}}]}],
    }


def test_the_waypoints_access_goes_with_the_relation(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    relation = mesh_relation(APP, [])
    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[relation]))
    assert set(waypoint_access(kube)) == {APP}

    ctx.run(ctx.on.relation_broken(out.get_relation(relation.id)), out)

    assert waypoint_access(kube) == {}


# --- app policies on a Service Istio would not bind ---------------------------------------------

SERVICES: dict[str, dict[str, str]] = {
    APP: {"app.kubernetes.io/name": APP},
    "receiver1-admin": {"app.kubernetes.io/name": APP},
    "receiver1-bound": {"app.kubernetes.io/name": APP, "istio.io/use-waypoint": WAYPOINT},
    "receiver1-opted-out": {"app.kubernetes.io/name": APP, "istio.io/use-waypoint": "none"},
    "receiver1-other": {"app.kubernetes.io/name": APP, "istio.io/use-waypoint": "theirs"},
}
NOT_BOUND = (
    "Service receiver1-admin is not bound to the waypoint, so Istio would not enforce the policy "
    f"(label it istio.io/use-waypoint={WAYPOINT}, or use model-on-mesh)"
)


def _app_policy(service: str | None) -> MeshPolicy:
    return MeshPolicy(
        source_namespace=MODEL,
        source_app_name="sender",
        target_namespace=MODEL,
        target_app_name=APP,
        target_service=service,
    )


@pytest.mark.parametrize(
    ("service", "namespace_bound", "error"),
    [
        (None, False, ""),
        (APP, False, ""),
        ("receiver1-admin", False, NOT_BOUND),
        ("receiver1-admin", True, ""),
        ("receiver1-bound", False, ""),
        (
            "receiver1-opted-out",
            True,
            f"Service receiver1-opted-out uses waypoint 'none', not {WAYPOINT}",
        ),
        (
            "receiver1-other",
            False,
            f"Service receiver1-other uses waypoint 'theirs', not {WAYPOINT}",
        ),
    ],
)
def test_an_app_policy_must_name_a_service_bound_to_the_waypoint(
    service: str | None, namespace_bound: bool, error: str
):
    binding = WaypointBinding(WAYPOINT, namespace_bound=namespace_bound)

    assert policy_error(_app_policy(service), APP, MODEL, SERVICES, binding) == error


@pytest.mark.parametrize(
    ("config", "applied"),
    [({}, False), (ON_MESH, True)],
    ids=["apps on the mesh one by one", "model on the mesh"],
)
def test_a_policy_on_another_service_of_the_app_is_applied_only_when_istio_would_enforce_it(
    ctx: testing.Context[IstioBeaconCharm],
    kube: FakeKubeServer,
    config: dict[str, bool],
    applied: bool,
):
    seed_model_operator(kube)
    seed_service(kube, APP)
    seed_service(kube, "receiver1-admin", {"app.kubernetes.io/name": APP})
    relation = mesh_relation(APP, [wire_policy("sender", APP, target_service="receiver1-admin")])

    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[relation], config=config))

    assert bool(request_policies(kube)) is applied
    if applied:
        assert not isinstance(out.unit_status, testing.BlockedStatus)
    else:
        assert out.unit_status == testing.BlockedStatus(
            f"refused a request from {APP}: {NOT_BOUND}; {APP}{UNPROTECTED}"
        )


# --- Juju's model operator ------------------------------------------------------------------


def _service_labels(kube: FakeKubeServer, name: str) -> dict[str, str]:
    service = kube.get("services", MODEL, name)
    assert service is not None
    return service["metadata"].get("labels") or {}


@pytest.mark.parametrize("scheme", ["legacy", "current"])
def test_the_model_operator_stays_reachable_whatever_jujus_label_scheme(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, scheme: str
):
    selector = seed_model_operator(kube, scheme)
    juju_labels = _service_labels(kube, "modeloperator")
    istio_runs_waypoint(kube)

    out = ctx.run(ctx.on.config_changed(), beacon_state(config=ON_MESH))

    policy = kube.get("authorizationpolicies", MODEL, "allow-juju-model-operator")
    assert policy is not None
    assert policy["metadata"]["labels"] == {
        MANAGED_BY: OWNER,
        **rollback_labels("modeloperator-authorization-policy"),
    }
    assert policy["spec"] == {
        "action": "ALLOW",
        "selector": {"matchLabels": selector},
        "rules": [{}],
    }
    # Its Service does not go through the waypoint (hardened-mode would refuse it there).
    assert _service_labels(kube, "modeloperator") == {
        **juju_labels,
        "istio.io/use-waypoint": "none",
        NAMESPACE_OWNER: OWNER,
    }
    assert out.unit_status == testing.ActiveStatus()

    ctx.run(ctx.on.config_changed(), beacon_state())

    assert "allow-juju-model-operator" not in policies_in(kube)
    assert _service_labels(kube, "modeloperator") == juju_labels


def test_without_the_model_operator_service_it_says_so_rather_than_guess(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    istio_runs_waypoint(kube)

    out = ctx.run(ctx.on.config_changed(), beacon_state(config=ON_MESH))

    assert "allow-juju-model-operator" not in policies_in(kube)
    assert out.unit_status == testing.BlockedStatus(
        f"model-on-mesh: no modeloperator Service in {MODEL}: cannot tell which pods are Juju's "
        "model operator, so nothing keeps it reachable"
    )


def test_a_model_operator_service_selecting_nothing_never_becomes_an_allow_all_on_every_pod(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    seed_service(kube, "modeloperator", {})

    out = ctx.run(ctx.on.config_changed(), beacon_state(config=ON_MESH))

    assert "allow-juju-model-operator" not in policies_in(kube)
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "modeloperator Service in" in out.unit_status.message
    assert "selects no pods" in out.unit_status.message


def test_a_rewritten_model_operator_selector_is_refused(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    # Any app of the model may patch Services (Juju's default Role): here one points the
    # modeloperator Service at its own pods to get an allow-all on them.
    seed_model_operator(kube)
    service = kube.get("services", MODEL, "modeloperator")
    assert service is not None
    service["spec"]["selector"] = {"app.kubernetes.io/name": "intruder"}
    kube.put(service)

    out = ctx.run(ctx.on.config_changed(), beacon_state(config=ON_MESH))

    assert "allow-juju-model-operator" not in policies_in(kube)
    assert out.unit_status == testing.BlockedStatus(
        f"model-on-mesh: the modeloperator Service in {MODEL} selects "
        '"app.kubernetes.io/name=intruder", not the pods Juju\'s model operator has: refusing to '
        "allow everything to them (restore Juju's selector)"
    )


def test_a_service_relabelled_as_ones_own_is_refused_when_it_is_another_apps_by_name(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    # The victim is a Juju app (its StatefulSet and its Services); the intruder relabelled the
    # victim's Service as its own and asks for an ALLOW on it.
    juju_seed.seed_app(kube.client(), "victim", MODEL)
    seed_service(kube, "victim-endpoints", {"app.kubernetes.io/name": "intruder"})
    service = kube.get("services", MODEL, "victim")
    assert service is not None
    service["metadata"]["labels"]["app.kubernetes.io/name"] = "intruder"
    kube.put(service)
    seed_service(kube, "intruder")
    relation = mesh_relation(
        "intruder", [wire_policy("sender", "intruder", target_service="victim")]
    )
    endpoints = mesh_relation(
        "intruder", [wire_policy("sender", "intruder", target_service="victim-endpoints")]
    )

    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[relation, endpoints]))

    assert not [name for name in policies_in(kube) if "victim" in name]
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "refused a request from intruder" in out.unit_status.message
    assert "victim" in out.unit_status.message


def test_an_extra_service_stays_its_apps_while_its_policies_exist_whatever_its_label(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    """An app that relabels another app's extra Service as its own gets no grant on it."""
    client = kube.client()
    juju_seed.seed_app(client, "foo", MODEL)
    juju_seed.seed_app(client, "intruder", MODEL)
    bound = {"app.kubernetes.io/name": "foo", "istio.io/use-waypoint": WAYPOINT}
    seed_service(kube, "foo-admin", bound)
    foo = mesh_relation("foo", [wire_policy("trusted", "foo", target_service="foo-admin")])
    intruder = mesh_relation("intruder", [])
    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[foo, intruder]))
    before = set(policies_in(kube))
    assert any("foo-admin" in name for name in before)

    def relabel(app: str) -> None:
        service = kube.get("services", MODEL, "foo-admin")
        assert service is not None
        service["metadata"]["labels"]["app.kubernetes.io/name"] = app
        kube.put(service)

    # Any app may patch Services: the intruder claims foo-admin and asks for a grant on it.
    relabel("intruder")
    asks = dataclasses.replace(
        intruder,
        remote_app_data={
            "policies": json.dumps(
                [wire_policy("attacker", "intruder", target_service="foo-admin")]
            )
        },
    )
    out = ctx.run(ctx.on.relation_changed(asks), dataclasses.replace(out, relations=[foo, asks]))
    assert set(policies_in(kube)) == before
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith("refused a request from intruder")
    assert 'Service "foo-admin" belongs to foo' in out.unit_status.message

    # Labelled back, nothing of the intruder's is held either.
    relabel("foo")
    out = ctx.run(ctx.on.update_status(), out)
    assert set(policies_in(kube)) == before


def test_a_same_named_policy_of_someone_else_is_refused_not_taken_over(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    seed_model_operator(kube)
    theirs = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-juju-model-operator", "namespace": MODEL, "labels": {}},
        "spec": {"selector": {"matchLabels": {"app": "theirs"}}, "action": "DENY", "rules": [{}]},
    }
    kube.put(theirs, field_manager="someone-else")

    out = ctx.run(ctx.on.config_changed(), beacon_state(config=ON_MESH))

    stored = policies_in(kube)["allow-juju-model-operator"]
    assert stored["spec"] == theirs["spec"]
    assert MANAGED_BY not in (stored["metadata"].get("labels") or {})
    assert out.unit_status == testing.BlockedStatus(
        f"AuthorizationPolicy {MODEL}/allow-juju-model-operator exists and is not the beacon's: "
        "remove or rename it"
    )


def test_a_same_named_autoscaler_of_someone_else_is_refused_not_taken_over(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    theirs = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": WAYPOINT, "namespace": MODEL, "labels": {"team": "theirs"}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "minReplicas": 1,
            "maxReplicas": 7,
        },
    }
    kube.put(theirs, field_manager="someone-else")

    out = ctx.run(ctx.on.config_changed(), beacon_state())

    stored = kube.get("horizontalpodautoscalers", MODEL, WAYPOINT)
    assert stored is not None
    assert stored["spec"] == theirs["spec"]
    assert out.unit_status == testing.BlockedStatus(
        f"cannot run the waypoint: HorizontalPodAutoscaler {MODEL}/{WAYPOINT} exists and is not "
        "the beacon's (no charms.canonical.com/service-mesh.managed-by label of this beacon): "
        "remove or rename it"
    )
    # Removal leaves it too.
    ctx.run(ctx.on.remove(), beacon_state(planned_units=0))
    assert kube.get("horizontalpodautoscalers", MODEL, WAYPOINT) is not None


def test_a_waypoint_label_someone_else_put_on_the_model_operator_service_is_left_alone(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    selector = seed_model_operator(kube)
    service = kube.get("services", MODEL, "modeloperator")
    assert service is not None
    service["metadata"]["labels"]["istio.io/use-waypoint"] = "theirs"
    kube.put(service, field_manager="kubectl-label")

    out = ctx.run(ctx.on.config_changed(), beacon_state(config=ON_MESH))

    assert _service_labels(kube, "modeloperator")["istio.io/use-waypoint"] == "theirs"
    assert NAMESPACE_OWNER not in _service_labels(kube, "modeloperator")
    policy = kube.get("authorizationpolicies", MODEL, "allow-juju-model-operator")
    assert policy is not None  # its pods stay reachable through ztunnel all the same
    assert policy["spec"]["selector"] == {"matchLabels": selector}
    assert out.unit_status == testing.BlockedStatus(
        "model-on-mesh: Service modeloperator is labelled istio.io/use-waypoint=theirs by "
        "someone else"
    )


def test_removal_takes_its_label_off_the_model_operator_service(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    seed_model_operator(kube)
    juju_labels = _service_labels(kube, "modeloperator")
    ctx.run(ctx.on.config_changed(), beacon_state(config=ON_MESH))

    ctx.run(ctx.on.remove(), beacon_state(config=ON_MESH, planned_units=0))

    assert _service_labels(kube, "modeloperator") == juju_labels


# --- what Istio says about each policy ------------------------------------------------------


def _with_istio_condition(
    kube: FakeKubeServer, name: str, condition: dict[str, Any]
) -> dict[str, Any]:
    policy = kube.get("authorizationpolicies", MODEL, name)
    assert policy is not None
    generation = policy["metadata"].get("generation", 1)
    policy["status"] = {"conditions": [{"observedGeneration": generation, **condition}]}
    return kube.put(policy, field_manager="pilot-discovery")


def _app_request(ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer) -> testing.State:
    relation = mesh_relation(APP, [wire_policy("sender", APP)])
    istio_runs_waypoint(kube)
    return ctx.run(ctx.on.config_changed(), beacon_state(relations=[relation]))


def test_a_policy_istio_does_not_enforce_is_reported_with_istios_reason(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    out = _app_request(ctx, kube)
    (name,) = request_policies(kube)
    stored = _with_istio_condition(
        kube,
        name,
        {
            "type": "WaypointAccepted",
            "status": "False",
            "reason": "AncestorNotBound",
            "message": f"Service {MODEL}/{APP} is not bound to a waypoint",
        },
    )

    out = ctx.run(ctx.on.update_status(), out)

    assert out.unit_status == testing.BlockedStatus(
        f"Istio does not enforce policy {name} ({APP}): AncestorNotBound: "
        f"Service {MODEL}/{APP} is not bound to a waypoint"
    )
    after = kube.get("authorizationpolicies", MODEL, name)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


@pytest.mark.parametrize(
    "condition",
    [
        {"type": "WaypointAccepted", "status": "True", "reason": "Accepted", "message": "bound"},
        {"type": "WaypointAccepted", "status": "False", "reason": "Old", "observedGeneration": 0},
    ],
    ids=["enforced", "about an older version"],
)
def test_a_policy_istio_enforces_or_has_not_looked_at_again_is_fine(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, condition: dict[str, Any]
):
    out = _app_request(ctx, kube)
    (name,) = request_policies(kube)
    if condition.get("observedGeneration") == 0:
        condition = {**condition, "observedGeneration": 1000}
    _with_istio_condition(kube, name, condition)

    out = ctx.run(ctx.on.update_status(), out)

    assert out.unit_status == testing.ActiveStatus()


def test_istios_text_is_cut_short_and_kept_on_one_printable_line(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    out = _app_request(ctx, kube)
    (name,) = request_policies(kube)
    _with_istio_condition(
        kube,
        name,
        {
            "type": "ZtunnelAccepted",
            "status": "False",
            "reason": "UnsupportedValue",
            "message": "line one\nline\x07two " + "x" * 500,
        },
    )

    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out))

    message = out.unit_status.message
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "\n" not in message
    assert "\x07" not in message
    assert message.endswith("...")
    assert len(message) < 300


@pytest.mark.parametrize(
    ("current", "off_waypoint", "patch", "conflict"),
    [
        ({}, True, {"istio.io/use-waypoint": "none", NAMESPACE_OWNER: OWNER}, None),
        ({"istio.io/use-waypoint": "none"}, True, {}, None),  # someone else did it already
        ({"istio.io/use-waypoint": "none", NAMESPACE_OWNER: OWNER}, True, {}, None),
        (
            {"istio.io/use-waypoint": "theirs"},
            True,
            {},
            "Service modeloperator is labelled istio.io/use-waypoint=theirs by someone else",
        ),
        (
            {"istio.io/use-waypoint": "none", NAMESPACE_OWNER: OWNER},
            False,
            {"istio.io/use-waypoint": None, NAMESPACE_OWNER: None},
            None,
        ),
        # Someone changed the value since: theirs now, only the owner label goes.
        (
            {"istio.io/use-waypoint": "theirs", NAMESPACE_OWNER: OWNER},
            False,
            {NAMESPACE_OWNER: None},
            None,
        ),
        ({"istio.io/use-waypoint": "none"}, False, {}, None),
    ],
)
def test_the_model_operator_service_labels_are_planned_like_the_namespace_labels(
    current: dict[str, str],
    off_waypoint: bool,
    patch: dict[str, str | None],
    conflict: str | None,
):
    plan = plan_service_labels(current, off_waypoint=off_waypoint, owner=OWNER)

    assert (plan.patch, plan.conflict) == (patch, conflict)


def test_in_istios_root_namespace_it_writes_nothing_and_says_why(kube: FakeKubeServer):
    juju_seed.seed_app(kube.client(), "istio-beacon-k8s", "istio-system")
    ctx = testing.Context(IstioBeaconCharm, app_name="istio-beacon-k8s")
    state = dataclasses.replace(
        beacon_state(config=ON_MESH), model=testing.Model(name="istio-system")
    )
    kube.reset_requests()

    out = ctx.run(ctx.on.config_changed(), state)

    assert kube.write_count() == 0
    assert out.unit_status == testing.BlockedStatus(
        "this model is Istio's root namespace (istio-system), where a policy applies to the whole "
        "mesh: deploy the beacon in the model of the apps it serves"
    )
