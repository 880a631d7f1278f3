"""The beacon's whole reconcile, run by ops.testing, against a real API server.

The charm finds its client through ``KUBECONFIG`` as it would find a cluster; each test is its own
model (namespace), seeded with what Juju creates for the beacon. Nothing runs Istio here: the
waypoint Deployment never appears, so a converged beacon is ``waiting`` for it.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import pytest
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0.service_mesh import (
    Endpoint,
    MeshPolicy,
    Method,
    PolicyTargetType,
    label_configmap_name,
)
from kube_names import MANAGED_BY, NAMESPACE_OWNER_LABEL
from kubernetes_client import is_applied
from lightkube import ALL_NS, ApiError, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.rbac_v1 import PolicyRule
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap, Namespace
from lightkube.types import PatchType
from namespace_labels import owner_value
from ops import testing
from support import juju_seed
from support.kube_server import AuditedWrite, KubeServer, count_requests, count_writes
from waypoint import build_gateway, gateway_resource, waypoint_name

APP = "istio-beacon-k8s"
REQUESTED_BY = "charms.canonical.com/service-mesh.requested-by"
AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)
MESH_KEYS = ("istio.io/dataplane-mode", "istio.io/use-waypoint", NAMESPACE_OWNER_LABEL)


@pytest.fixture
def ctx() -> testing.Context[IstioBeaconCharm]:
    return testing.Context(IstioBeaconCharm, app_name=APP)


@pytest.fixture
def model(kube: KubeServer, admin: Client, namespace: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A model with the beacon's StatefulSet and Service; the charm is trusted (admin)."""
    juju_seed.seed_app(admin, APP, namespace)
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
    return namespace


def state(
    model: str,
    relations: list[testing.Relation] | None = None,
    planned_units: int = 1,
    **config: bool,
) -> testing.State:
    return testing.State(
        leader=True,
        model=testing.Model(name=model),
        relations=relations or [],
        config={key.replace("_", "-"): value for key, value in config.items()},
        planned_units=planned_units,
        containers=[testing.Container("metrics-proxy", can_connect=False)],
    )


def request(model: str, source: str, target: str | None, port: int = 8080, **fields: Any) -> Any:
    """One policy as a consumer's library writes it (app policy by default)."""
    unit = fields.get("target_type") == PolicyTargetType.unit
    endpoint = Endpoint(ports=[port]) if unit else Endpoint(ports=[port], methods=[Method.get])
    policy = MeshPolicy(
        source_namespace=model,
        source_app_name=source,
        target_namespace=model,
        target_app_name=target,
        endpoints=[endpoint],
        **fields,
    )
    return policy.to_dict()


def relation(app: str, policies: list[Any] | str) -> testing.Relation:
    data = policies if isinstance(policies, str) else json.dumps(policies)
    return testing.Relation(
        "service-mesh", remote_app_name=app, remote_app_data={"policies": data}
    )


def owned(client: Client, resource: Any, model: str, namespace: str = ALL_NS) -> dict[str, Any]:
    """The objects of a kind the beacon of ``model`` owns, by ``namespace/name``."""
    api: Any = client
    labels = {MANAGED_BY: owner_value(model, APP)}
    return {
        f"{item.metadata.namespace}/{item.metadata.name}": item.to_dict()
        for item in api.list(resource, namespace=namespace, labels=labels)
    }


def requested_by(client: Client, model: str) -> dict[str, int]:
    """How many AuthorizationPolicies each app has, from their ``requested-by`` label."""
    counts: dict[str, int] = {}
    for policy in owned(client, AuthorizationPolicy, model).values():
        app = policy["metadata"]["labels"].get(REQUESTED_BY)
        if app is not None:
            counts[app] = counts.get(app, 0) + 1
    return counts


def describe_writes(kube: KubeServer, writes: list[AuditedWrite]) -> str:
    """Each write as ``VERB uri (user, code)`` with its body and, if any, the stored object now."""
    lines = [f"{len(writes)} unexpected write(s):"]
    for write in writes:
        lines.append(f"{write.verb.upper()} {write.uri} ({write.user}, {write.code})")
        lines.append(f"  body: {json.dumps(write.body, sort_keys=True)}")
        path = write.uri.split("?", 1)[0]
        status, stored = kube.raw_request("GET", path)
        lines.append(f"  stored now ({status}): {json.dumps(stored, sort_keys=True)}")
    return "\n".join(lines)


def namespace_labels(client: Client, model: str) -> dict[str, str]:
    namespace = client.get(Namespace, model)
    assert namespace.metadata is not None
    return dict(namespace.metadata.labels or {})


def not_created_yet(model: str) -> testing.WaitingStatus:
    """The status while no Istio runs: the Gateway as the Gateway API CRD defaults its status."""
    name = waypoint_name(model, APP)
    return testing.WaitingStatus(
        "waiting for the waypoint: Gateway not Programmed (Pending: Waiting for controller); the "
        f"Gateway has no address yet; Istio has not created the {name} Deployment yet"
    )


def consumers(admin: Client, model: str, count: int) -> list[testing.Relation]:
    """``count`` related apps (with their Services), each asking for an app and a unit policy."""
    relations: list[testing.Relation] = []
    for i in range(count):
        app = f"receiver{i}"
        juju_seed.seed_service(admin, app, model)
        policies = [
            request(model, "sender", app),
            request(model, "sender", app, target_type=PolicyTargetType.unit),
        ]
        relations.append(relation(app, policies))
    return relations


def test_waypoint_objects_follow_the_planned_units(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    name = waypoint_name(model, APP)

    out = ctx.run(ctx.on.config_changed(), state(model, planned_units=2))

    gateways = owned(admin, gateway_resource(), model, model)
    assert list(gateways) == [f"{model}/{name}"]
    # The real Gateway schema kept everything the builder wrote (nothing pruned or refused).
    built = build_gateway(name, model, {MANAGED_BY: owner_value(model, APP)})
    assert is_applied(built, gateways[f"{model}/{name}"])
    autoscaler = admin.get(HorizontalPodAutoscaler, name, namespace=model)
    assert autoscaler.spec is not None
    assert (autoscaler.spec.minReplicas, autoscaler.spec.maxReplicas) == (2, 2)
    assert autoscaler.spec.scaleTargetRef.name == name
    assert out.unit_status == not_created_yet(model)  # no Istio runs here to create it

    ctx.run(ctx.on.update_status(), dataclasses.replace(out, planned_units=3))
    autoscaler = admin.get(HorizontalPodAutoscaler, name, namespace=model)
    assert autoscaler.spec is not None
    assert (autoscaler.spec.minReplicas, autoscaler.spec.maxReplicas) == (3, 3)

    ctx.run(ctx.on.update_status(), dataclasses.replace(out, planned_units=0))
    assert owned(admin, gateway_resource(), model, model) == {}
    assert owned(admin, HorizontalPodAutoscaler, model, model) == {}


def test_model_on_mesh_labels_the_namespace_and_takes_its_labels_back(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    admin.patch(
        Namespace, model, {"metadata": {"labels": {"team": "blue"}}}, patch_type=PatchType.MERGE
    )
    before = namespace_labels(admin, model)
    juju_seed.seed_model_operator(admin, model)

    out = ctx.run(ctx.on.config_changed(), state(model, model_on_mesh=True))

    assert namespace_labels(admin, model) == {
        **before,
        "istio.io/dataplane-mode": "ambient",
        "istio.io/use-waypoint": waypoint_name(model, APP),
        NAMESPACE_OWNER_LABEL: owner_value(model, APP),
    }
    assert list(owned(admin, AuthorizationPolicy, model)) == [f"{model}/allow-juju-model-operator"]
    assert out.unit_status == not_created_yet(model)

    ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={"model-on-mesh": False}))

    assert namespace_labels(admin, model) == before
    assert owned(admin, AuthorizationPolicy, model) == {}


@pytest.mark.parametrize(
    ("theirs", "conflict"),
    [
        (
            {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "their-waypoint"},
            "already has istio.io/dataplane-mode, istio.io/use-waypoint set by someone else",
        ),
        (
            {"istio.io/dataplane-mode": "ambient", NAMESPACE_OWNER_LABEL: "other.beacon"},
            "is put on the mesh by other.beacon",
        ),
    ],
    ids=["unowned mesh labels", "another beacon"],
)
def test_namespace_labels_of_another_owner_are_left_alone(
    ctx: testing.Context[IstioBeaconCharm],
    admin: Client,
    model: str,
    theirs: dict[str, str],
    conflict: str,
):
    admin.patch(Namespace, model, {"metadata": {"labels": theirs}}, patch_type=PatchType.MERGE)
    before = admin.get(Namespace, model)

    out = ctx.run(ctx.on.config_changed(), state(model, model_on_mesh=True))

    after = admin.get(Namespace, model)
    assert before.metadata is not None
    assert after.metadata is not None
    assert after.metadata.resourceVersion == before.metadata.resourceVersion
    assert out.unit_status == testing.BlockedStatus(
        f"model-on-mesh: namespace {model} {conflict}; leaving its labels alone, so related apps "
        "keep their own mesh labels"
    )


def test_policies_follow_the_requests_of_several_consumers(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    relations = consumers(admin, model, 3)
    # A second Service of receiver0, which receiver0 bound to the waypoint itself.
    juju_seed.seed_service(
        admin,
        "receiver0-admin",
        model,
        {
            "app.kubernetes.io/name": "receiver0",
            "istio.io/use-waypoint": waypoint_name(model, APP),
        },
    )
    relations[0] = dataclasses.replace(
        relations[0],
        remote_app_data={
            "policies": json.dumps(
                [
                    *json.loads(relations[0].remote_app_data["policies"]),
                    request(model, "sender", "receiver0", target_service="receiver0-admin"),
                ]
            )
        },
    )

    out = ctx.run(ctx.on.config_changed(), state(model, relations))

    assert requested_by(admin, model) == {"receiver0": 3, "receiver1": 2, "receiver2": 2}
    policies = owned(admin, AuthorizationPolicy, model)
    targets = sorted(
        ref["name"] for p in policies.values() for ref in p["spec"].get("targetRefs", [])
    )
    assert targets == ["receiver0", "receiver0-admin", "receiver1", "receiver2"]

    # receiver1 changes its request: its policy follows, the others are not written.
    versions = {key: p["metadata"]["resourceVersion"] for key, p in policies.items()}
    changed = dataclasses.replace(
        out.get_relation(relations[1].id),
        remote_app_data={"policies": json.dumps([request(model, "sender", "receiver1", 9090)])},
    )
    out = ctx.run(
        ctx.on.relation_changed(changed),
        dataclasses.replace(
            out, relations=[r for r in out.relations if r.id != changed.id] + [changed]
        ),
    )
    after = owned(admin, AuthorizationPolicy, model)
    receiver1 = [
        p for p in after.values() if p["metadata"]["labels"].get(REQUESTED_BY) == "receiver1"
    ]
    assert [p["spec"]["rules"][0]["to"][0]["operation"]["ports"] for p in receiver1] == [["9090"]]
    untouched = {k: v for k, v in versions.items() if k in after}
    assert len(untouched) == 7 + 3 - 2  # all but receiver1's two (the waypoint's 3 included)
    assert all(after[k]["metadata"]["resourceVersion"] == v for k, v in untouched.items())

    # receiver2's relation goes: its policies go with it.
    ctx.run(ctx.on.relation_broken(out.get_relation(relations[2].id)), out)
    assert requested_by(admin, model) == {"receiver0": 3, "receiver1": 1}


def test_adversarial_requests_are_refused_and_the_rest_applied(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    for app in ("receiver1", "liar", "victim"):
        juju_seed.seed_service(admin, app, model)
    juju_seed.seed_service(admin, "victim-admin", model, {"app.kubernetes.io/name": "victim"})
    honest = relation("receiver1", [request(model, "sender", "receiver1")])
    liar = relation(
        "liar",
        [
            request(model, "sender", "liar"),  # its own: fine
            request(model, "sender", "victim"),
            request(model, "sender", "liar", target_service="victim-admin"),
            {**request(model, "sender", "liar"), "target_namespace": "kube-system"},
        ],
    )
    garbled = relation("garbled", "{not json")

    out = ctx.run(ctx.on.config_changed(), state(model, [honest, liar, garbled]))

    assert requested_by(admin, model) == {"receiver1": 1, "liar": 1}
    assert {key.split("/")[0] for key in owned(admin, AuthorizationPolicy, model)} == {model}
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith("refused a request from ")
    assert out.unit_status.message.endswith(" more from garbled, liar; see juju debug-log)")


def test_not_managing_policies_deletes_them(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    juju_seed.seed_model_operator(admin, model)
    relations = consumers(admin, model, 2)
    out = ctx.run(ctx.on.config_changed(), state(model, relations, model_on_mesh=True))
    # 2 requests each, the waypoint's access to each app, the model operator's.
    assert len(owned(admin, AuthorizationPolicy, model)) == 2 * 2 + 2 + 1

    config = {"model-on-mesh": True, "manage-authorization-policies": False}
    ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config=config))

    assert owned(admin, AuthorizationPolicy, model) == {}
    assert owned(admin, gateway_resource(), model)  # the rest stays


@pytest.mark.parametrize("model_on_mesh", [False, True], ids=["per-app labels", "model on mesh"])
def test_a_steady_state_reconcile_writes_nothing(
    ctx: testing.Context[IstioBeaconCharm],
    kube: KubeServer,
    admin: Client,
    model: str,
    model_on_mesh: bool,
):
    juju_seed.seed_model_operator(admin, model)
    relations = consumers(admin, model, 3)
    out = ctx.run(
        ctx.on.config_changed(),
        state(model, relations, planned_units=2, model_on_mesh=model_on_mesh),
    )
    assert len(owned(admin, AuthorizationPolicy, model)) == 3 * 2 + 3 + model_on_mesh

    before, mark = kube.request_counts(), kube.audit_mark()
    out = ctx.run(ctx.on.update_status(), out)
    out = ctx.run(ctx.on.relation_changed(out.get_relation(relations[0].id)), out)
    after = kube.request_counts()

    assert count_requests(before, after, verbs=["LIST"]) > 0  # it did look
    if count_writes(before, after):
        pytest.fail(describe_writes(kube, kube.writes_since(mark)))
    assert out.unit_status == not_created_yet(model)


def test_removal_deletes_what_the_beacon_created_and_nothing_else(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    admin.patch(
        Namespace, model, {"metadata": {"labels": {"team": "blue"}}}, patch_type=PatchType.MERGE
    )
    labels_before = namespace_labels(admin, model)
    theirs = {"app.kubernetes.io/managed-by": "someone-else"}
    others: list[Any] = [
        AuthorizationPolicy.from_dict(
            {
                "metadata": {"name": "theirs", "namespace": model, "labels": theirs},
                "spec": {"action": "ALLOW", "rules": [{}]},
            }
        ),
        gateway_resource().from_dict(
            {
                "metadata": {"name": "their-gateway", "namespace": model, "labels": theirs},
                "spec": build_gateway("their-gateway", model, theirs)["spec"],
            }
        ),
        ConfigMap.from_dict(
            {"metadata": {"name": "theirs", "namespace": model, "labels": theirs}}
        ),
    ]
    for obj in others:
        admin.create(obj)
    juju_seed.seed_model_operator(admin, model)
    relations = consumers(admin, model, 2)
    out = ctx.run(
        ctx.on.config_changed(),
        state(model, relations, planned_units=2, model_on_mesh=True),
    )
    assert owned(admin, gateway_resource(), model)
    assert len(owned(admin, AuthorizationPolicy, model)) == 2 * 2 + 2 + 1

    out = ctx.run(ctx.on.remove(), dataclasses.replace(out, planned_units=0))

    for resource in (gateway_resource(), HorizontalPodAutoscaler, AuthorizationPolicy):
        assert owned(admin, resource, model) == {}, resource
    assert namespace_labels(admin, model) == labels_before
    with pytest.raises(ApiError):
        admin.get(ConfigMap, label_configmap_name(APP), namespace=model)
    assert admin.get(AuthorizationPolicy, "theirs", namespace=model)
    assert admin.get(gateway_resource(), "their-gateway", namespace=model)
    assert admin.get(ConfigMap, "theirs", namespace=model)
    assert out.unit_status == testing.MaintenanceStatus("removed the mesh resources")


@pytest.fixture
def bare_model(bare_kube: KubeServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A model with the beacon on the server without any CRD (no Istio, no Gateway API)."""
    name = f"no-istio-{uuid.uuid4().hex[:6]}"
    with bare_kube.admin_client(field_manager="kube-tier-tests") as admin:
        juju_seed.seed_app(admin, APP, name)
    monkeypatch.setenv("KUBECONFIG", str(bare_kube.kubeconfig_path))
    return name


def test_without_istio_it_says_to_deploy_it(
    ctx: testing.Context[IstioBeaconCharm], bare_kube: KubeServer, bare_model: str
):
    mesh = relation("receiver1", [request(bare_model, "sender", "receiver1")])

    out = ctx.run(ctx.on.config_changed(), state(bare_model, [mesh], model_on_mesh=True))

    assert out.unit_status == testing.BlockedStatus(
        "deploy istio-k8s: Istio is missing (gateways.gateway.networking.k8s.io, "
        "authorizationpolicies.security.istio.io not installed)"
    )
    assert out.get_relation(mesh.id).local_app_data["labels"] == "{}"
    with bare_kube.admin_client() as admin:
        assert namespace_labels(admin, bare_model)[NAMESPACE_OWNER_LABEL] == owner_value(
            bare_model, APP
        )

        out = ctx.run(ctx.on.remove(), dataclasses.replace(out, planned_units=0))

        assert out.unit_status == testing.MaintenanceStatus("removed the mesh resources")
        assert NAMESPACE_OWNER_LABEL not in namespace_labels(admin, bare_model)


#: An app that may only read in its own namespace: every write the beacon makes is refused.
READ_ONLY = (PolicyRule(apiGroups=["*"], resources=["*"], verbs=["get", "list", "watch"]),)


def test_without_trust_it_says_how_to_trust_it(
    ctx: testing.Context[IstioBeaconCharm],
    kube: KubeServer,
    admin: Client,
    model: str,
    monkeypatch: pytest.MonkeyPatch,
):
    kubeconfig = kube.namespaced_kubeconfig(model, APP, rules=READ_ONLY)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    juju_seed.seed_service(admin, "receiver1", model)
    mesh = relation("receiver1", [request(model, "sender", "receiver1")])

    out = ctx.run(ctx.on.config_changed(), state(model, [mesh], model_on_mesh=True))

    # The namespace is the first step (it decides what consumers are told), the first refused.
    assert out.unit_status == testing.BlockedStatus(
        f"run `juju trust {APP} --scope=cluster` or bind the Role in charms/beacon/rbac "
        "(docs/beacon.md): Kubernetes refused to label the namespace"
    )
    assert owned(admin, gateway_resource(), model) == {}
    assert owned(admin, AuthorizationPolicy, model) == {}
    assert NAMESPACE_OWNER_LABEL not in namespace_labels(admin, model)


def test_a_role_over_its_own_namespace_is_enough(
    ctx: testing.Context[IstioBeaconCharm],
    kube: KubeServer,
    admin: Client,
    model: str,
    monkeypatch: pytest.MonkeyPatch,
):
    # Every verb on every resource, through a Role in the model's namespace only: RBAC counts the
    # Namespace object itself as in that namespace, and the policy manager falls back from its
    # refused cluster-wide list to the namespace. Nothing the beacon does needs more.
    monkeypatch.setenv("KUBECONFIG", str(kube.namespaced_kubeconfig(model, APP)))
    juju_seed.seed_model_operator(admin, model)
    relations = consumers(admin, model, 1)

    out = ctx.run(ctx.on.config_changed(), state(model, relations, model_on_mesh=True))

    assert out.unit_status == not_created_yet(model)
    assert namespace_labels(admin, model)[NAMESPACE_OWNER_LABEL] == owner_value(model, APP)
    # 2 requests, the waypoint's access to the app, the model operator's.
    assert len(owned(admin, AuthorizationPolicy, model)) == 4
