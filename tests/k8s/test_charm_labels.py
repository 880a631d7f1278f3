"""`reconcile_charm_labels` against a real StatefulSet, Service and ConfigMap."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import label_configmap_name, reconcile_charm_labels
from lightkube import ApiError, Client
from lightkube.models.apps_v1 import StatefulSetSpec
from lightkube.models.core_v1 import Container, PodSpec, PodTemplateSpec, ServicePort, ServiceSpec
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import ConfigMap, Service
from support.kube_server import KubeServer, count_writes

APP = "receiver"
JUJU_LABELS = {"app.kubernetes.io/name": APP}
OTHERS = {"someone.else/owner": "them"}


@pytest.fixture
def app_objects(admin: Client, namespace: str) -> None:
    """The StatefulSet and Service Juju makes for an app, each with a label set by someone else."""
    admin.create(
        StatefulSet(
            metadata=ObjectMeta(name=APP, namespace=namespace, labels=JUJU_LABELS),
            spec=StatefulSetSpec(
                selector=LabelSelector(matchLabels=JUJU_LABELS),
                serviceName=f"{APP}-endpoints",
                template=PodTemplateSpec(
                    metadata=ObjectMeta(labels={**JUJU_LABELS, **OTHERS}),
                    spec=PodSpec(containers=[Container(name="charm", image="charm:latest")]),
                ),
            ),
        )
    )
    admin.create(
        Service(
            metadata=ObjectMeta(name=APP, namespace=namespace, labels={**JUJU_LABELS, **OTHERS}),
            spec=ServiceSpec(selector=JUJU_LABELS, ports=[ServicePort(port=8080, name="http")]),
        )
    )


def pod_labels(client: Client, namespace: str) -> dict[str, str]:
    sts = client.get(StatefulSet, APP, namespace=namespace)
    assert sts.spec
    assert sts.spec.template.metadata
    return dict(sts.spec.template.metadata.labels or {})


def service_labels(client: Client, namespace: str) -> dict[str, str]:
    service = client.get(Service, APP, namespace=namespace)
    assert service.metadata
    return dict(service.metadata.labels or {})


def remembered(client: Client, namespace: str) -> dict[str, str]:
    configmap = client.get(ConfigMap, label_configmap_name(APP), namespace=namespace)
    assert configmap.data
    return json.loads(configmap.data["labels"])


@pytest.mark.usefixtures("app_objects")
def test_labels_added_changed_removed_others_untouched(
    namespace: str, admin: Client, namespace_admin: Callable[[str, str], Client]
):
    client = namespace_admin(namespace, APP)
    configmap = label_configmap_name(APP)

    # Each mesh label goes only where Istio reads it: the data-plane mode on the pod template,
    # the waypoint on the Service; a label the library does not know goes on both.
    first = {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "wp-a"}
    reconcile_charm_labels(client, APP, namespace, configmap, first)
    ambient = {"istio.io/dataplane-mode": "ambient"}
    assert pod_labels(admin, namespace) == {**JUJU_LABELS, **OTHERS, **ambient}
    assert service_labels(admin, namespace) == {
        **JUJU_LABELS,
        **OTHERS,
        "istio.io/use-waypoint": "wp-a",
    }
    assert remembered(admin, namespace) == first

    # Someone else labels the objects after us: those labels must survive our later changes.
    late = {"late.comer/x": "y"}
    admin.patch(
        StatefulSet,
        APP,
        {"spec": {"template": {"metadata": {"labels": late}}}},
        namespace=namespace,
    )
    admin.patch(Service, APP, {"metadata": {"labels": late}}, namespace=namespace)

    second = {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "wp-b", "extra": "1"}
    reconcile_charm_labels(client, APP, namespace, configmap, second)
    assert pod_labels(admin, namespace) == {
        **JUJU_LABELS,
        **OTHERS,
        **late,
        **ambient,
        "extra": "1",
    }
    assert service_labels(admin, namespace) == {
        **JUJU_LABELS,
        **OTHERS,
        **late,
        "istio.io/use-waypoint": "wp-b",
        "extra": "1",
    }
    assert remembered(admin, namespace) == second

    third = {"extra": "1"}
    reconcile_charm_labels(client, APP, namespace, configmap, third)
    assert pod_labels(admin, namespace) == {**JUJU_LABELS, **OTHERS, **late, **third}
    assert service_labels(admin, namespace) == {**JUJU_LABELS, **OTHERS, **late, **third}

    reconcile_charm_labels(client, APP, namespace, configmap, {})
    assert pod_labels(admin, namespace) == {**JUJU_LABELS, **OTHERS, **late}
    assert service_labels(admin, namespace) == {**JUJU_LABELS, **OTHERS, **late}
    assert remembered(admin, namespace) == {}


@pytest.mark.usefixtures("app_objects")
def test_label_whose_value_someone_else_changed_is_left_alone(
    namespace: str, admin: Client, namespace_admin: Callable[[str, str], Client]
):
    client = namespace_admin(namespace, APP)
    configmap = label_configmap_name(APP)
    reconcile_charm_labels(client, APP, namespace, configmap, {"shared": "ours"})
    admin.patch(Service, APP, {"metadata": {"labels": {"shared": "theirs"}}}, namespace=namespace)

    reconcile_charm_labels(client, APP, namespace, configmap, {})

    assert service_labels(admin, namespace)["shared"] == "theirs"
    assert "shared" not in pod_labels(admin, namespace)


@pytest.mark.usefixtures("app_objects")
def test_no_write_when_labels_are_already_set(
    kube: KubeServer, namespace: str, admin: Client, namespace_admin: Callable[[str, str], Client]
):
    client = namespace_admin(namespace, APP)
    configmap = label_configmap_name(APP)
    labels = {"istio.io/dataplane-mode": "ambient"}
    reconcile_charm_labels(client, APP, namespace, configmap, labels)
    versions = {
        kind: admin.get(kind, name, namespace=namespace).metadata.resourceVersion  # type: ignore[union-attr]
        for kind, name in ((StatefulSet, APP), (Service, APP), (ConfigMap, configmap))
    }

    before = kube.request_counts()
    reconcile_charm_labels(client, APP, namespace, configmap, labels)
    after = kube.request_counts()

    assert count_writes(before, after) == 0
    for kind, name in ((StatefulSet, APP), (Service, APP), (ConfigMap, configmap)):
        current = admin.get(kind, name, namespace=namespace).metadata.resourceVersion  # type: ignore[union-attr]
        assert current == versions[kind], kind.__name__


def test_missing_statefulset_is_an_api_error(
    namespace: str, namespace_admin: Callable[[str, str], Client]
):
    client = namespace_admin(namespace, APP)
    with pytest.raises(ApiError) as raised:
        reconcile_charm_labels(client, APP, namespace, label_configmap_name(APP), {"a": "b"})
    assert raised.value.status.code == 404


@pytest.mark.usefixtures("app_objects")
def test_another_namespace_is_forbidden(
    namespace: str, admin: Client, namespace_admin: Callable[[str, str], Client]
):
    client = namespace_admin(f"{namespace}-x", APP)  # an app of another model
    with pytest.raises(ApiError) as raised:
        reconcile_charm_labels(client, APP, namespace, label_configmap_name(APP), {"a": "b"})
    assert raised.value.status.code == 403
    assert "a" not in pod_labels(admin, namespace)
