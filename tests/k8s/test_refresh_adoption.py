"""A refresh from the deployed istio-beacon-k8s charm, on a real API server.

The namespace is seeded with the objects that charm leaves (its Gateway, autoscaler, the
AuthorizationPolicies it made for a related app, in the model and in another namespace, the
model-operator policy, the namespace labels and the label ConfigMap, written with its labels and
its field manager). Our beacon then runs its first hook after the refresh (upgrade-charm) through
ops.testing. Nothing of the old charm may be left, every object of ours must be in place, and the
API server's own event history must show each of our policies created before any old one was
deleted: access is never narrower than requested in between.
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
    label_configmap_name,
)
from kube_names import MANAGED_BY, NAMESPACE_OWNER_LABEL
from lightkube import ALL_NS, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap, Namespace
from namespace_labels import owner_value
from ops import testing
from support import juju_seed
from support.deployed_beacon import (
    INSTANCE,
    SCOPE,
    AuthorizationPolicy,
    Gateway,
    charm_label,
    deployed_objects,
    seed_deployed_beacon,
)
from support.kube_server import KubeServer, ensure_namespace
from waypoint import waypoint_name

APP = "istio-beacon-k8s"
Event = tuple[str, str, dict[str, str]]


@pytest.fixture(params=["short", "long"])
def model(
    request: pytest.FixtureRequest,
    kube: KubeServer,
    admin: Client,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """A model with the beacon's StatefulSet and Service; the charm is trusted (admin).

    ``short``: names as most models have them. ``long``: a model name long enough that the
    deployed charm shortened its waypoint, label and owner values (with its hash), so its
    Gateway has another name than ours.
    """
    name = f"refresh-{uuid.uuid4().hex[:8]}" if request.param == "short" else namespace
    ensure_namespace(admin, name)
    juju_seed.seed_app(admin, APP, name)
    juju_seed.seed_service(admin, "receiver", name)
    juju_seed.seed_model_operator(admin, name)
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
    return name


def first_hook_after_refresh(model: str, **config: bool) -> testing.State:
    policy = MeshPolicy(
        source_namespace=model,
        source_app_name="sender",
        target_namespace=model,
        target_app_name="receiver",
        endpoints=[Endpoint(ports=[8080], methods=[Method.get])],
    )
    relation = testing.Relation(
        "service-mesh",
        remote_app_name="receiver",
        remote_app_data={"policies": f"[{policy.model_dump_json()}]"},
    )
    return testing.State(
        leader=True,
        model=testing.Model(name=model),
        relations=[relation],
        config={key.replace("_", "-"): value for key, value in config.items()},
        planned_units=1,
        containers=[testing.Container("metrics-proxy", can_connect=False)],
    )


def policy_history(kube: KubeServer, since: str) -> list[Event]:
    """The API server's AuthorizationPolicy events after resourceVersion ``since``, in order.

    A watch from ``since`` replays that history; the server itself ends it after two seconds
    (``timeoutSeconds``), so the whole answer is the list of events, one JSON object a line.
    """
    status, _, text = kube.raw_response(
        "GET",
        "/apis/security.istio.io/v1/authorizationpolicies",
        params={"watch": "1", "resourceVersion": since, "timeoutSeconds": "2"},
    )
    assert status == 200, text
    events: list[Event] = []
    for line in text.splitlines():
        event = json.loads(line)
        metadata = event["object"]["metadata"]
        events.append(
            (
                event["type"],
                f"{metadata['namespace']}/{metadata['name']}",
                dict(metadata.get("labels") or {}),
            )
        )
    return events


@pytest.mark.parametrize("older_revision", [False, True], ids=["rev-2", "rev-1"])
def test_first_hook_after_refresh_takes_everything_over(
    kube: KubeServer, admin: Client, model: str, older_revision: bool
):
    if older_revision and len(f"{APP}-{model}") > 63:
        # That revision never shortened its instance label: it could not run in such a model.
        older_revision = False
    foreign = f"{model[:50]}-other"
    ensure_namespace(admin, foreign)
    with kube.admin_client(field_manager=APP) as deployed:
        seeded = seed_deployed_beacon(
            deployed,
            APP,
            model,
            consumers=[("sender", "receiver")],
            foreign_namespace=foreign,
            older_revision=older_revision,
        )
    assert len(deployed_objects(admin, APP, model)) == 5
    # A marker write: its resourceVersion is where the history of the hook starts.
    marker = admin.apply(
        ConfigMap(metadata=ObjectMeta(name="history-marker", namespace=model), data={"a": "b"}),
        force=True,
    )
    assert marker.metadata is not None
    since = str(marker.metadata.resourceVersion)

    ctx = testing.Context(IstioBeaconCharm, app_name=APP)
    out = ctx.run(ctx.on.upgrade_charm(), first_hook_after_refresh(model, model_on_mesh=True))

    # Nothing of the deployed charm is left in the model; its policy in another namespace is
    # left alone (its labels do not prove it is not another model's beacon's) and reported.
    foreign_policies = [(ns, name) for ns, name in seeded.policies if ns != model]
    assert len(foreign_policies) == 1
    assert deployed_objects(admin, APP, model) == [
        f"AuthorizationPolicy {ns}/{name}" for ns, name in foreign_policies
    ]
    api: Any = admin
    remaining = {
        f"{p.metadata.namespace}/{p.metadata.name}"
        for p in api.list(AuthorizationPolicy, namespace=ALL_NS)
    }
    assert remaining & {f"{ns}/{name}" for ns, name in seeded.policies} == {
        f"{ns}/{name}" for ns, name in foreign_policies
    }
    assert f"{model}/{seeded.model_operator_policy}" not in remaining

    # Ours are in place: the Gateway and autoscaler (taken over when of the same name), the
    # policies; a deployed Gateway of another name is gone (no object of the old labels is left).
    ours = {MANAGED_BY: owner_value(model, APP)}
    waypoint = waypoint_name(model, APP)
    gateway = admin.get(Gateway, waypoint, namespace=model)
    assert gateway.metadata is not None
    assert gateway.metadata.labels is not None
    assert ours.items() <= gateway.metadata.labels.items()
    # With the deployed charm's current labels, for it to find them after a rollback.
    assert gateway.metadata.labels[SCOPE] == "istio-waypoint"
    assert gateway.metadata.labels[INSTANCE] == charm_label(model, APP, sep="-")
    autoscaler = admin.get(HorizontalPodAutoscaler, waypoint, namespace=model)
    assert autoscaler.metadata is not None
    assert autoscaler.metadata.labels is not None
    assert autoscaler.metadata.labels[SCOPE] == "istio-waypoint"
    ours_now = {
        f"{p.metadata.namespace}/{p.metadata.name}"
        for p in api.list(AuthorizationPolicy, namespace=ALL_NS, labels=ours)
    }
    assert f"{model}/allow-juju-model-operator" in ours_now
    assert any(name.startswith(f"{model}/receiver-app-from-sender") for name in ours_now)

    # The namespace stays on the mesh, now ours; the label ConfigMap is ours as it was.
    namespace = admin.get(Namespace, model)
    assert namespace.metadata is not None
    labels = namespace.metadata.labels or {}
    assert labels[NAMESPACE_OWNER_LABEL] == owner_value(model, APP)
    assert labels["istio.io/use-waypoint"] == waypoint
    assert labels["istio.io/dataplane-mode"] == "ambient"
    # The label ConfigMap (same name and format) was read as ours: with model-on-mesh the
    # namespace covers the beacon, so the labels it remembered are removed and it holds none.
    configmap = admin.get(ConfigMap, label_configmap_name(APP), namespace=model)
    assert configmap.data is not None
    assert json.loads(configmap.data["labels"]) == {}

    # Create before delete: every policy of ours was added before any old one was deleted.
    def added(history: list[Event]) -> list[int]:
        return [
            i
            for i, (kind, _, lbls) in enumerate(history)
            if kind == "ADDED" and MANAGED_BY in lbls
        ]

    def deleted(history: list[Event]) -> list[int]:
        return [
            i for i, (kind, _, lbls) in enumerate(history) if kind == "DELETED" and SCOPE in lbls
        ]

    history = policy_history(kube, since)
    assert len(added(history)) == len(ours_now), history
    assert len(deleted(history)) == len(seeded.policies), history  # the model's + model operator
    assert max(added(history)) < min(deleted(history)), history
    # Nothing refused, nothing blocked: only Istio, absent here, is awaited.
    assert isinstance(out.unit_status, testing.WaitingStatus), out.unit_status
    assert out.unit_status.message.startswith("waiting for the waypoint"), out.unit_status


def test_another_models_policy_under_an_ambiguous_label_survives_install_and_removal(
    kube: KubeServer, admin: Client, monkeypatch: pytest.MonkeyPatch
):
    # A deployed beacon named beacon-k8s-mesh-model in model istio labels its policies
    # istio-beacon-k8s-mesh-model, the very value the deployed charm's older spelling gives for
    # our istio-beacon-k8s in mesh-model. Our beacon is installed there (no refresh), then removed.
    ensure_namespace(admin, "istio")
    ensure_namespace(admin, "mesh-model")
    juju_seed.seed_app(admin, APP, "mesh-model")
    juju_seed.seed_service(admin, "receiver", "mesh-model")
    with kube.admin_client(field_manager="beacon-k8s-mesh-model") as other:
        seeded = seed_deployed_beacon(
            other,
            "beacon-k8s-mesh-model",
            "istio",
            consumers=[("sender", "receiver")],
            model_on_mesh=False,
            older_revision=True,
        )
    api: Any = admin
    theirs = {
        f"{p.metadata.namespace}/{p.metadata.name}": p.metadata.labels
        for p in api.list(AuthorizationPolicy, namespace="istio")
    }
    assert [labels["app.kubernetes.io/instance"] for labels in theirs.values()] == [
        "beacon-k8s-mesh-model-istio"
    ]
    # The ambiguous one, as the other spelling of that charm writes it for that app in istio.
    admin.apply(
        AuthorizationPolicy.from_dict(
            {
                "metadata": {
                    "name": "guard-ambiguous",
                    "namespace": "istio",
                    "labels": {
                        "app.kubernetes.io/instance": f"{APP}-mesh-model",
                        SCOPE: "istio-authorization-policy",
                    },
                },
                "spec": {
                    "selector": {"matchLabels": {"app.kubernetes.io/name": "guarded"}},
                    "rules": [
                        {"from": [{"source": {"principals": ["cluster.local/ns/istio/sa/a"]}}]}
                    ],
                },
            }
        ),
        field_manager="beacon-k8s-mesh-model",
        force=True,
    )
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))  # trusted: it could delete it
    ctx = testing.Context(IstioBeaconCharm, app_name=APP)
    mark = kube.audit_mark()

    out = ctx.run(ctx.on.install(), first_hook_after_refresh("mesh-model"))
    out = ctx.run(ctx.on.upgrade_charm(), out)
    ctx.run(ctx.on.remove(), dataclasses.replace(out, planned_units=0))

    after = {
        f"{p.metadata.namespace}/{p.metadata.name}"
        for p in api.list(AuthorizationPolicy, namespace="istio")
    }
    assert after == {*theirs, "istio/guard-ambiguous"}
    assert admin.get(Gateway, seeded.waypoint, namespace="istio") is not None
    # Nothing of namespace istio was even written to.
    assert not [w for w in kube.writes_since(mark) if "/namespaces/istio/" in w.uri]
