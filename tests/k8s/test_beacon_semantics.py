"""What Istio and Juju do with the beacon's objects, on a real API server.

The model operator is found through its own Service (both of Juju's label schemes) and taken off
the waypoint; a policy Istio would not enforce is refused; Istio's status (on Gateways and
AuthorizationPolicies, written through the status subresource as istiod writes it) decides
readiness and is surfaced; what Istio generates from the Gateway is never adopted or deleted.
Nothing runs Istio here: its part is written by the tests, as istiod would write it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from charm import IstioBeaconCharm
from kube_names import NAMESPACE_OWNER_LABEL
from lightkube import ApiError, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import DeploymentStatus
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType
from namespace_labels import owner_value
from ops import testing
from support import istiod_standin, juju_seed
from support.kube_server import KubeServer
from test_beacon_charm import APP, owned, relation, request, requested_by, state
from waypoint import gateway_resource, waypoint_name

AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)


@pytest.fixture
def ctx() -> testing.Context[IstioBeaconCharm]:
    return testing.Context(IstioBeaconCharm, app_name=APP)


@pytest.fixture
def model(kube: KubeServer, admin: Client, namespace: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A model with the beacon's StatefulSet and Service, reached through a Role over it only."""
    juju_seed.seed_app(admin, APP, namespace)
    monkeypatch.setenv("KUBECONFIG", str(kube.namespaced_kubeconfig(namespace, APP)))
    return namespace


def service_labels(admin: Client, model: str, name: str) -> dict[str, str]:
    service = admin.get(Service, name, namespace=model)
    assert service.metadata is not None
    return dict(service.metadata.labels or {})


def istio_runs_waypoint(admin: Client, model: str, replicas: int, ready: int) -> None:
    """What istiod does with the beacon's Gateway: its status, and the Deployment it makes."""
    istiod_standin.run_waypoint(admin, waypoint_name(model, APP), model, replicas, ready)


# --- Juju's model operator ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["legacy", "current"])
def test_the_model_operator_is_selected_by_its_own_service_and_kept_off_the_waypoint(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str, scheme: str
):
    selector = juju_seed.seed_model_operator(admin, model, scheme)
    juju_labels = service_labels(admin, model, "modeloperator")
    out = ctx.run(ctx.on.config_changed(), state(model, model_on_mesh=True))
    istio_runs_waypoint(admin, model, replicas=1, ready=1)

    out = ctx.run(ctx.on.update_status(), out)

    policy = admin.get(AuthorizationPolicy, "allow-juju-model-operator", namespace=model)
    assert policy.to_dict()["spec"] == {
        "action": "ALLOW",
        "selector": {"matchLabels": selector},
        "rules": [{}],
    }
    assert service_labels(admin, model, "modeloperator") == {
        **juju_labels,
        "istio.io/use-waypoint": "none",
        NAMESPACE_OWNER_LABEL: owner_value(model, APP),
    }
    assert out.unit_status == testing.ActiveStatus()

    ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={"model-on-mesh": False}))

    with pytest.raises(ApiError):
        admin.get(AuthorizationPolicy, "allow-juju-model-operator", namespace=model)
    assert service_labels(admin, model, "modeloperator") == juju_labels


def test_without_the_model_operator_service_it_says_so(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    out = ctx.run(ctx.on.config_changed(), state(model, model_on_mesh=True))

    assert out.unit_status == testing.BlockedStatus(
        f"model-on-mesh: no modeloperator Service in {model}: cannot tell which pods are Juju's "
        "model operator, so nothing keeps it reachable"
    )
    assert owned(admin, AuthorizationPolicy, model) == {}


# --- policies Istio would not enforce, and what Istio says --------------------------------------


def test_a_policy_on_an_unbound_service_is_refused_and_applied_once_the_model_is_on_the_mesh(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    juju_seed.seed_model_operator(admin, model)
    juju_seed.seed_service(admin, "receiver1", model)
    juju_seed.seed_service(
        admin, "receiver1-admin", model, {"app.kubernetes.io/name": "receiver1"}
    )
    mesh = relation(
        "receiver1", [request(model, "sender", "receiver1", target_service="receiver1-admin")]
    )

    out = ctx.run(ctx.on.config_changed(), state(model, [mesh]))

    assert requested_by(admin, model) == {}
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(
        "refused a request from receiver1: Service receiver1-admin is not bound to the waypoint"
    )

    ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={"model-on-mesh": True}))

    assert requested_by(admin, model) == {"receiver1": 1}


def test_istios_conditions_on_a_policy_are_surfaced(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    juju_seed.seed_service(admin, "receiver1", model)
    mesh = relation("receiver1", [request(model, "sender", "receiver1")])
    out = ctx.run(ctx.on.config_changed(), state(model, [mesh]))
    istio_runs_waypoint(admin, model, replicas=1, ready=1)
    (key,) = [
        k for k, p in owned(admin, AuthorizationPolicy, model).items() if "targetRefs" in p["spec"]
    ]
    name = key.split("/", 1)[1]
    generation = admin.get(AuthorizationPolicy, name, namespace=model).to_dict()["metadata"][
        "generation"
    ]
    admin.patch(
        AuthorizationPolicy.Status,
        name,
        {
            "status": {
                "conditions": [
                    {
                        "type": "WaypointAccepted",
                        "status": "False",
                        "reason": "AncestorNotBound",
                        "message": f"Service {model}/receiver1 is not bound to a waypoint",
                        "observedGeneration": generation,
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ]
            }
        },
        namespace=model,
        patch_type=PatchType.MERGE,
    )

    out = ctx.run(ctx.on.update_status(), out)

    assert out.unit_status == testing.BlockedStatus(
        f"Istio does not enforce policy {name} (receiver1): AncestorNotBound: "
        f"Service {model}/receiver1 is not bound to a waypoint"
    )


def test_the_waypoint_identity_reaches_every_related_apps_pods(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    mesh = relation("receiver1", [request(model, "sender", "receiver1", target_type="unit")])

    ctx.run(ctx.on.config_changed(), state(model, [mesh]))

    policy = admin.get(AuthorizationPolicy, "receiver1-from-waypoint", namespace=model)
    principal = f"cluster.local/ns/{model}/sa/{waypoint_name(model, APP)}"
    assert policy.to_dict()["spec"] == {
        "action": "ALLOW",
        "selector": {"matchLabels": {"app.kubernetes.io/name": "receiver1"}},
        "rules": [{"from": [{"source": {"principals": [principal]}}]}],
    }


# --- the waypoint: readiness, allowed routes, ownership ---------------------------------------


def test_ready_once_istio_programmed_the_gateway_and_every_wanted_replica_is_ready(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    name = waypoint_name(model, APP)
    out = ctx.run(ctx.on.config_changed(), state(model, planned_units=2))
    gateway: Any = admin.get(gateway_resource(), name, namespace=model).to_dict()
    assert gateway["spec"]["listeners"][0]["allowedRoutes"] == {"namespaces": {"from": "Same"}}
    istio_runs_waypoint(admin, model, replicas=1, ready=1)  # the autoscaler has not acted yet

    out = ctx.run(ctx.on.update_status(), out)
    assert out.unit_status == testing.WaitingStatus(
        f"waiting for the waypoint: 1/2 {name} replicas ready"
    )

    admin.patch(
        DeploymentStatus,
        name,
        {"status": {"replicas": 2, "readyReplicas": 2}},
        namespace=model,
        patch_type=PatchType.MERGE,
    )
    out = ctx.run(ctx.on.update_status(), out)
    assert out.unit_status == testing.ActiveStatus()


def test_an_autoscaler_istio_generated_is_never_adopted_or_deleted(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    name = waypoint_name(model, APP)
    out = ctx.run(ctx.on.config_changed(), state(model))
    gateway = admin.get(gateway_resource(), name, namespace=model)
    assert gateway.metadata is not None
    # Istio's own, made from the Gateway: its labels copied (the beacon's ownership label too).
    admin.delete(HorizontalPodAutoscaler, name, namespace=model)
    api: Any = admin  # from_dict() is typed as returning a plain DictMixin
    api.create(
        HorizontalPodAutoscaler.from_dict(
            {
                "metadata": {
                    "name": name,
                    "namespace": model,
                    "labels": {
                        **(gateway.metadata.labels or {}),
                        "gateway.networking.k8s.io/gateway-name": name,
                        "gateway.istio.io/managed": "istio.io-mesh-controller",
                    },
                    "ownerReferences": [
                        {
                            "apiVersion": "gateway.networking.k8s.io/v1",
                            "kind": "Gateway",
                            "name": name,
                            "uid": gateway.metadata.uid,
                        }
                    ],
                },
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": name,
                    },
                    "minReplicas": 1,
                    "maxReplicas": 5,
                },
            }
        ),
        field_manager="pilot-discovery",
    )
    generated = admin.get(HorizontalPodAutoscaler, name, namespace=model)
    assert generated.metadata is not None

    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, planned_units=3))
    out = ctx.run(ctx.on.remove(), dataclasses.replace(out, planned_units=0))

    kept = admin.get(HorizontalPodAutoscaler, name, namespace=model)
    assert kept.metadata is not None
    assert kept.metadata.resourceVersion == generated.metadata.resourceVersion
    assert owned(admin, gateway_resource(), model) == {}
