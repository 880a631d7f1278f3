"""The ``access-map`` and ``explain`` actions, run by ops.testing, against a real API server.

The model holds the beacon, two apps on the mesh related through it, one app off the mesh, the
waypoint's Deployment (its readiness set through the status subresource, as the controller
manager would) and AuthorizationPolicies the beacon did not make: what the actions read is what
a real kube-apiserver returns, defaults and all.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0.service_mesh import Endpoint, MeshPolicy, Method
from lightkube import Client, codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.rbac_v1 import PolicyRule
from ops import testing
from support import istiod_standin, juju_seed
from support.kube_server import KubeServer
from waypoint import waypoint_name

APP = "istio-beacon-k8s"
SENDER, RECEIVER, LEGACY = "sender", "receiver", "legacy"
AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)


@pytest.fixture
def ctx() -> testing.Context[IstioBeaconCharm]:
    return testing.Context(IstioBeaconCharm, app_name=APP)


def mesh_labels(model: str) -> dict[str, str]:
    return {
        "istio.io/dataplane-mode": "ambient",
        "istio.io/use-waypoint": waypoint_name(model, APP),
        "istio.io/use-waypoint-namespace": model,
    }


def seed_app(admin: Client, model: str, app: str, on_mesh: bool) -> None:
    labels = mesh_labels(model) if on_mesh else {}
    admin.create(
        codecs.from_dict(juju_seed.statefulset_manifest(app, model, **labels)),
        field_manager=juju_seed.JUJU_FIELD_MANAGER,
    )
    juju_seed.seed_service(admin, app, model, {**juju_seed.app_labels(app), **labels})


def ready_waypoint(admin: Client, model: str) -> None:
    """The Deployment Istio makes for the waypoint, with its replica ready."""
    istiod_standin.run_deployment(admin, waypoint_name(model, APP), model)


def foreign(admin: Client, model: str, name: str, spec: dict[str, Any]) -> None:
    manifest = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": model},
        "spec": spec,
    }
    admin.create(AuthorizationPolicy.from_dict(manifest))


@pytest.fixture
def model(kube: KubeServer, admin: Client, namespace: str, monkeypatch: pytest.MonkeyPatch) -> str:
    juju_seed.seed_app(admin, APP, namespace)
    seed_app(admin, namespace, SENDER, on_mesh=True)
    seed_app(admin, namespace, RECEIVER, on_mesh=True)
    seed_app(admin, namespace, LEGACY, on_mesh=False)
    ready_waypoint(admin, namespace)
    service = [{"group": "", "kind": "Service", "name": RECEIVER}]
    posts = {"to": [{"operation": {"methods": ["POST"]}}]}
    foreign(
        admin, namespace, "no-posts", {"action": "DENY", "targetRefs": service, "rules": [posts]}
    )
    metrics = {"to": [{"operation": {"ports": ["9090"]}}]}
    receiver_pods = {"matchLabels": {"app.kubernetes.io/name": RECEIVER}}
    foreign(admin, namespace, "open-metrics", {"selector": receiver_pods, "rules": [metrics]})
    admin_paths = {"to": [{"operation": {"paths": ["/admin/*"]}}]}
    custom = {"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [admin_paths]}
    foreign(admin, namespace, "ext-authz", {**custom, "targetRefs": service})
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
    return namespace


def mesh_relation(model: str) -> testing.Relation:
    policy = MeshPolicy(
        source_namespace=model,
        source_app_name=SENDER,
        target_namespace=model,
        target_app_name=RECEIVER,
        endpoints=[Endpoint(ports=[8080, 8081], methods=[Method.get], paths=["/data/*"])],
    )
    return testing.Relation(
        "service-mesh",
        remote_app_name=RECEIVER,
        remote_app_data={"policies": json.dumps([policy.to_dict()])},
    )


def program_gateway(admin: Client, model: str) -> None:
    """What istiod writes on the beacon's Gateway once it runs the waypoint."""
    istiod_standin.program_gateway(admin, waypoint_name(model, APP), model)


def reconciled(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str, relation: testing.Relation
):
    state = testing.State(
        leader=True, model=testing.Model(name=model), relations=[relation], planned_units=1
    )
    out = ctx.run(ctx.on.update_status(), state)
    program_gateway(admin, model)
    return out


def action(
    ctx: testing.Context[IstioBeaconCharm], state: testing.State, name: str, **params: Any
) -> dict[str, Any]:
    ctx.run(ctx.on.action(name, params=params), state)
    assert ctx.action_results is not None
    return ctx.action_results


def test_access_map_on_a_real_api_server(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    relation = mesh_relation(model)
    state = reconciled(ctx, admin, model, relation)

    data = json.loads(action(ctx, state, "access-map", format="json")["map"])

    assert data["waypoint"] == f"{waypoint_name(model, APP)} (ready)"
    ours = [g for g in data["grants"] if not g["foreign"] and not g["waypoint_access"]]
    assert [
        (g["source"], g["target"], g["level"], g["ports"], g["relation_id"]) for g in ours
    ] == [(SENDER, RECEIVER, "app", ["8080", "8081"], relation.id)]
    assert "narrowed by DENY policy no-posts" in ours[0]["caveats"]
    assert "an external authorizer also decides (CUSTOM policy ext-authz)" in ours[0]["caveats"]
    theirs = [g for g in data["grants"] if g["foreign"]]
    assert [(g["source"], g["target"], g["level"], g["ports"]) for g in theirs] == [
        ("anyone", RECEIVER, "unit", ["9090"])
    ]
    effects = {f["name"]: (f["effect"], f["targets"]) for f in data["foreign"]}
    assert effects == {
        "no-posts": ("narrows", [RECEIVER]),
        "open-metrics": ("widens", [RECEIVER]),
        "ext-authz": ("delegates", [RECEIVER]),
    }
    enrolment = {a["app"]: a["on_mesh"] for a in data["apps"]}
    assert enrolment == {APP: True, LEGACY: False, RECEIVER: True, SENDER: True}
    mermaid = action(ctx, state, "access-map", format="mermaid")["map"]
    assert "-.->" in mermaid
    assert "app 8080,8081 GET /data/*" in mermaid


GET_DATA: dict[str, Any] = {"port": 8080, "method": "GET", "path": "/data/1"}


@pytest.mark.parametrize(
    ("params", "verdict", "words"),
    [
        (GET_DATA, "allow", "allows it"),
        ({**GET_DATA, "port": 9000}, "deny", "opens 8080 and 8081, not 9000"),
        ({**GET_DATA, "method": "POST"}, "deny", "no-posts (not made by the beacon) denies it"),
        ({**GET_DATA, "path": "/admin/x"}, "unknown", "an external authorizer decides"),
        ({"port": 9090, "level": "unit"}, "allow", "open-metrics (not made by the beacon) allow"),
        ({"port": 8080, "level": "unit"}, "deny", "open-metrics (not made by the beacon) opens"),
        ({"port": 80, "target": LEGACY}, "allow", "legacy is not on the mesh, so nothing is"),
    ],
)
def test_explain_on_a_real_api_server(
    ctx: testing.Context[IstioBeaconCharm],
    admin: Client,
    model: str,
    params: dict[str, Any],
    verdict: str,
    words: str,
):
    state = reconciled(ctx, admin, model, mesh_relation(model))
    results = action(ctx, state, "explain", **{"source": SENDER, "target": RECEIVER, **params})
    assert results["verdict"] == verdict, results["explanation"]
    assert words in results["explanation"]


def test_without_rights_to_read_policies_it_says_how_to_trust_it(
    ctx: testing.Context[IstioBeaconCharm],
    kube: KubeServer,
    model: str,
    monkeypatch: pytest.MonkeyPatch,
):
    core_only = (PolicyRule(apiGroups=["", "apps"], resources=["*"], verbs=["get", "list"]),)
    monkeypatch.setenv("KUBECONFIG", str(kube.namespaced_kubeconfig(model, APP, rules=core_only)))
    state = testing.State(leader=True, model=testing.Model(name=model))
    with pytest.raises(testing.ActionFailed, match=f"run `juju trust {APP} --scope=cluster`"):
        ctx.run(ctx.on.action("access-map"), state)
