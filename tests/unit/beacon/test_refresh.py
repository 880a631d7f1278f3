"""What a refresh from the deployed istio-beacon-k8s charm needs: its endpoints, each working.

- ``metrics-endpoint`` (``prometheus_scrape``): the relation data Prometheus reads, as the
  reference implementation (the prometheus_scrape charm library the deployed charm uses) writes
  it for the deployed beacon; the metrics proxy's Pebble layer; the related Prometheus allowed
  through the mesh to the proxy's port.
- ``charm-tracing`` (``tracing``): the charm asks for an OTLP HTTP receiver.
- the peer interface and the container are those of the deployed charm.
- adoption: the deployed beacon's objects are taken over on the first leader reconcile.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from adoption import adopt_before, deployed_label, instance_values
from conftest import (
    APP,
    MANAGED_BY,
    MODEL,
    OWNER,
    WAYPOINT,
    beacon_state,
    mesh_relation,
    seed_model_operator,
    seed_service,
    wire_policy,
)
from kube_names import NAMESPACE_OWNER_LABEL as NAMESPACE_OWNER
from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType
from metrics import METRICS_PORT, telemetry_label
from namespace_labels import owner_value
from ops import testing
from support.deployed_beacon import deployed_objects, roll_back, seed_deployed_beacon
from support.fake_kube import FakeKubeServer

CHARMCRAFT = yaml.safe_load(
    (Path(__file__).parents[3] / "charms" / "beacon" / "charmcraft.yaml").read_text()
)
TELEMETRY = f"charms.canonical.com/{MODEL}.{APP}.telemetry"
OTHER_MODEL_UUID = "6c0f3f2e-1b7a-4d8e-9a51-2d5a0c7b9e11"


def metrics_relation(**kwargs: Any) -> testing.Relation:
    return testing.Relation(
        "metrics-endpoint", "prometheus_scrape", remote_app_name="prometheus", **kwargs
    )


def with_proxy(state: testing.State, can_connect: bool = True) -> testing.State:
    container = testing.Container("metrics-proxy", can_connect=can_connect)
    return testing.State(
        leader=state.leader,
        model=state.model,
        relations=state.relations,
        config=state.config,
        planned_units=state.planned_units,
        containers=[container],
    )


# -- the same endpoints, interfaces and container as the deployed charm ------------------------


def test_endpoints_interfaces_and_container_are_the_deployed_charms():
    assert CHARMCRAFT["peers"] == {"peers": {"interface": "istio_beacon_k8s_peers"}}
    provides = {name: spec["interface"] for name, spec in CHARMCRAFT["provides"].items()}
    assert provides == {
        "service-mesh": "service_mesh",
        "provide-cmr-mesh": "cross_model_mesh",
        "metrics-endpoint": "prometheus_scrape",
        # New (the deployed charm has no dashboard): an added endpoint does not stop a refresh.
        "grafana-dashboard": "grafana_dashboard",
    }
    requires = {name: spec["interface"] for name, spec in CHARMCRAFT["requires"].items()}
    assert requires == {"charm-tracing": "tracing"}
    assert CHARMCRAFT["requires"]["charm-tracing"]["limit"] == 1
    assert CHARMCRAFT["containers"] == {"metrics-proxy": {"resource": "metrics-proxy-image"}}
    assert CHARMCRAFT["resources"]["metrics-proxy-image"]["type"] == "oci-image"
    # Every option of the deployed charm, plus this beacon's own (with a default: a refresh
    # from the deployed charm needs no setting).
    assert set(CHARMCRAFT["config"]["options"]) == {
        "model-on-mesh",
        "manage-authorization-policies",
        "ready-timeout",
        "authorization-mode",
    }
    assert CHARMCRAFT["config"]["options"]["authorization-mode"]["default"] == "enforce"
    # Juju refuses a refresh on Kubernetes that changes storage or devices: declare none.
    assert "storage" not in CHARMCRAFT
    assert "devices" not in CHARMCRAFT


# -- metrics-endpoint -------------------------------------------------------------------------

# What the deployed beacon publishes through the reference implementation (the prometheus_scrape
# charm library's MetricsEndpointProvider, given one job with static target "*:15090"): the job
# with the library's default metrics path.
REFERENCE_SCRAPE_JOBS = [
    {"metrics_path": "/metrics", "static_configs": [{"targets": ["*:15090"]}]}
]


def check_provider_schema(app: dict[str, str], unit: dict[str, str]) -> None:
    """The published provider schema of prometheus_scrape v0: every value's shape."""
    jobs = json.loads(app["scrape_jobs"])
    assert isinstance(jobs, list)
    for job in jobs:
        assert isinstance(job["metrics_path"], str)
        for static in job["static_configs"]:
            assert all(isinstance(target, str) for target in static["targets"])
    metadata = json.loads(app["scrape_metadata"])
    for key in ("model", "model_uuid", "application", "unit"):
        assert isinstance(metadata[key], str)
    rules = json.loads(app["alert_rules"])
    for group in rules["groups"]:
        assert isinstance(group["name"], str)
        for rule in group["rules"]:
            for key in ("alert", "expr"):
                assert isinstance(rule[key], str)
            # "for" is optional (a rule without it fires on the first evaluation that holds).
            assert isinstance(rule.get("for", ""), str)
            assert all(isinstance(v, str) for v in rule["labels"].values())
            assert all(isinstance(v, str) for v in rule["annotations"].values())
    assert isinstance(unit["prometheus_scrape_unit_address"], str)
    assert isinstance(unit["prometheus_scrape_unit_name"], str)


def test_leader_publishes_the_scrape_job_metadata_and_rules(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    relation = metrics_relation()
    out = ctx.run(ctx.on.relation_created(relation), beacon_state(relations=[relation]))

    published = out.get_relation(relation.id)
    app, unit = dict(published.local_app_data), dict(published.local_unit_data)
    check_provider_schema(app, unit)
    assert json.loads(app["scrape_jobs"]) == REFERENCE_SCRAPE_JOBS
    metadata = json.loads(app["scrape_metadata"])
    assert metadata == {
        "model": MODEL,
        "model_uuid": out.model.uuid,
        "application": APP,
        "unit": f"{APP}/0",
        "charm_name": "istio-beacon-k8s",
    }
    rule = json.loads(app["alert_rules"])["groups"][0]["rules"][0]
    assert rule["labels"]["juju_application"] == APP
    assert rule["labels"]["juju_model"] == MODEL
    assert unit["prometheus_scrape_unit_address"] == "192.0.2.0"
    assert unit["prometheus_scrape_unit_name"] == f"{APP}/0"


def test_a_non_leader_publishes_its_own_address_only(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    relation = metrics_relation()
    out = ctx.run(
        ctx.on.relation_joined(relation), beacon_state(leader=False, relations=[relation])
    )
    published = out.get_relation(relation.id)
    assert dict(published.local_app_data) == {}
    assert published.local_unit_data["prometheus_scrape_unit_name"] == f"{APP}/0"


def test_the_metrics_proxy_gathers_the_waypoint_pods(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    state = with_proxy(beacon_state())
    out = ctx.run(ctx.on.pebble_ready(state.get_container("metrics-proxy")), state)

    layer = out.get_container("metrics-proxy").layers["metrics-proxy"]
    service = layer.services["metrics-proxy"]
    assert service.command == "metrics-proxy"
    assert service.startup == "enabled"
    assert service.environment == {"POD_LABEL_SELECTOR": f"{TELEMETRY}=aggregated"}
    assert out.get_container("metrics-proxy").service_statuses["metrics-proxy"].value == "active"
    # The same label is on the Gateway, which Istio copies onto the waypoint pods.
    gateway = kube.get("gateways", MODEL, WAYPOINT)
    assert gateway is not None
    assert gateway["metadata"]["labels"][TELEMETRY] == "aggregated"


def test_prometheus_is_allowed_to_the_metrics_proxy(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    relation = metrics_relation()
    ctx.run(ctx.on.relation_created(relation), beacon_state(relations=[relation]))

    policies = [
        p
        for p in kube.list("authorizationpolicies", MODEL)
        if "prometheus" in p["metadata"]["name"]
    ]
    assert len(policies) == 1
    spec = policies[0]["spec"]
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": APP}}
    assert spec["rules"] == [
        {
            "from": [{"source": {"principals": [f"cluster.local/ns/{MODEL}/sa/prometheus"]}}],
            "to": [{"operation": {"ports": [str(METRICS_PORT)]}}],
        }
    ]


def test_telemetry_label_is_the_deployed_charms_also_when_shortened():
    assert telemetry_label("m", "a") == {"charms.canonical.com/m.a.telemetry": "aggregated"}
    key = next(iter(telemetry_label("m" * 40, "a" * 40)))
    assert len(key) == 63
    assert key.startswith("charms.canonical.com/")
    assert key.endswith(".telemetry")
    assert (
        deployed_label("model", "app", suffix="-waypoint", separator="-") == "model-app-waypoint"
    )
    assert instance_values("model", "app") == ["app-model", "model-app"]


# -- charm-tracing ----------------------------------------------------------------------------


def test_charm_tracing_asks_for_an_otlp_http_receiver(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    tracing = testing.Relation(
        "charm-tracing",
        "tracing",
        remote_app_name="tempo",
        remote_app_data={
            "receivers": json.dumps(
                [{"protocol": {"name": "otlp_http", "type": "http"}, "url": "http://tempo:4318"}]
            )
        },
    )
    out = ctx.run(ctx.on.relation_created(tracing), beacon_state(relations=[tracing]))
    receivers = json.loads(out.get_relation(tracing.id).local_app_data["receivers"])
    assert receivers == ["otlp_http"]


# -- adoption ---------------------------------------------------------------------------------


@pytest.mark.parametrize("older_revision", [False, True])
def test_the_first_reconcile_takes_over_the_deployed_beacons_objects(
    ctx: testing.Context[Any], kube: FakeKubeServer, older_revision: bool
):
    seed_service(kube, "receiver")
    seed_model_operator(kube)
    seeded = seed_deployed_beacon(
        kube.client(field_manager=APP),
        APP,
        MODEL,
        consumers=[("sender", "receiver")],
        foreign_namespace="default",
        older_revision=older_revision,
    )
    assert len(deployed_objects(kube.client(), APP, MODEL)) == 5
    relation = mesh_relation("receiver", [wire_policy("sender", "receiver")])
    state = beacon_state(relations=[relation], config={"model-on-mesh": True})

    out = ctx.run(ctx.on.upgrade_charm(), state)

    # Everything in the model is taken over; the policy in another namespace carries labels
    # another model's beacon could write too: it is left alone (and reported).
    foreign = [(ns, name) for ns, name in seeded.policies if ns != MODEL]
    assert deployed_objects(kube.client(), APP, MODEL) == [
        f"AuthorizationPolicy {ns}/{name}" for ns, name in foreign
    ]
    names = {p["metadata"]["name"] for p in kube.list("authorizationpolicies", MODEL)}
    assert not names & {name for _, name in seeded.policies}
    assert seeded.model_operator_policy not in names
    assert "allow-juju-model-operator" in names
    assert any(name.startswith("receiver-app-from-sender") for name in names)
    gateway = kube.get("gateways", MODEL, WAYPOINT)
    assert gateway is not None
    # Ours now, and still found by the deployed charm should it come back (docs/beacon.md).
    assert gateway["metadata"]["labels"]["app.kubernetes.io/instance"] == f"{MODEL}-{APP}"
    assert gateway["metadata"]["labels"][MANAGED_BY] == OWNER
    namespace = kube.client().get(Namespace, MODEL)
    assert namespace.metadata is not None
    assert namespace.metadata.labels is not None
    assert namespace.metadata.labels["istio.io/use-waypoint"] == WAYPOINT
    assert out.unit_status.name != "blocked", out.unit_status

    # Done once: the next hook does not look again (no list of the old labels).
    kube.reset_requests()
    ctx.run(ctx.on.update_status(), out)
    assert not any("kubernetes-resource-handler-scope" in r.path for r in kube.requests)


def ambiguous_policy(kube: FakeKubeServer, namespace: str, instance: str) -> str:
    """A policy another model's deployed beacon wrote in ``namespace`` under ``instance``."""
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace},
        }
    )
    name = f"{instance}-policy-guard"
    kube.put(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/instance": instance,
                    "kubernetes-resource-handler-scope": "istio-authorization-policy",
                },
            },
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "guarded"}},
                "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/istio/sa/a"]}}]}],
            },
        }
    )
    return name


def test_another_models_policy_under_an_ambiguous_label_survives_install_and_removal(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    # A deployed beacon named beacon-k8s-mesh-model in model istio labels its policies
    # istio-beacon-k8s-mesh-model: what the deployed charm's older spelling gives for our app
    # istio-beacon-k8s in our model mesh-model. Nothing was refreshed here.
    instance = "istio-beacon-k8s-mesh-model"
    assert f"{APP}-{MODEL}" == instance
    name = ambiguous_policy(kube, "istio", instance)
    relation = mesh_relation("receiver", [wire_policy("sender", "receiver")])
    seed_service(kube, "receiver")

    kube.reset_requests()
    out = ctx.run(ctx.on.install(), beacon_state(relations=[relation]))
    out = ctx.run(ctx.on.upgrade_charm(), out)
    out = ctx.run(ctx.on.leader_elected(), out)
    ctx.run(ctx.on.remove(), dataclasses.replace(out, planned_units=0))

    assert kube.get("authorizationpolicies", "istio", name) is not None
    # Not even looked at: no request reached outside the model's namespace.
    assert not [r for r in kube.requests if "/namespaces/istio" in r.path]
    assert not [
        r
        for r in kube.requests
        if "authorizationpolicies" in r.path and "/namespaces/" not in r.path
    ]


def test_with_a_refresh_another_models_policy_is_still_left_alone(
    ctx: testing.Context[Any], kube: FakeKubeServer, caplog: pytest.LogCaptureFixture
):
    seed_service(kube, "receiver")
    seed_deployed_beacon(
        kube.client(field_manager=APP), APP, MODEL, consumers=[("sender", "receiver")]
    )
    name = ambiguous_policy(kube, "istio", f"{APP}-{MODEL}")
    relation = mesh_relation("receiver", [wire_policy("sender", "receiver")])

    out = ctx.run(ctx.on.upgrade_charm(), beacon_state(relations=[relation]))

    assert kube.get("authorizationpolicies", "istio", name) is not None
    assert deployed_objects(kube.client(), APP, MODEL) == [f"AuthorizationPolicy istio/{name}"]
    assert f"istio/{name}" in caplog.text
    assert "kubectl get authorizationpolicies -A" in caplog.text
    assert out.unit_status.name != "blocked", out.unit_status


def test_without_cluster_rights_the_log_says_other_namespaces_were_not_checked(
    ctx: testing.Context[Any], kube: FakeKubeServer, caplog: pytest.LogCaptureFixture
):
    seed_service(kube, "receiver")
    seed_deployed_beacon(
        kube.client(field_manager=APP), APP, MODEL, consumers=[("sender", "receiver")]
    )
    kube.forbid("list", "authorizationpolicies", cluster_wide_only=True)
    relation = mesh_relation("receiver", [wire_policy("sender", "receiver")])

    out = ctx.run(ctx.on.upgrade_charm(), beacon_state(relations=[relation]))

    assert not [
        item
        for plural in ("gateways", "horizontalpodautoscalers", "authorizationpolicies")
        for item in kube.list(plural)
        if "kubernetes-resource-handler-scope" in (item["metadata"].get("labels") or {})
        and MANAGED_BY not in (item["metadata"].get("labels") or {})
    ]
    assert "could not check other namespaces" in caplog.text
    assert "kubectl get authorizationpolicies -A" in caplog.text
    assert out.unit_status.name != "blocked", out.unit_status


def test_removal_never_deletes_what_was_not_adopted(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    seeded = seed_deployed_beacon(
        kube.client(field_manager=APP), APP, MODEL, consumers=[("sender", "receiver")]
    )
    before = deployed_objects(kube.client(), APP, MODEL)
    assert before

    ctx.run(ctx.on.remove(), beacon_state(planned_units=0))

    assert deployed_objects(kube.client(), APP, MODEL) == before
    assert kube.get("gateways", MODEL, seeded.waypoint) is not None


def test_a_rollback_to_the_deployed_charm_removes_every_policy_of_ours(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    """Its reconcile finds ours by its own labels: nothing of ours keeps granting after it."""
    seed_service(kube, "receiver")
    seed_model_operator(kube)
    relations = [
        mesh_relation("receiver", [wire_policy("sender", "receiver")]),
        metrics_relation(),
    ]
    ctx.run(
        ctx.on.config_changed(), beacon_state(relations=relations, config={"model-on-mesh": True})
    )
    ours = {
        f"AuthorizationPolicy {p['metadata']['namespace']}/{p['metadata']['name']}"
        for p in kube.list("authorizationpolicies")
    }
    # The receiver's policy, its waypoint access, Prometheus' and the model operator's.
    assert len(ours) == 4

    deleted = roll_back(kube.client(field_manager=APP), APP, MODEL, consumers=[])

    assert set(deleted) == ours
    left = [
        p["metadata"]["name"]
        for p in kube.list("authorizationpolicies")
        if MANAGED_BY in (p["metadata"].get("labels") or {})
    ]
    assert left == []
    # The waypoint has the deployed charm's name: it applies its own over ours, deletes nothing.
    assert kube.get("gateways", MODEL, WAYPOINT) is not None
    assert kube.get("horizontalpodautoscalers", MODEL, WAYPOINT) is not None


def test_a_refusal_keeps_the_deployed_policies_until_ours_are_in_place(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    seed_service(kube, "receiver")
    seed_deployed_beacon(
        kube.client(field_manager=APP), APP, MODEL, consumers=[("sender", "receiver")]
    )
    kube.forbid("patch", "authorizationpolicies")
    kube.forbid("create", "authorizationpolicies")
    relation = mesh_relation("receiver", [wire_policy("sender", "receiver")])

    out = ctx.run(ctx.on.upgrade_charm(), beacon_state(relations=[relation]))

    # Ours could not be written: the deployed policies stay (its Gateway and autoscaler, of
    # the same names, are ours now), and adoption is tried again later.
    assert len(deployed_objects(kube.client(), APP, MODEL)) == 2
    assert any(
        p["metadata"].get("labels", {}).get("kubernetes-resource-handler-scope")
        == "istio-authorization-policy"
        for p in kube.list("authorizationpolicies")
    )
    assert out.unit_status.name == "blocked"


def _deployed_policies(kube: FakeKubeServer) -> list[str]:
    """The deployed charm's policies: its labels, not the beacon's (ours carry both)."""
    return sorted(
        p["metadata"]["name"]
        for p in kube.list("authorizationpolicies", MODEL)
        if p["metadata"].get("labels", {}).get("kubernetes-resource-handler-scope")
        == "istio-authorization-policy"
        and MANAGED_BY not in p["metadata"].get("labels", {})
    )


@pytest.mark.parametrize("refused_by", ["kubernetes", "the beacon"])
def test_a_refused_request_keeps_the_deployed_policies_until_it_is_accepted(
    ctx: testing.Context[Any], kube: FakeKubeServer, refused_by: str
):
    """Adoption waits while a request is refused: the deployed policy is its app's only one."""
    seed_service(kube, "receiver")
    seed_deployed_beacon(
        kube.client(field_manager=APP), APP, MODEL, consumers=[("sender", "receiver")]
    )
    deployed = _deployed_policies(kube)
    assert deployed
    wire = wire_policy("sender", "receiver")
    if refused_by == "kubernetes":
        kube.reject(422, "admission webhook denied the request", "create", "authorizationpolicies")
    else:
        wire["endpoints"][0]["ports"] = ["8080"]  # refused: a port is a number
    relation = mesh_relation("receiver", [wire])

    out = ctx.run(ctx.on.upgrade_charm(), beacon_state(relations=[relation]))
    assert _deployed_policies(kube) == deployed
    assert any("keeping the deployed beacon's objects" in line.message for line in ctx.juju_log)

    # Accepted at last: ours are written, then the deployed ones go.
    kube.allow_all()
    accepted = mesh_relation("receiver", [wire_policy("sender", "receiver")])
    out = ctx.run(
        ctx.on.relation_changed(accepted), dataclasses.replace(out, relations=[accepted])
    )
    assert _deployed_policies(kube) == [], [
        (p["metadata"]["name"], p["metadata"].get("labels"))
        for p in kube.list("authorizationpolicies", MODEL)
    ]
    names = {p["metadata"]["name"] for p in kube.list("authorizationpolicies", MODEL)}
    assert any(name.startswith("receiver-app-from-sender") for name in names)


def test_a_new_leader_finishes_a_take_over_another_leader_proved(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    """The proof (the deployed waypoint) is the beacon's after the first hook: the peers know."""
    seed_service(kube, "receiver")
    seed_deployed_beacon(
        kube.client(field_manager=APP), APP, MODEL, consumers=[("sender", "receiver")]
    )
    deployed = _deployed_policies(kube)
    kube.reject(422, "admission webhook denied the request", "create", "authorizationpolicies")
    peers = testing.PeerRelation("peers")
    relation = mesh_relation("receiver", [wire_policy("sender", "receiver")])
    out = ctx.run(ctx.on.upgrade_charm(), beacon_state(relations=[relation, peers]))
    assert _deployed_policies(kube) == deployed
    assert out.get_relation(peers.id).local_app_data == {"adoption-pending": "true"}

    # Another unit leads now: its own (empty) stored state, the same peers app data.
    kube.allow_all()
    carried = dataclasses.replace(
        peers, local_app_data=dict(out.get_relation(peers.id).local_app_data)
    )
    out = ctx.run(ctx.on.leader_elected(), beacon_state(relations=[relation, carried]))
    assert _deployed_policies(kube) == []
    assert out.get_relation(peers.id).local_app_data == {}


def test_namespace_labels_of_a_long_named_deployed_beacon_become_ours(kube: FakeKubeServer):
    # Beyond 63 characters the deployed charm and this one shorten the owner value differently.
    app = "istio-beacon-k8s-" + "x" * 50
    old_owner = deployed_label(MODEL, app)
    assert old_owner != owner_value(MODEL, app)
    client = kube.client()
    client.patch(
        Namespace,
        MODEL,
        {
            "metadata": {
                "labels": {NAMESPACE_OWNER: old_owner, "istio.io/dataplane-mode": "ambient"}
            }
        },
        patch_type=PatchType.MERGE,
    )

    assert adopt_before(client, MODEL, app, owner_value(MODEL, app)) is True

    namespace = client.get(Namespace, MODEL)
    assert namespace.metadata is not None
    labels = namespace.metadata.labels or {}
    assert labels[NAMESPACE_OWNER] == owner_value(MODEL, app)
    assert labels["istio.io/dataplane-mode"] == "ambient"
    # Another owner's labels are never taken.
    assert adopt_before(client, MODEL, "someone-else", owner_value(MODEL, "someone-else")) is False


def test_instance_values_are_valid_label_values_for_long_names():
    values = instance_values("m" * 40, "a" * 40)
    assert values == [deployed_label("m" * 40, "a" * 40, separator="-")]
    assert all(len(value) <= 63 for value in values)


def test_a_cross_model_prometheus_is_allowed_by_its_real_name(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    alias = "remote-2f1e7c9a"
    metrics = testing.Relation("metrics-endpoint", "prometheus_scrape", remote_app_name=alias)
    cmr = testing.Relation(
        "provide-cmr-mesh",
        "cross_model_mesh",
        remote_app_name=alias,
        remote_app_data={
            "cmr_data": json.dumps({"app_name": "prometheus", "juju_model_name": "cos"})
        },
        remote_model_uuid=OTHER_MODEL_UUID,  # Juju: another model
    )
    ctx.run(ctx.on.relation_created(metrics), beacon_state(relations=[metrics, cmr]))
    principals = {
        principal
        for p in kube.list("authorizationpolicies", MODEL)
        for rule in p["spec"].get("rules", [])
        for source in rule.get("from", [])
        for principal in source["source"].get("principals", [])
    }
    assert "cluster.local/ns/cos/sa/prometheus" in principals
    assert f"cluster.local/ns/{MODEL}/sa/{alias}" not in principals


def test_a_claim_on_a_relation_inside_the_model_is_ignored(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    # An app of this model claims to be cos's Prometheus: Juju names it here, the claim is not
    # believed (the same rule as the library's consumers), and only its own name is allowed.
    metrics = testing.Relation("metrics-endpoint", "prometheus_scrape", remote_app_name="prom")
    cmr = testing.Relation(
        "provide-cmr-mesh",
        "cross_model_mesh",
        remote_app_name="prom",
        remote_app_data={
            "cmr_data": json.dumps({"app_name": "prometheus", "juju_model_name": "cos"})
        },
    )
    ctx.run(ctx.on.relation_created(metrics), beacon_state(relations=[metrics, cmr]))
    principals = metrics_principals(kube)
    assert "cluster.local/ns/cos/sa/prometheus" not in principals
    assert f"cluster.local/ns/{MODEL}/sa/prom" in principals


def test_an_identity_claimed_by_two_relations_is_believed_for_neither(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    relations: list[testing.RelationBase] = []
    for alias in ("remote-" + "a" * 32, "remote-" + "b" * 32):
        relations.append(
            testing.Relation("metrics-endpoint", "prometheus_scrape", remote_app_name=alias)
        )
        relations.append(
            testing.Relation(
                "provide-cmr-mesh",
                "cross_model_mesh",
                remote_app_name=alias,
                remote_app_data={
                    "cmr_data": json.dumps({"app_name": "prometheus", "juju_model_name": "cos"})
                },
                remote_model_uuid=OTHER_MODEL_UUID,
            )
        )
    ctx.run(ctx.on.update_status(), beacon_state(relations=relations))
    assert "cluster.local/ns/cos/sa/prometheus" not in metrics_principals(kube)


def metrics_principals(kube: FakeKubeServer) -> set[str]:
    return {
        principal
        for p in kube.list("authorizationpolicies", MODEL)
        for rule in p["spec"].get("rules", [])
        for source in rule.get("from", [])
        for principal in source["source"].get("principals", [])
    }


def test_a_claim_of_an_app_of_this_model_is_refused(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    metrics = testing.Relation("metrics-endpoint", "prometheus_scrape", remote_app_name="prom")
    cmr = testing.Relation(
        "provide-cmr-mesh",
        "cross_model_mesh",
        remote_app_name="prom",
        remote_app_data={
            "cmr_data": json.dumps({"app_name": "database", "juju_model_name": MODEL})
        },
    )
    ctx.run(ctx.on.relation_created(metrics), beacon_state(relations=[metrics, cmr]))
    names = [p["metadata"]["name"] for p in kube.list("authorizationpolicies", MODEL)]
    assert not any("database" in name for name in names)
    assert any("from-prom-" in name for name in names)
