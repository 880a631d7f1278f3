"""The packed beacon run through its ``dispatch`` as Juju runs it, against a real API server.

Consumers are packed testers run the same way (before their workload's Pebble is involved): each
side's hooks read what the other side's hooks wrote, through the hook tools' state. Nothing runs
Istio here: the test stands in for it where the beacon waits on it (the waypoint Deployment).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from juju_unit_agent import HookRun, JujuModel
from lightkube import ApiError, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap, Namespace, Service

BEACON = "istio-beacon-k8s"
MANAGED_BY = "charms.canonical.com/service-mesh.managed-by"
MESH_LABELS = ("istio.io/dataplane-mode", "istio.io/use-waypoint", "istio.io/use-waypoint-namespace")
AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)
Gateway = create_namespaced_resource(
    "gateway.networking.k8s.io", "v1", "Gateway", "gateways"
)


def ok(runs: list[HookRun] | HookRun) -> None:
    """Every hook exited 0 (the message shows the first that did not)."""
    for run in runs if isinstance(runs, list) else [runs]:
        assert run.exit_code == 0, run.describe()


def waypoint(model: JujuModel) -> str:
    return f"{model.name}-{BEACON}-waypoint"


def owned(model: JujuModel, resource: Any) -> dict[str, dict[str, Any]]:
    """Objects of a kind that carry the beacon's ownership label, by name."""
    api: Any = model.admin
    labels = {MANAGED_BY: f"{model.name}.{BEACON}"}
    return {
        item.metadata.name: item.to_dict()
        for item in api.list(resource, namespace=model.name, labels=labels)
    }


def policies_for(model: JujuModel) -> dict[str, dict[str, Any]]:
    """The AuthorizationPolicies in the model's namespace, by name."""
    api: Any = model.admin
    return {p.metadata.name: p.to_dict() for p in api.list(AuthorizationPolicy, namespace=model.name)}


def namespace_labels(model: JujuModel) -> dict[str, str]:
    ns = model.admin.get(Namespace, model.name)
    assert ns.metadata is not None
    return dict(ns.metadata.labels or {})


def pod_template_labels(model: JujuModel, app: str) -> dict[str, str]:
    sts = model.admin.get(StatefulSet, app, namespace=model.name)
    assert sts.spec is not None and sts.spec.template.metadata is not None
    return dict(sts.spec.template.metadata.labels or {})


def service_labels(model: JujuModel, app: str) -> dict[str, str]:
    svc = model.admin.get(Service, app, namespace=model.name)
    assert svc.metadata is not None
    return dict(svc.metadata.labels or {})


def istio_runs_the_waypoint(model: JujuModel, ready: int = 1) -> None:
    """What Istio does for a waypoint Gateway: a Deployment named like it, here with ``ready``
    replicas reported ready (no kubelet runs, so the status is written directly)."""
    name = waypoint(model)
    labels = {"gateway.networking.k8s.io/gateway-name": name}
    client: Client = model.admin
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": model.name, "labels": labels},
        "spec": {
            "replicas": ready,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "istio-proxy", "image": "istio/proxyv2"}]},
            },
        },
    }
    from lightkube import codecs

    try:
        client.create(codecs.from_dict(manifest), field_manager="istio")
    except ApiError as e:
        if e.status.code != 409:
            raise
    client.patch(
        Deployment,
        name,
        {"status": {"replicas": ready, "readyReplicas": ready, "availableReplicas": ready}},
        namespace=model.name,
        subresource="status",
        field_manager="istio",
    )


def deploy_beacon(model: JujuModel, charm: Path, *, trust: bool = True, **config: Any) -> str:
    model.deploy(BEACON, charm, trust=trust, config={k.replace("_", "-"): v for k, v in config.items()})
    runs = model.start_units(BEACON)
    ok(runs)
    return f"{BEACON}/0"


def deploy_tester(model: JujuModel, charm: Path, app: str) -> str:
    model.deploy(app, charm)
    ok(model.start_units(app))
    return f"{app}/0"


def relate_mesh(model: JujuModel, app: str) -> int:
    """``juju integrate BEACON:service-mesh APP:service-mesh`` and the hooks that follow, in the
    order Juju runs them: created on both sides, then each unit sees the other join."""
    rid = model.relate(BEACON, "service-mesh", app, "service-mesh")
    runs = [
        model.run_hook(f"{BEACON}/0", "service-mesh-relation-created", relation_id=rid),
        model.run_hook(f"{app}/0", "service-mesh-relation-created", relation_id=rid),
    ]
    runs += model.join(rid, f"{app}/0", f"{BEACON}/0")
    runs += model.join(rid, f"{BEACON}/0", f"{app}/0")
    # The consumer's leader wrote its policies after the beacon's first look: Juju tells the
    # consumer that the beacon's data changed, and the beacon that the consumer's did.
    runs.append(model.changed(rid, f"{app}/0", f"{BEACON}/0"))
    runs.append(model.changed(rid, f"{BEACON}/0", f"{app}/0"))
    ok(runs)
    return rid


def relate_inbound(model: JujuModel, receiver: str, sender: str) -> int:
    """``juju integrate RECEIVER:inbound SENDER:outbound`` with its hooks on both sides."""
    rid = model.relate(receiver, "inbound", sender, "outbound")
    runs = [
        model.run_hook(f"{receiver}/0", "inbound-relation-created", relation_id=rid),
        model.run_hook(f"{sender}/0", "outbound-relation-created", relation_id=rid),
    ]
    runs += model.join(rid, f"{receiver}/0", f"{sender}/0")
    runs += model.join(rid, f"{sender}/0", f"{receiver}/0")
    ok(runs)
    return rid


def test_beacon_alone_installs_and_waits_for_istio(model: JujuModel, beacon_charm: Path):
    unit = deploy_beacon(model, beacon_charm)
    for run in model.history:
        assert "./src/charm.py" not in run.stderr  # the entry point ran (exec bit)
    status, message = model.unit_status(unit)
    assert (status, message) == (
        "waiting",
        f"waiting for the waypoint: Istio has not created the {waypoint(model)} Deployment yet",
    )
    gateways = owned(model, Gateway)
    assert list(gateways) == [waypoint(model)]
    assert gateways[waypoint(model)]["spec"]["gatewayClassName"] == "istio-waypoint"
    hpas = owned(model, HorizontalPodAutoscaler)
    assert [h["spec"]["minReplicas"] for h in hpas.values()] == [1]
    assert not any(key in namespace_labels(model) for key in MESH_LABELS)

    istio_runs_the_waypoint(model)
    ok(model.run_hook(unit, "update-status"))
    assert model.unit_status(unit) == ("active", "")

    # What the charm called through the hook tools, all answered with exit 0.
    tools = set().union(*(run.tools() for run in model.history))
    assert {"is-leader", "config-get", "status-set", "goal-state", "juju-log"} <= tools
    assert all(call["exit"] == 0 for run in model.history for call in run.calls)


def test_untrusted_beacon_says_how_to_trust_it(model: JujuModel, beacon_charm: Path):
    unit = deploy_beacon(model, beacon_charm, trust=False)
    status, message = model.unit_status(unit)
    assert status == "blocked"
    assert message.startswith(f"run `juju trust {BEACON} --scope=cluster`: Kubernetes refused")
    model.trust(BEACON)
    ok(model.run_hook(unit, "update-status"))
    assert model.unit_status(unit)[0] == "waiting"
    assert list(owned(model, Gateway)) == [waypoint(model)]


def test_mesh_relation_exchanges_labels_and_policies(
    model: JujuModel, beacon_charm: Path, tester_charm: Path
):
    beacon = deploy_beacon(model, beacon_charm)
    istio_runs_the_waypoint(model)
    receiver = deploy_tester(model, tester_charm, "receiver")
    deploy_tester(model, tester_charm, "sender")
    # Without Pebble the testers wait for their workload container, but every hook succeeds.
    assert model.unit_status(receiver) == ("waiting", "waiting for Pebble in the workload container")

    inbound = relate_inbound(model, "receiver", "sender")
    mesh = relate_mesh(model, "receiver")

    # Wire format: the beacon's app databag, as the receiver's hooks read it.
    published = model.app_data(mesh, BEACON)
    assert json.loads(published["labels"]) == {
        "istio.io/dataplane-mode": "ambient",
        "istio.io/use-waypoint": waypoint(model),
        "istio.io/use-waypoint-namespace": model.name,
    }
    assert json.loads(published["mesh_type"]) == "istio"
    # ... and the receiver's requests, as the beacon's hooks read them.
    requests = json.loads(model.app_data(mesh, "receiver")["policies"])
    app_policy = next(p for p in requests if p["target_type"] == "app")
    assert app_policy["source_app_name"] == "sender"
    assert app_policy["source_namespace"] == model.name
    assert app_policy["target_app_name"] == "receiver"
    assert app_policy["endpoints"][0]["ports"] == [8080, 8081]
    assert sorted(app_policy["endpoints"][0]["methods"]) == ["GET", "POST"]
    assert {p["target_type"] for p in requests} == {"app", "unit"}
    assert model.unit_data(mesh, f"{BEACON}/0") == {} or "ingress-address" in model.unit_data(
        mesh, f"{BEACON}/0"
    )

    # Kubernetes after the exchange: the receiver labelled itself, the beacon wrote its policies.
    for key, value in json.loads(published["labels"]).items():
        assert pod_template_labels(model, "receiver")[key] == value
        assert service_labels(model, "receiver")[key] == value
    assert not any(k in pod_template_labels(model, "sender") for k in MESH_LABELS)
    policies = owned(model, AuthorizationPolicy)
    assert policies, "the beacon wrote no AuthorizationPolicy for the receiver's request"
    sources = {
        principal
        for p in policies.values()
        for rule in p["spec"].get("rules", [])
        for source in rule.get("from", [])
        for principal in source["source"].get("principals", [])
    }
    assert f"cluster.local/ns/{model.name}/sa/sender" in sources
    assert model.admin.get(ConfigMap, f"juju-service-mesh-receiver-labels", namespace=model.name)
    assert model.unit_status(beacon) == ("active", "")

    # update-status everywhere changes nothing.
    before = policies_for(model)
    ok([model.run_hook(u, "update-status") for u in (beacon, receiver, "sender/0")])
    assert {n: p["metadata"]["resourceVersion"] for n, p in policies_for(model).items()} == {
        n: p["metadata"]["resourceVersion"] for n, p in before.items()
    }

    # The sender leaves the receiver: its access goes.
    ok(model.remove_relation(inbound))
    ok(model.changed(mesh, f"{BEACON}/0", "receiver/0"))
    requests = json.loads(model.app_data(mesh, "receiver")["policies"])
    assert not [p for p in requests if p["source_app_name"] == "sender"]
    assert not [
        p for p in owned(model, AuthorizationPolicy).values()
        if "sender" in json.dumps(p["spec"])
    ]

    # The mesh relation goes: the receiver takes its labels off, the beacon its policies.
    ok(model.remove_relation(mesh))
    assert not any(k in pod_template_labels(model, "receiver") for k in MESH_LABELS)
    assert not any(k in service_labels(model, "receiver") for k in MESH_LABELS)
    assert owned(model, AuthorizationPolicy) == {}


def test_config_toggles(model: JujuModel, beacon_charm: Path, tester_charm: Path):
    beacon = deploy_beacon(model, beacon_charm)
    istio_runs_the_waypoint(model)
    deploy_tester(model, tester_charm, "receiver")
    deploy_tester(model, tester_charm, "sender")
    relate_inbound(model, "receiver", "sender")
    mesh = relate_mesh(model, "receiver")
    assert owned(model, AuthorizationPolicy)

    # model-on-mesh: the namespace carries the labels, consumers are told to carry none.
    ok(model.set_config(BEACON, model_on_mesh=True))
    labels = namespace_labels(model)
    assert labels["istio.io/dataplane-mode"] == "ambient"
    assert labels["istio.io/use-waypoint"] == waypoint(model)
    assert json.loads(model.app_data(mesh, BEACON)["labels"]) == {}
    ok(model.changed(mesh, "receiver/0", f"{BEACON}/0"))
    assert not any(k in pod_template_labels(model, "receiver") for k in MESH_LABELS)

    ok(model.set_config(BEACON, model_on_mesh=False))
    assert not any(k in namespace_labels(model) for k in MESH_LABELS)
    ok(model.changed(mesh, "receiver/0", f"{BEACON}/0"))
    assert pod_template_labels(model, "receiver")["istio.io/use-waypoint"] == waypoint(model)

    # manage-authorization-policies off: every policy the beacon made goes, none is made.
    ok(model.set_config(BEACON, manage_authorization_policies=False))
    assert owned(model, AuthorizationPolicy) == {}
    assert model.unit_status(beacon) == ("active", "not managing authorization policies")
    ok(model.changed(mesh, f"{BEACON}/0", "receiver/0"))
    assert owned(model, AuthorizationPolicy) == {}
    ok(model.set_config(BEACON, manage_authorization_policies=True))
    assert owned(model, AuthorizationPolicy)
    assert model.unit_status(beacon) == ("active", "")


def test_second_unit_is_standby_and_the_waypoint_follows(model: JujuModel, beacon_charm: Path):
    leader = deploy_beacon(model, beacon_charm)
    istio_runs_the_waypoint(model)
    second = model.add_unit(BEACON)
    ok(model.start_units(BEACON, [second]))
    peers = model.peer_relation(BEACON)
    ok(model.join(peers, second, leader))
    ok(model.join(peers, leader, second))
    assert model.unit_status(second) == ("active", "standby")
    assert [h["spec"]["minReplicas"] for h in owned(model, HorizontalPodAutoscaler).values()] == [2]
    assert model.unit_status(leader)[0] == "waiting"  # 1/2 waypoint replicas ready
    istio_runs_the_waypoint(model, ready=2)
    ok([model.run_hook(u, "update-status") for u in (leader, second)])
    assert model.unit_status(leader) == ("active", "")
    # The follower never wrote Kubernetes objects nor app data: it only reports standby.
    assert not any(
        call["tool"] == "relation-set" for run in model.history if run.unit == second for call in run.calls
    )


def test_removal_leaves_nothing(model: JujuModel, beacon_charm: Path, tester_charm: Path):
    deploy_beacon(model, beacon_charm, model_on_mesh=True)
    istio_runs_the_waypoint(model)
    deploy_tester(model, tester_charm, "receiver")
    deploy_tester(model, tester_charm, "sender")
    relate_inbound(model, "receiver", "sender")
    relate_mesh(model, "receiver")
    assert namespace_labels(model)["istio.io/dataplane-mode"] == "ambient"

    ok(model.remove_app(BEACON))
    assert owned(model, Gateway) == {}
    assert owned(model, HorizontalPodAutoscaler) == {}
    assert owned(model, AuthorizationPolicy) == {}
    assert policies_for(model) == {}
    assert not any(k in namespace_labels(model) for k in (*MESH_LABELS, MANAGED_BY))
    assert not any(k in pod_template_labels(model, "receiver") for k in MESH_LABELS)
    assert model.unit_status(f"{BEACON}/0") == ("maintenance", "removed the mesh resources")
