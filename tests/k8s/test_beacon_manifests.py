"""Every manifest the beacon's builders produce passes the real schemas, with strict validation.

Complements ``test_schema_acceptance.py`` (the library's builders): the waypoint Gateway (Gateway
API CRD), its HorizontalPodAutoscaler (built-in API), the model-operator policy and the policies
the beacon labels and annotates with who asked for them.
"""

from __future__ import annotations

from typing import Any

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    Endpoint,
    MeshPolicy,
    Method,
    PolicyTargetType,
    get_default_labels,
)
from model_operator import model_operator_policy
from policies import AcceptedPolicy, build_policy_manifests, waypoint_allow_policy
from support.juju_seed import MODEL_OPERATOR_LABELS
from support.kube_server import KubeServer, ensure_namespace
from waypoint import build_autoscaler, build_gateway, waypoint_name

NS = "beacon-model"


@pytest.fixture(scope="module", autouse=True)
def model_namespace(kube: KubeServer) -> None:
    with kube.admin_client() as client:
        ensure_namespace(client, NS)


def assert_accepted(kube: KubeServer, manifest: dict[str, Any]) -> None:
    status, body = kube.strict_create(manifest)
    assert status == 201, f"{manifest['kind']} refused ({status}): {body}"
    for key, value in manifest["spec"].items():
        assert body["spec"][key] == value, f"the API changed spec.{key}"
    assert (body["metadata"].get("labels") or {}) == (manifest["metadata"].get("labels") or {})


@pytest.mark.parametrize(
    ("model", "app"),
    [("m", "beacon"), ("a-rather-long-model-name-for-a-test", "istio-beacon-k8s-with-suffix")],
    ids=["short", "hashed"],
)
def test_waypoint_gateway_and_autoscaler_accepted(kube: KubeServer, model: str, app: str):
    name = waypoint_name(model, app)
    labels = get_default_labels(app, model, scope="waypoint")
    assert_accepted(kube, build_gateway(name, NS, labels))
    for replicas in (1, 3):
        assert_accepted(kube, build_autoscaler(name, NS, replicas, labels))


@pytest.mark.parametrize("scheme", sorted(MODEL_OPERATOR_LABELS))
def test_model_operator_policy_accepted(kube: KubeServer, scheme: str):
    assert_accepted(kube, model_operator_policy(NS, MODEL_OPERATOR_LABELS[scheme]))


def test_waypoint_access_policy_accepted(kube: KubeServer):
    waypoint = waypoint_name(NS, "istio-beacon-k8s")
    assert_accepted(
        kube, waypoint_allow_policy("receiver1", NS, f"cluster.local/ns/{NS}/sa/{waypoint}")
    )


def test_requested_policies_accepted(kube: KubeServer):
    app = MeshPolicy(
        source_namespace="other-model",
        source_app_name="sender1",
        target_namespace=NS,
        target_app_name="receiver1",
        endpoints=[Endpoint(ports=[8080, 8081], methods=[Method.get], paths=["/foo", "/bar/"])],
    )
    unit = MeshPolicy(
        source_namespace=NS,
        source_app_name="sender2",
        target_namespace=NS,
        target_app_name="receiver1",
        target_type=PolicyTargetType.unit,
        endpoints=[Endpoint(ports=[8080, 8081])],
    )
    manifests, refusals = build_policy_manifests(
        [AcceptedPolicy(app, "sender1", 3), AcceptedPolicy(unit, "sender2", 4)]
    )
    assert not refusals
    assert len(manifests) == 2
    for manifest in manifests:
        assert_accepted(kube, manifest)
