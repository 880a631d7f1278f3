"""The waypoint (Gateway + autoscaler) and the beacon's own mesh labels."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

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
    istio_runs_waypoint,
    rollback_labels,
)
from ops import testing
from ownership import is_generated_by_istio, owns_waypoint_autoscaler
from support.fake_kube import FakeKubeServer
from waypoint import build_autoscaler, gateway_missing, waypoint_name


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
        # The deployed charm finds it by these after a rollback (docs/beacon.md).
        **rollback_labels("istio-waypoint"),
    }
    assert gateway["spec"] == {
        "gatewayClassName": "istio-waypoint",
        "listeners": [
            {
                "name": "mesh",
                "port": 15008,
                "protocol": "HBONE",
                "allowedRoutes": {"namespaces": {"from": "Same"}},
            }
        ],
    }
    autoscaler = kube.get("horizontalpodautoscalers", MODEL, WAYPOINT)
    assert autoscaler is not None
    assert autoscaler["metadata"]["labels"] == {
        MANAGED_BY: OWNER,
        **rollback_labels("istio-waypoint"),
    }
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
    gateway["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"] = "All"
    kube.put(gateway, field_manager="kubectl-edit")

    ctx.run(ctx.on.update_status(), beacon_state())

    restored = kube.get("gateways", MODEL, WAYPOINT)
    assert restored is not None
    assert restored["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"] == "Same"


def test_waits_for_istio_to_program_the_gateway_without_blocking_the_hook(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    out = ctx.run(ctx.on.config_changed(), beacon_state(planned_units=2))

    assert out.unit_status == testing.WaitingStatus(
        "waiting for the waypoint: Istio has not programmed the Gateway yet; the Gateway has no "
        f"address yet; Istio has not created the {WAYPOINT} Deployment yet"
    )


@pytest.mark.parametrize(
    ("istio", "missing"),
    [
        (
            {"programmed": False},
            "Gateway not Programmed (Invalid: listener mesh: port 15008 conflicts)",
        ),
        ({"address": False}, "the Gateway has no address yet"),
        ({"replicas": 2, "ready": 1}, f"1/2 {WAYPOINT} replicas ready"),
    ],
    ids=["not programmed", "no address", "replicas not ready"],
)
def test_the_waypoint_is_ready_only_once_istio_programmed_its_gateway_and_runs_every_replica(
    ctx: testing.Context[IstioBeaconCharm],
    kube: FakeKubeServer,
    istio: dict[str, Any],
    missing: str,
):
    istio_runs_waypoint(kube, **{"replicas": 2, **istio})

    out = ctx.run(ctx.on.config_changed(), beacon_state(planned_units=2))

    assert out.unit_status == testing.WaitingStatus(f"waiting for the waypoint: {missing}")


def test_readiness_counts_the_replicas_the_beacon_wants_not_those_the_deployment_has_yet(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    # Scaled to 3 units: the Deployment still says 1/1 until the autoscaler acts.
    istio_runs_waypoint(kube, replicas=1, ready=1)

    out = ctx.run(ctx.on.config_changed(), beacon_state(planned_units=3))

    assert out.unit_status == testing.WaitingStatus(
        f"waiting for the waypoint: 1/3 {WAYPOINT} replicas ready"
    )


def test_update_status_notices_the_waypoint_became_ready(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    out = ctx.run(ctx.on.config_changed(), beacon_state())
    assert isinstance(out.unit_status, testing.WaitingStatus)
    istio_runs_waypoint(kube)

    out = ctx.run(ctx.on.update_status(), out)

    assert out.unit_status == testing.ActiveStatus()


def _istio_autoscaler(replicas: int) -> dict[str, Any]:
    """An autoscaler Istio generated from the Gateway: its labels copied, owned by the Gateway."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": WAYPOINT,
            "namespace": MODEL,
            "labels": {
                MANAGED_BY: OWNER,
                "istio.io/waypoint-for": "service",
                "gateway.networking.k8s.io/gateway-name": WAYPOINT,
                "gateway.istio.io/managed": "istio.io-mesh-controller",
            },
            "ownerReferences": [
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway",
                    "name": WAYPOINT,
                    "uid": "6f1c2d9e-0000-4000-8000-000000000001",
                }
            ],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": WAYPOINT},
            "minReplicas": replicas,
            "maxReplicas": 5,
        },
    }


def test_never_adopts_or_deletes_an_autoscaler_istio_generated(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    generated = kube.put(_istio_autoscaler(2), field_manager="pilot-discovery")
    istio_runs_waypoint(kube, replicas=2)

    out = ctx.run(ctx.on.config_changed(), beacon_state(planned_units=3))
    assert out.unit_status == testing.ActiveStatus()  # Istio's autoscaler decides: 2/2 ready
    ctx.run(ctx.on.remove(), beacon_state(planned_units=0))

    kept = kube.get("horizontalpodautoscalers", MODEL, WAYPOINT)
    assert kept is not None
    assert kept["spec"] == generated["spec"]
    assert kept["metadata"]["resourceVersion"] == generated["metadata"]["resourceVersion"]


def test_removal_deletes_its_own_autoscaler_by_name(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    ctx.run(ctx.on.config_changed(), beacon_state())
    assert kube.get("horizontalpodautoscalers", MODEL, WAYPOINT) is not None

    ctx.run(ctx.on.remove(), beacon_state(planned_units=0))

    assert kube.get("horizontalpodautoscalers", MODEL, WAYPOINT) is None
    assert kube.get("gateways", MODEL, WAYPOINT) is None


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

    # Each label only where Istio reads it: the data-plane mode on pods, the waypoint on Services.
    assert _pod_template_labels(kube) == {
        "app.kubernetes.io/name": APP,
        "istio.io/dataplane-mode": "ambient",
    }
    assert _service_labels(kube) == {
        "app.kubernetes.io/name": APP,
        "istio.io/use-waypoint": WAYPOINT,
        "istio.io/use-waypoint-namespace": MODEL,
    }
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


def _gateway(generation: int, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": WAYPOINT, "generation": generation}, "status": status}


PROGRAMMED = {"type": "Programmed", "status": "True", "reason": "Programmed"}
ADDRESS = [{"type": "IPAddress", "value": "10.152.183.7"}]


@pytest.mark.parametrize(
    ("gateway", "missing"),
    [
        (_gateway(2, conditions=[{**PROGRAMMED, "observedGeneration": 2}], addresses=ADDRESS), []),
        (
            _gateway(3, conditions=[{**PROGRAMMED, "observedGeneration": 2}], addresses=ADDRESS),
            ["Istio has not programmed the Gateway's latest change yet"],
        ),
        (
            _gateway(1, conditions=[{**PROGRAMMED, "status": "Unknown", "reason": "Pending"}]),
            ["Gateway not Programmed (Pending)", "the Gateway has no address yet"],
        ),
        (None, ["no Gateway"]),
    ],
    ids=["programmed", "an older generation", "pending without address", "no gateway"],
)
def test_istio_uses_the_waypoint_once_its_gateway_is_programmed_with_an_address(
    gateway: dict[str, Any] | None, missing: list[str]
):
    assert gateway_missing(gateway) == missing


ISTIO_MARKS: list[dict[str, Any]] = [
    {"labels": {"gateway.istio.io/managed": "istio.io-mesh-controller"}},
    {"labels": {"gateway.networking.k8s.io/gateway-name": WAYPOINT}},
    {
        "ownerReferences": [
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": WAYPOINT}
        ]
    },
]


@pytest.mark.parametrize("marks", ISTIO_MARKS, ids=["managed label", "gateway-name", "owner"])
def test_an_object_with_any_of_istios_marks_is_istios_whatever_labels_it_copied(
    marks: dict[str, Any],
):
    metadata = {"name": WAYPOINT, "labels": {MANAGED_BY: OWNER}}
    for key, value in marks.items():
        metadata[key] = {**metadata.get(key, {}), **value} if key == "labels" else value
    autoscaler = {"kind": "HorizontalPodAutoscaler", "metadata": metadata}

    assert is_generated_by_istio(autoscaler)
    assert not owns_waypoint_autoscaler(autoscaler, WAYPOINT)


def test_the_beacons_autoscaler_is_known_by_kind_and_name():
    ours = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": WAYPOINT}}

    assert owns_waypoint_autoscaler(ours, WAYPOINT)
    assert not owns_waypoint_autoscaler(ours, "another-waypoint")
    assert not owns_waypoint_autoscaler({**ours, "kind": "PodDisruptionBudget"}, WAYPOINT)
