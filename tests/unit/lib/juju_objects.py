"""The Kubernetes objects Juju makes for an app, seeded straight into the fake API server."""

from __future__ import annotations

from support.fake_kube import FakeKubeServer
from support.juju_seed import JUJU_FIELD_MANAGER, service_manifest, statefulset_manifest

KUBE_MODEL = "mesh-model"
"""A model name that is also a valid namespace name (the fake validates names)."""


def seed_app(
    kube: FakeKubeServer,
    app: str = "consumer-charm",
    namespace: str = KUBE_MODEL,
    extra_labels: dict[str, str] | None = None,
) -> None:
    """Create the StatefulSet and Service that Juju makes for ``app`` (see ``juju_seed``).

    ``extra_labels`` stand for labels someone else put on the pod template and the Service.
    """
    extra = extra_labels or {}
    service = service_manifest(app, namespace)
    service["metadata"]["labels"] = {**service["metadata"]["labels"], **extra}
    kube.put(statefulset_manifest(app, namespace, **extra), field_manager=JUJU_FIELD_MANAGER)
    kube.put(service, field_manager=JUJU_FIELD_MANAGER)


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
