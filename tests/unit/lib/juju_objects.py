"""The Kubernetes objects Juju makes for an app, seeded into the fake API server."""

from __future__ import annotations

from typing import Any

from fake_kube import FakeKubeServer

KUBE_MODEL = "mesh-model"
"""A model name that is also a valid namespace name (the fake validates names)."""


def seed_app(
    kube: FakeKubeServer,
    app: str = "consumer-charm",
    namespace: str = KUBE_MODEL,
    extra_labels: dict[str, str] | None = None,
) -> None:
    """Create the StatefulSet and Service that Juju makes for ``app``.

    ``extra_labels`` stand for labels someone else put on the pod template and the Service.
    """
    own = {"app.kubernetes.io/name": app}
    labels = {**own, **(extra_labels or {})}
    statefulset: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": app, "namespace": namespace, "labels": own},
        "spec": {
            "selector": {"matchLabels": own},
            "serviceName": f"{app}-endpoints",
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "charm", "image": "charm:latest"}]},
            },
        },
    }
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app, "namespace": namespace, "labels": labels},
        "spec": {"selector": own, "ports": [{"name": "http", "port": 8080}]},
    }
    kube.put(statefulset, field_manager="juju")
    kube.put(service, field_manager="juju")


def pod_template_labels(
    kube: FakeKubeServer, app: str = "consumer-charm", namespace: str = KUBE_MODEL
) -> dict[str, str]:
    """The labels on the pod template of the app's StatefulSet."""
    statefulset = kube.get("statefulsets", namespace, app)
    assert statefulset is not None, f"no StatefulSet {namespace}/{app}"
    return statefulset["spec"]["template"]["metadata"].get("labels", {})


def service_labels(
    kube: FakeKubeServer, app: str = "consumer-charm", namespace: str = KUBE_MODEL
) -> dict[str, str]:
    """The labels on the app's Service."""
    service = kube.get("services", namespace, app)
    assert service is not None, f"no Service {namespace}/{app}"
    return service["metadata"].get("labels", {})
