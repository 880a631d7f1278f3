"""The beacon's waypoint functions against a real API server (with and without the Gateway CRD)."""

from __future__ import annotations

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import MissingCRDError, get_default_labels
from lightkube import Client
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from support.kube_server import KubeServer, count_writes, ensure_namespace
from waypoint import delete_waypoint, gateway_resource, reconcile_waypoint, waypoint_name

APP = "istio-beacon-k8s"


def beacon_client(kube: KubeServer, namespace: str) -> Client:
    """A client like the beacon's: trusted, defaulting to the model's namespace."""
    return kube.admin_client(field_manager=f"{APP}-{namespace}", namespace=namespace)


def owned(client: Client, namespace: str) -> tuple[list[str], list[str]]:
    gateways = client.list(gateway_resource(), namespace=namespace)
    hpas = client.list(HorizontalPodAutoscaler, namespace=namespace)
    return (
        [g.to_dict()["metadata"]["name"] for g in gateways],
        [h.to_dict()["metadata"]["name"] for h in hpas],
    )


def test_waypoint_created_scaled_unchanged_removed(kube: KubeServer, namespace: str):
    client = beacon_client(kube, namespace)
    name = waypoint_name(namespace, APP)
    labels = get_default_labels(APP, namespace, scope="waypoint")

    reconcile_waypoint(client, name, 1, labels)
    assert owned(client, namespace) == ([name], [name])
    hpa = client.get(HorizontalPodAutoscaler, name, namespace=namespace)
    assert hpa.spec is not None
    assert (hpa.spec.minReplicas, hpa.spec.maxReplicas) == (1, 1)

    reconcile_waypoint(client, name, 3, labels)
    hpa = client.get(HorizontalPodAutoscaler, name, namespace=namespace)
    assert hpa.spec is not None
    assert (hpa.spec.minReplicas, hpa.spec.maxReplicas) == (3, 3)

    before = kube.request_counts()
    reconcile_waypoint(client, name, 3, labels)
    after = kube.request_counts()
    assert count_writes(before, after, group="gateway.networking.k8s.io") == 0
    assert count_writes(before, after, group="autoscaling") == 0

    reconcile_waypoint(client, name, 0, labels)
    assert owned(client, namespace) == ([], [])


def test_delete_waypoint(kube: KubeServer, namespace: str):
    client = beacon_client(kube, namespace)
    name = waypoint_name(namespace, APP)
    labels = get_default_labels(APP, namespace, scope="waypoint")
    reconcile_waypoint(client, name, 2, labels)
    delete_waypoint(client, name, labels)
    assert owned(client, namespace) == ([], [])


def test_missing_gateway_crd_reported_as_such(bare_kube: KubeServer):
    # As in test_policy_resource_manager: a real apiserver's 404 for an unserved resource is
    # text/plain, so lightkube does not raise ApiError for it.
    namespace = "no-gateway-api"
    client = beacon_client(bare_kube, namespace)
    ensure_namespace(client, namespace)
    labels = get_default_labels(APP, namespace, scope="waypoint")
    with pytest.raises(MissingCRDError):
        reconcile_waypoint(client, waypoint_name(namespace, APP), 1, labels)


def test_delete_waypoint_without_gateway_crd_is_fine(bare_kube: KubeServer):
    namespace = "no-gateway-api-delete"
    client = beacon_client(bare_kube, namespace)
    ensure_namespace(client, namespace)
    delete_waypoint(
        client, waypoint_name(namespace, APP), get_default_labels(APP, namespace, scope="waypoint")
    )
