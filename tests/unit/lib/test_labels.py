"""reconcile_charm_labels against the fake API server: only the labels it manages, ever."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import label_configmap_name, reconcile_charm_labels
from juju_objects import KUBE_MODEL, pod_template_labels, seed_app, service_labels
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType
from support.fake_kube import FakeKubeServer

APP = "consumer-charm"
CONFIGMAP = "juju-service-mesh-consumer-charm-labels"
JUJU = {"app.kubernetes.io/name": APP}
OTHERS = {"someone.else/owner": "them"}
AMBIENT = {"istio.io/dataplane-mode": "ambient"}
WAYPOINT = {"istio.io/use-waypoint": "waypoint-a"}


@pytest.fixture
def client(kube: FakeKubeServer) -> Client:
    seed_app(kube, APP, extra_labels=OTHERS)
    return kube.client(field_manager=f"{APP}-{KUBE_MODEL}")


def reconcile(client: Client, labels: dict[str, str]) -> None:
    reconcile_charm_labels(client, APP, KUBE_MODEL, CONFIGMAP, labels)


def remembered(kube: FakeKubeServer) -> dict[str, str]:
    configmap = kube.get("configmaps", KUBE_MODEL, CONFIGMAP)
    assert configmap is not None
    return json.loads(configmap["data"]["labels"])


def assert_labels(kube: FakeKubeServer, expected: dict[str, str]) -> None:
    """Each label where Istio reads it: the data-plane mode on pods, the waypoint on Services."""
    waypoint_keys = ("istio.io/use-waypoint", "istio.io/use-waypoint-namespace")
    on_pods = {key: value for key, value in expected.items() if key not in waypoint_keys}
    on_service = {
        key: value for key, value in expected.items() if key != "istio.io/dataplane-mode"
    }
    assert pod_template_labels(kube, APP) == on_pods
    assert service_labels(kube, APP) == on_service


def patch_labels(client: Client, kind: type[StatefulSet | Service], patch: dict[str, Any]) -> None:
    client.patch(kind, APP, patch, namespace=KUBE_MODEL, patch_type=PatchType.MERGE)


def test_configmap_name_follows_the_deployed_convention():
    assert label_configmap_name(APP) == CONFIGMAP


def test_labels_are_added_changed_and_removed_leaving_others_alone(
    kube: FakeKubeServer, client: Client
):
    reconcile(client, {**AMBIENT, **WAYPOINT})
    assert_labels(kube, {**JUJU, **OTHERS, **AMBIENT, **WAYPOINT})
    assert remembered(kube) == {**AMBIENT, **WAYPOINT}

    other_waypoint = {"istio.io/use-waypoint": "waypoint-b"}
    reconcile(client, {**AMBIENT, **other_waypoint})
    assert_labels(kube, {**JUJU, **OTHERS, **AMBIENT, **other_waypoint})

    reconcile(client, AMBIENT)
    assert_labels(kube, {**JUJU, **OTHERS, **AMBIENT})
    assert remembered(kube) == AMBIENT

    reconcile(client, {})
    assert_labels(kube, {**JUJU, **OTHERS})
    assert remembered(kube) == {}


def test_labels_added_by_others_later_survive(kube: FakeKubeServer, client: Client):
    reconcile(client, {**AMBIENT, **WAYPOINT})
    late = {"late.comer/x": "y"}
    someone_else = kube.client(field_manager="someone-else")
    patch_labels(someone_else, StatefulSet, {"spec": {"template": {"metadata": {"labels": late}}}})
    patch_labels(someone_else, Service, {"metadata": {"labels": late}})

    reconcile(client, {})

    assert_labels(kube, {**JUJU, **OTHERS, **late})


def test_a_managed_label_whose_value_someone_else_changed_is_left_alone(
    kube: FakeKubeServer, client: Client
):
    reconcile(client, {**AMBIENT, **WAYPOINT})
    theirs = {"istio.io/use-waypoint": "their-waypoint"}
    patch_labels(
        kube.client(field_manager="someone-else"), Service, {"metadata": {"labels": theirs}}
    )

    reconcile(client, {})

    assert pod_template_labels(kube, APP) == {**JUJU, **OTHERS}
    assert service_labels(kube, APP) == {
        **JUJU,
        **OTHERS,
        "istio.io/use-waypoint": "their-waypoint",
    }


def test_nothing_is_written_when_nothing_changed(kube: FakeKubeServer, client: Client):
    reconcile(client, {**AMBIENT, **WAYPOINT})
    kube.reset_requests()

    reconcile(client, {**WAYPOINT, **AMBIENT})

    assert kube.write_count() == 0
    assert [request.verb for request in kube.requests] == ["get", "get", "get"]


def test_only_what_differs_is_written(kube: FakeKubeServer, client: Client):
    # The Service already carries the wanted labels (e.g. put there by a previous run that
    # failed before it could patch the pod template and remember them).
    patch_labels(kube.client(field_manager="juju"), Service, {"metadata": {"labels": WAYPOINT}})
    kube.reset_requests()

    reconcile(client, {**AMBIENT, **WAYPOINT})

    writes = [(r.verb, r.resource) for r in kube.requests if r.verb not in ("get", "list")]
    assert writes == [("patch", "statefulsets"), ("create", "configmaps")]
    assert_labels(kube, {**JUJU, **OTHERS, **AMBIENT, **WAYPOINT})


def test_labels_put_on_both_by_an_earlier_version_leave_where_istio_ignores_them(
    kube: FakeKubeServer, client: Client
):
    # Earlier versions (and the deployed library) put every mesh label on both objects.
    both = {**AMBIENT, **WAYPOINT}
    patch_labels(client, StatefulSet, {"spec": {"template": {"metadata": {"labels": both}}}})
    patch_labels(client, Service, {"metadata": {"labels": both}})
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP, "namespace": KUBE_MODEL},
            "data": {"labels": json.dumps(both)},
        }
    )

    reconcile(client, both)

    assert pod_template_labels(kube, APP) == {**JUJU, **OTHERS, **AMBIENT}
    assert service_labels(kube, APP) == {**JUJU, **OTHERS, **WAYPOINT}


def test_an_unreadable_memory_starts_over(
    kube: FakeKubeServer, client: Client, caplog: pytest.LogCaptureFixture
):
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP, "namespace": KUBE_MODEL},
            "data": {"labels": "not json"},
        }
    )
    with caplog.at_level(logging.WARNING):
        reconcile(client, AMBIENT)

    assert "holds invalid labels" in caplog.text
    assert_labels(kube, {**JUJU, **OTHERS, **AMBIENT})
    assert remembered(kube) == AMBIENT


def test_forbidden_is_raised(kube: FakeKubeServer, client: Client):
    kube.forbid(verb="patch", resource="statefulsets")
    with pytest.raises(ApiError) as info:
        reconcile(client, AMBIENT)
    assert info.value.status.code == 403
    assert kube.get("configmaps", KUBE_MODEL, CONFIGMAP) is None


def test_configmap_read_errors_other_than_not_found_are_raised(
    kube: FakeKubeServer, client: Client
):
    kube.forbid(verb="get", resource="configmaps")
    with pytest.raises(ApiError) as info:
        reconcile(client, AMBIENT)
    assert info.value.status.code == 403
    assert_labels(kube, {**JUJU, **OTHERS})
