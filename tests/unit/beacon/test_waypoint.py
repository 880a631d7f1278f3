"""The waypoint (Gateway + autoscaler) and the beacon's own mesh labels."""

from __future__ import annotations

import dataclasses
import json

import pytest
from charm import IstioBeaconCharm
from conftest import (
    APP,
    MANAGED_BY,
    MESH_LABELS,
    MODEL,
    OWNER,
    WAYPOINT,
    beacon_state,
    seed_waypoint_deployment,
)
from fake_kube import FakeKubeServer
from ops import testing
from waypoint import build_autoscaler, waypoint_name


def test_waypoint_name_is_model_app_waypoint():
    assert waypoint_name("prod", "istio-beacon-k8s") == "prod-istio-beacon-k8s-waypoint"


def test_long_waypoint_names_are_shortened_stably_and_stay_unique():
    model = "a-rather-long-model-name-for-a-team"
    first = waypoint_name(model, "istio-beacon-k8s-number-one")
    second = waypoint_name(model, "istio-beacon-k8s-number-two")

    assert len(first) == 63
    assert first == waypoint_name(model, "istio-beacon-k8s-number-one")
    assert first != second
    assert first.startswith(f"{model}-istio-beacon")
    assert first[-1].isalnum()


def test_an_autoscaler_needs_a_replica():
    with pytest.raises(ValueError, match="at least 1 replica"):
        build_autoscaler("w", "ns", 0, {})


def test_creates_the_waypoint_gateway_and_autoscaler(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    ctx.run(ctx.on.config_changed(), beacon_state(planned_units=2))

    gateway = kube.get("gateways", MODEL, WAYPOINT)
    assert gateway is not None
    assert gateway["metadata"]["labels"] == {
        "istio.io/waypoint-for": "service",
        MANAGED_BY: OWNER,
        # Istio copies it onto the waypoint pods: the metrics proxy gathers theirs.
        f"charms.canonical.com/{MODEL}.istio-beacon-k8s.telemetry": "aggregated",
    }
    assert gateway["spec"] == {
        "gatewayClassName": "istio-waypoint",
        "listeners": [
            {
                "name": "mesh",
                "port": 15008,
                "protocol": "HBONE",
                "allowedRoutes": {"namespaces": {"from": "All"}},
            }
        ],
    }
    autoscaler = kube.get("horizontalpodautoscalers", MODEL, WAYPOINT)
    assert autoscaler is not None
    assert autoscaler["metadata"]["labels"] == {MANAGED_BY: OWNER}
    assert autoscaler["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": WAYPOINT},
        "minReplicas": 2,
        "maxReplicas": 2,
    }


def test_waypoint_replicas_follow_the_planned_units(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    peers = testing.PeerRelation("peers", peers_data={1: {}, 2: {}})
    state = beacon_state(planned_units=3, relations=[peers])
    out = ctx.run(ctx.on.config_changed(), state)

    out = ctx.run(
        ctx.on.relation_departed(peers, remote_unit=2, departing_unit=2),
        dataclasses.replace(out, planned_units=2),
    )

    autoscaler = kube.get("horizontalpodautoscalers", MODEL, WAYPOINT)
    assert autoscaler is not None
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (2, 2)


def test_a_tampered_gateway_is_restored(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    ctx.run(ctx.on.config_changed(), beacon_state())
    gateway = kube.get("gateways", MODEL, WAYPOINT)
    assert gateway is not None
    gateway["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"] = "Same"
    kube.put(gateway, field_manager="kubectl-edit")

    ctx.run(ctx.on.update_status(), beacon_state())

    restored = kube.get("gateways", MODEL, WAYPOINT)
    assert restored is not None
    assert restored["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"] == "All"


@pytest.mark.parametrize(
    ("deployment", "message"),
    [
        (None, f"waiting for the waypoint: Istio has not created the {WAYPOINT} Deployment yet"),
        ((2, 1), f"waiting for the waypoint: 1/2 {WAYPOINT} replicas ready"),
    ],
    ids=["no deployment yet", "replicas not ready"],
)
def test_waits_for_the_waypoint_without_blocking_the_hook(
    ctx: testing.Context[IstioBeaconCharm],
    kube: FakeKubeServer,
    deployment: tuple[int, int] | None,
    message: str,
):
    if deployment is not None:
        seed_waypoint_deployment(kube, *deployment)

    out = ctx.run(ctx.on.config_changed(), beacon_state(planned_units=2))

    assert out.unit_status == testing.WaitingStatus(message)


def test_update_status_notices_the_waypoint_became_ready(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    out = ctx.run(ctx.on.config_changed(), beacon_state())
    assert isinstance(out.unit_status, testing.WaitingStatus)
    seed_waypoint_deployment(kube, replicas=1, ready=1)

    out = ctx.run(ctx.on.update_status(), out)

    assert out.unit_status == testing.ActiveStatus()


def _pod_template_labels(kube: FakeKubeServer) -> dict[str, str]:
    statefulset = kube.get("statefulsets", MODEL, APP)
    assert statefulset is not None
    return statefulset["spec"]["template"]["metadata"]["labels"]


def _service_labels(kube: FakeKubeServer) -> dict[str, str]:
    service = kube.get("services", MODEL, APP)
    assert service is not None
    return service["metadata"].get("labels") or {}


def test_puts_itself_on_the_mesh(ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer):
    ctx.run(ctx.on.config_changed(), beacon_state())

    assert _pod_template_labels(kube) == {"app.kubernetes.io/name": APP, **MESH_LABELS}
    assert _service_labels(kube) == {"app.kubernetes.io/name": APP, **MESH_LABELS}
    configmap = kube.get("configmaps", MODEL, f"juju-service-mesh-{APP}-labels")
    assert configmap is not None
    assert json.loads(configmap["data"]["labels"]) == MESH_LABELS


def test_with_the_model_on_the_mesh_its_own_labels_give_way_to_the_namespace_labels(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    ctx.run(ctx.on.config_changed(), beacon_state())

    ctx.run(ctx.on.config_changed(), beacon_state(config={"model-on-mesh": True}))

    assert _pod_template_labels(kube) == {"app.kubernetes.io/name": APP}
    assert _service_labels(kube) == {"app.kubernetes.io/name": APP}
