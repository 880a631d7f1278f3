"""The packed beacon run through its ``dispatch`` as Juju runs it, against a real API server.

Consumers are packed testers run the same way (before their workload's Pebble is involved): each
side's hooks read what the other side's hooks wrote, through the hook tools' state. Nothing runs
Istio here: the test stands in for it where the beacon waits on it (the waypoint Deployment).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import yaml
from conftest import BOTH_BASES
from lightkube import ALL_NS, ApiError, Client, KubeConfig, codecs
from lightkube.config.models import Cluster, User
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap
from mesh_steps import (
    BEACON,
    MANAGED_BY,
    MESH_LABELS,
    AuthorizationPolicy,
    Gateway,
    deploy_beacon,
    deploy_tester,
    istio_runs_the_waypoint,
    namespace_labels,
    ok,
    owned,
    pod_template_labels,
    policies_for,
    relate_inbound,
    relate_mesh,
    service_labels,
    waypoint,
)
from support.juju_unit_agent import JujuModel
from support.kube_server import JUJU_DEFAULT_CLUSTER_RULES, juju_default_app_rules

RBAC = Path(__file__).parents[2] / "charms" / "beacon" / "rbac"


def test_beacon_alone_installs_and_waits_for_istio(model: JujuModel, beacon_charm: Path):
    unit = deploy_beacon(model, beacon_charm)
    for run in model.history:
        assert "./src/charm.py" not in run.stderr  # the entry point ran (exec bit)
    status, message = model.unit_status(unit)
    assert status == "waiting"
    assert message.startswith("waiting for the waypoint: ")
    assert f"Istio has not created the {waypoint(model)} Deployment yet" in message
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


def test_untrusted_beacon_is_blocked_until_its_role_is_bound(model: JujuModel, beacon_charm: Path):
    # Without `juju trust` the app's ServiceAccount has exactly what Juju 3.6 gives every app
    # (trust.go): it may read its Namespace and patch pods and Services, nothing the beacon needs
    # to write. The beacon says so, naming the Role shipped with it.
    unit = deploy_beacon(
        model,
        beacon_charm,
        trust=False,
        rules=juju_default_app_rules(model.name),
        cluster_rules=JUJU_DEFAULT_CLUSTER_RULES,
        model_on_mesh=True,
    )
    status, message = model.unit_status(unit)
    assert status == "blocked"
    assert message.startswith(
        f"run `juju trust {BEACON} --scope=cluster` or bind the Role in charms/beacon/rbac"
    ), message
    assert list(owned(model, Gateway)) == []

    # Bound as docs/beacon.md says (the same token, the Role added): the beacon converges on its
    # next hook, with nothing outside its model.
    text = string.Template((RBAC / "role.yaml").read_text()).substitute(
        MODEL=model.name, APP=BEACON, WAYPOINT=waypoint(model)
    )
    for document in yaml.safe_load_all(text):
        model.admin.apply(codecs.from_dict(document), force=True)
    ok(model.run_hook(unit, "update-status"))
    assert list(owned(model, Gateway)) == [waypoint(model)]
    assert namespace_labels(model)["istio.io/dataplane-mode"] == "ambient"
    istio_runs_the_waypoint(model)
    ok(model.run_hook(unit, "update-status"))
    assert model.unit_status(unit) == ("active", "")
    # What it cannot do is visible on the server: the API refuses the same token cluster-wide.
    account = Path(model.state()["apps"][BEACON]["dir"]) / "serviceaccount"
    config = KubeConfig.from_one(
        cluster=Cluster(server=model.kube.url, certificate_auth=str(account / "ca.crt")),
        user=User(token=(account / "token").read_text()),
    )
    with Client(config) as client, pytest.raises(ApiError) as refused:
        list(client.list(Gateway, namespace=ALL_NS))
    assert refused.value.status.code == 403


@BOTH_BASES
def test_mesh_relation_exchanges_labels_and_policies(
    model: JujuModel, beacon_charm: Path, tester_charm: Path
):
    beacon = deploy_beacon(model, beacon_charm)
    istio_runs_the_waypoint(model)
    receiver = deploy_tester(model, tester_charm, "receiver")
    deploy_tester(model, tester_charm, "sender")
    # Without Pebble the testers wait for their workload container, but every hook succeeds.
    assert model.unit_status(receiver) == (
        "waiting",
        "waiting for Pebble in the workload container",
    )

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
    # Each label where Istio reads it: data-plane mode on the pods, the waypoint on the Service.
    problems = [
        f"{run.unit} {run.event}: {line['level']} {line['message']}"
        for run in model.history
        if run.unit.startswith("receiver")
        for line in run.log
        if line["level"] in ("WARNING", "ERROR")
    ]
    assert pod_template_labels(model, "receiver").get("istio.io/dataplane-mode") == "ambient", (
        model.state()["apps"]["receiver"]["status"],
        problems[-5:],
    )
    assert service_labels(model, "receiver")["istio.io/use-waypoint"] == waypoint(model)
    assert service_labels(model, "receiver")["istio.io/use-waypoint-namespace"] == model.name
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
    assert model.admin.get(ConfigMap, "juju-service-mesh-receiver-labels", namespace=model.name)
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
        p for p in owned(model, AuthorizationPolicy).values() if "sender" in json.dumps(p["spec"])
    ]

    # The mesh relation goes: the receiver takes its labels off, the beacon its policies.
    ok(model.remove_relation(mesh))
    assert not any(k in pod_template_labels(model, "receiver") for k in MESH_LABELS)
    assert not any(k in service_labels(model, "receiver") for k in MESH_LABELS)
    assert owned(model, AuthorizationPolicy) == {}


@BOTH_BASES
def test_config_toggles_then_removal_leaves_nothing(
    model: JujuModel, beacon_charm: Path, tester_charm: Path
):
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
    assert not any(k in service_labels(model, "receiver") for k in MESH_LABELS)

    # Switched off: receiver is told to put its own labels, and the namespace keeps its labels
    # until receiver carries them (removing them first would take receiver off the mesh).
    ok(model.set_config(BEACON, model_on_mesh=False))
    assert namespace_labels(model)["istio.io/dataplane-mode"] == "ambient"
    assert model.unit_status(beacon) == (
        "waiting",
        "model-on-mesh is off: keeping the model on the mesh until receiver carries its own "
        "mesh labels",
    )
    ok(model.changed(mesh, "receiver/0", f"{BEACON}/0"))
    assert service_labels(model, "receiver")["istio.io/use-waypoint"] == waypoint(model)
    ok(model.run_hook(beacon, "update-status"))
    assert not any(k in namespace_labels(model) for k in MESH_LABELS)

    # manage-authorization-policies off: every policy the beacon made goes, none is made.
    ok(model.set_config(BEACON, manage_authorization_policies=False))
    assert owned(model, AuthorizationPolicy) == {}
    assert model.unit_status(beacon) == ("active", "not managing authorization policies")
    ok(model.changed(mesh, f"{BEACON}/0", "receiver/0"))
    assert owned(model, AuthorizationPolicy) == {}
    ok(model.set_config(BEACON, manage_authorization_policies=True))
    assert owned(model, AuthorizationPolicy)
    assert model.unit_status(beacon) == ("active", "")

    # Removal with the model on the mesh: nothing of the beacon's is left.
    ok(model.set_config(BEACON, model_on_mesh=True))
    assert namespace_labels(model)["istio.io/dataplane-mode"] == "ambient"
    ok(model.remove_app(BEACON))
    assert owned(model, Gateway) == {}
    assert owned(model, HorizontalPodAutoscaler) == {}
    assert owned(model, AuthorizationPolicy) == {}
    assert policies_for(model) == {}
    assert not any(k in namespace_labels(model) for k in (*MESH_LABELS, MANAGED_BY))
    assert not any(k in pod_template_labels(model, "receiver") for k in MESH_LABELS)
    assert model.unit_status(f"{BEACON}/0") == ("maintenance", "removed the mesh resources")


def test_second_unit_is_standby_and_the_waypoint_follows(model: JujuModel, beacon_charm: Path):
    leader = deploy_beacon(model, beacon_charm)
    istio_runs_the_waypoint(model)
    second = model.add_unit(BEACON)
    ok(model.start_units(BEACON, [second]))
    peers = model.peer_relation(BEACON)
    ok(model.join(peers, second, leader))
    ok(model.join(peers, leader, second))
    assert model.unit_status(second) == ("active", "standby")
    assert [h["spec"]["minReplicas"] for h in owned(model, HorizontalPodAutoscaler).values()] == [
        2
    ]
    istio_runs_the_waypoint(model, ready=2)
    ok([model.run_hook(u, "update-status") for u in (leader, second)])
    assert model.unit_status(leader) == ("active", "")
    # The follower never wrote Kubernetes objects nor app data: it only reports standby.
    assert not any(
        call["tool"] == "relation-set"
        for run in model.history
        if run.unit == second
        for call in run.calls
    )
