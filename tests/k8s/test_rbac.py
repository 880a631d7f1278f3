"""The beacon without ``juju trust``: Juju's own default Role, then the Role the repository ships.

Each test is a model whose beacon reaches the real API server as its ServiceAccount, bound to:

- exactly what Juju 3.6 gives an app deployed without trust (``juju_default_app_rules`` and
  ``JUJU_DEFAULT_CLUSTER_RULES``, as Juju's ``trust.go`` builds them): the beacon is blocked with a
  status that names the Role to bind;
- ``charms/beacon/rbac/role.yaml``, rendered and applied as ``docs/beacon.md`` says: the beacon
  runs the reference scenario (model-on-mesh, two related apps, Juju's model operator, Istio
  running the waypoint, ``access-map``, a refresh from the deployed charm, removal), and the API
  server's audit log shows that it was refused nothing: every 403 is a failure.
"""

from __future__ import annotations

import dataclasses
import json
import string
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0.service_mesh import (
    Endpoint,
    MeshPolicy,
    Method,
    PolicyTargetType,
    label_configmap_name,
)
from kube_names import MANAGED_BY
from kube_names import NAMESPACE_OWNER_LABEL as OWNER_LABEL
from lightkube import Client, codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap, Namespace, Service
from lightkube.types import PatchType
from namespace_labels import owner_value
from ops import testing
from support import istiod_standin, juju_seed
from support.deployed_beacon import deployed_objects, seed_deployed_beacon
from support.kube_server import JUJU_DEFAULT_CLUSTER_RULES, KubeServer, juju_default_app_rules
from waypoint import gateway_resource, waypoint_name

APP = "istio-beacon-k8s"
RBAC = Path(__file__).parents[2] / "charms" / "beacon" / "rbac"
AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)


def rendered(name: str, model: str) -> list[dict[str, Any]]:
    """A manifest of charms/beacon/rbac with its placeholders filled in, as the docs say."""
    text = string.Template((RBAC / name).read_text()).substitute(
        MODEL=model, APP=APP, WAYPOINT=waypoint_name(model, APP)
    )
    return [doc for doc in yaml.safe_load_all(text) if doc]


def bind_role(kube: KubeServer, admin: Client, model: str) -> Path:
    """The beacon's ServiceAccount with only the shipped Role bound; its kubeconfig."""
    kubeconfig = kube.namespaced_kubeconfig(model, APP, rules=[])  # an empty Role of its own
    for document in rendered("role.yaml", model):
        admin.apply(codecs.from_dict(document), force=True)
    return kubeconfig


def state(model: str, relations: list[testing.Relation], planned_units: int = 1) -> testing.State:
    return testing.State(
        leader=True,
        model=testing.Model(name=model),
        relations=relations,
        config={"model-on-mesh": True},
        planned_units=planned_units,
        containers=[testing.Container("metrics-proxy", can_connect=False)],
    )


def consumers(admin: Client, model: str) -> list[testing.Relation]:
    """Two related apps (with their Services), each asking for an app and a unit policy."""
    relations: list[testing.Relation] = []
    for app in ("receiver0", "receiver1"):
        juju_seed.seed_service(admin, app, model)
        policies = [
            MeshPolicy(
                source_namespace=model,
                source_app_name="sender",
                target_namespace=model,
                target_app_name=app,
                endpoints=[Endpoint(ports=[8080], methods=[Method.get])],
            ).to_dict(),
            MeshPolicy(
                source_namespace=model,
                source_app_name="sender",
                target_namespace=model,
                target_app_name=app,
                target_type=PolicyTargetType.unit,
                endpoints=[Endpoint(ports=[8080])],
            ).to_dict(),
        ]
        relations.append(
            testing.Relation(
                "service-mesh",
                remote_app_name=app,
                remote_app_data={"policies": json.dumps(policies)},
            )
        )
    return relations


def istio_runs_waypoint(admin: Client, model: str) -> None:
    """What istiod does with the beacon's Gateway: its status, and the Deployment it makes."""
    istiod_standin.run_waypoint(admin, waypoint_name(model, APP), model)


def owned(admin: Client, resource: Any, model: str) -> list[str]:
    api: Any = admin
    labels = {MANAGED_BY: owner_value(model, APP)}
    return sorted(
        item.metadata.name for item in api.list(resource, namespace=model, labels=labels)
    )


@pytest.fixture
def model(admin: Client, namespace: str) -> str:
    """A model with the beacon's StatefulSet and Service and Juju's model operator."""
    juju_seed.seed_app(admin, APP, namespace)
    juju_seed.seed_model_operator(admin, namespace)
    return namespace


def test_with_jujus_default_role_it_is_blocked_and_names_the_role(
    kube: KubeServer, admin: Client, model: str, monkeypatch: pytest.MonkeyPatch
):
    kubeconfig = kube.namespaced_kubeconfig(
        model,
        APP,
        rules=juju_default_app_rules(model),
        cluster_rules=JUJU_DEFAULT_CLUSTER_RULES,
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    ctx = testing.Context(IstioBeaconCharm, app_name=APP)

    out = ctx.run(ctx.on.config_changed(), state(model, consumers(admin, model)))

    # Juju lets it read its namespace but not label it: the first step it needs, refused.
    assert out.unit_status == testing.BlockedStatus(
        f"run `juju trust {APP} --scope=cluster` or bind the Role in charms/beacon/rbac "
        "(docs/beacon.md): Kubernetes refused to label the namespace"
    )
    assert owned(admin, gateway_resource(), model) == []
    assert owned(admin, AuthorizationPolicy, model) == []


def test_the_shipped_role_runs_the_reference_scenario_with_no_refusal(
    kube: KubeServer, admin: Client, model: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("KUBECONFIG", str(bind_role(kube, admin, model)))
    ctx = testing.Context(IstioBeaconCharm, app_name=APP)
    relations = consumers(admin, model)
    mark = kube.audit_mark()

    out = ctx.run(ctx.on.config_changed(), state(model, relations))
    assert out.unit_status.name == "waiting", out.unit_status
    istio_runs_waypoint(admin, model)
    out = ctx.run(ctx.on.update_status(), out)
    assert out.unit_status == testing.ActiveStatus(), out.unit_status

    waypoint = waypoint_name(model, APP)
    assert owned(admin, gateway_resource(), model) == [waypoint]
    assert owned(admin, HorizontalPodAutoscaler, model) == [waypoint]
    # 2 apps x (app + unit policy), the waypoint's access to each app, the model operator's.
    assert len(owned(admin, AuthorizationPolicy, model)) == 7
    namespace = admin.get(Namespace, model)
    assert namespace.metadata is not None
    assert (namespace.metadata.labels or {})[OWNER_LABEL] == owner_value(model, APP)

    ctx.run(ctx.on.action("access-map"), out)
    assert "map" in ctx.action_results  # type: ignore[operator]

    # A relation goes: its policies go with it.
    out = ctx.run(ctx.on.relation_broken(out.get_relation(relations[1].id)), out)
    assert len(owned(admin, AuthorizationPolicy, model)) == 4

    out = ctx.run(ctx.on.remove(), dataclasses.replace(out, planned_units=0))
    assert out.unit_status == testing.MaintenanceStatus("removed the mesh resources")
    assert owned(admin, gateway_resource(), model) == []
    assert owned(admin, AuthorizationPolicy, model) == []
    assert OWNER_LABEL not in (admin.get(Namespace, model).metadata.labels or {})  # type: ignore[union-attr]
    api: Any = admin
    assert label_configmap_name(APP) not in [
        item.metadata.name for item in api.list(ConfigMap, namespace=model)
    ]

    assert kube.refused_since(mark) == []


def test_switching_model_on_mesh_off_waits_for_the_related_apps_with_no_refusal(
    kube: KubeServer, admin: Client, model: str, monkeypatch: pytest.MonkeyPatch
):
    """The namespace stays on the mesh until the related app carries its own labels.

    What it reads to know (StatefulSets, pods, Services) the shipped Role allows.
    """
    monkeypatch.setenv("KUBECONFIG", str(bind_role(kube, admin, model)))
    ctx = testing.Context(IstioBeaconCharm, app_name=APP)
    relation = consumers(admin, model)[0]  # its Service, and its request
    admin.create(codecs.from_dict(juju_seed.statefulset_manifest("receiver0", model)))
    out = ctx.run(ctx.on.config_changed(), state(model, [relation]))
    mark = kube.audit_mark()

    off = dataclasses.replace(out, config={"model-on-mesh": False})
    out = ctx.run(ctx.on.config_changed(), off)
    labels = admin.get(Namespace, model).metadata.labels or {}  # type: ignore[union-attr]
    assert labels[OWNER_LABEL] == owner_value(model, APP)
    assert out.unit_status == testing.WaitingStatus(
        "model-on-mesh is off: keeping the model on the mesh until receiver0 carries its own "
        "mesh labels"
    )

    # What the consumer does with the labels published to it (the library's auto-join).
    waypoint = waypoint_name(model, APP)
    admin.patch(
        StatefulSet,
        "receiver0",
        {"spec": {"template": {"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}}}},
        namespace=model,
        patch_type=PatchType.MERGE,
    )
    admin.patch(
        Service,
        "receiver0",
        {"metadata": {"labels": {"istio.io/use-waypoint": waypoint}}},
        namespace=model,
        patch_type=PatchType.MERGE,
    )
    out = ctx.run(ctx.on.update_status(), out)
    labels = admin.get(Namespace, model).metadata.labels or {}  # type: ignore[union-attr]
    assert OWNER_LABEL not in labels
    assert "istio.io/dataplane-mode" not in labels
    assert kube.refused_since(mark) == []


def test_the_shipped_role_takes_over_the_deployed_beacon_with_no_refusal(
    kube: KubeServer, admin: Client, monkeypatch: pytest.MonkeyPatch
):
    # A model name short enough that the deployed charm's waypoint has the beacon's name (the
    # Role fixes that name; docs/beacon.md says what to add for a longer one).
    model = f"rbac-{uuid.uuid4().hex[:8]}"
    juju_seed.seed_app(admin, APP, model)
    juju_seed.seed_model_operator(admin, model)
    juju_seed.seed_service(admin, "receiver", model)
    with kube.admin_client(field_manager=APP) as deployed:
        seed_deployed_beacon(deployed, APP, model, consumers=[("sender", "receiver")])
    monkeypatch.setenv("KUBECONFIG", str(bind_role(kube, admin, model)))
    ctx = testing.Context(IstioBeaconCharm, app_name=APP)
    relation = testing.Relation(
        "service-mesh",
        remote_app_name="receiver",
        remote_app_data={
            "policies": json.dumps(
                [
                    MeshPolicy(
                        source_namespace=model,
                        source_app_name="sender",
                        target_namespace=model,
                        target_app_name="receiver",
                        endpoints=[Endpoint(ports=[8080], methods=[Method.get])],
                    ).to_dict()
                ]
            )
        },
    )
    mark = kube.audit_mark()

    out = ctx.run(ctx.on.upgrade_charm(), state(model, [relation]))

    assert deployed_objects(admin, APP, model) == []
    assert out.unit_status.name == "waiting", out.unit_status
    assert kube.refused_since(mark) == []
