"""Seed what Juju creates for a Kubernetes app, through any lightkube client.

One version for both test tiers: the unit tests pass a client of the fake API server
(``FakeKubeServer.client()``), the real-server tier an admin client of ``KubeServer``. Objects are
created the way Juju creates them (field manager ``juju``), never applied, so the code under test
sees the same field ownership as in a model.
"""

from __future__ import annotations

from typing import Any

from lightkube import ApiError, Client, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

JUJU_FIELD_MANAGER = "juju"


def app_labels(app: str) -> dict[str, str]:
    """The labels Juju puts on an app's pods and Services (and selects them by)."""
    return {"app.kubernetes.io/name": app}


def statefulset_manifest(app: str, namespace: str, **template_labels: str) -> dict[str, Any]:
    """The StatefulSet Juju makes for a charm ``app`` (its charm container only).

    ``template_labels`` stand for labels someone else put on the pod template.
    """
    own = app_labels(app)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": app, "namespace": namespace, "labels": own},
        "spec": {
            "serviceName": f"{app}-endpoints",
            "selector": {"matchLabels": own},
            "template": {
                "metadata": {"labels": {**own, **template_labels}},
                "spec": {"containers": [{"name": "charm", "image": "charm-base"}]},
            },
        },
    }


def service_manifest(
    name: str, namespace: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Service; by default labelled as Juju labels an app's Service (named after the app)."""
    selector = app_labels(name) if labels is None else dict(labels)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": selector},
        "spec": {"selector": selector, "ports": [{"name": "placeholder", "port": 65535}]},
    }


def seed_namespace(client: Client, namespace: str) -> None:
    """Create the model's namespace unless it exists."""
    try:
        client.create(Namespace(metadata=ObjectMeta(name=namespace)))
    except ApiError as error:
        if error.status.code != 409:
            raise


def seed_service(
    client: Client, name: str, namespace: str, labels: dict[str, str] | None = None
) -> None:
    """Create a Service (see :func:`service_manifest`)."""
    client.create(
        codecs.from_dict(service_manifest(name, namespace, labels)),
        field_manager=JUJU_FIELD_MANAGER,
    )


def seed_app(client: Client, app: str, namespace: str) -> None:
    """Create the namespace (if needed), the StatefulSet and the Service Juju makes for ``app``."""
    seed_namespace(client, namespace)
    client.create(
        codecs.from_dict(statefulset_manifest(app, namespace)), field_manager=JUJU_FIELD_MANAGER
    )
    seed_service(client, app, namespace)


#: The labels Juju puts on the model operator's pods (and selects them by), by label scheme:
#: models created by older Juju use the legacy one.
MODEL_OPERATOR_LABELS = {
    "legacy": {"juju-modeloperator": "modeloperator"},
    "current": {"operator.juju.is/name": "modeloperator", "operator.juju.is/target": "model"},
}


def seed_model_operator(client: Client, namespace: str, scheme: str = "current") -> dict[str, str]:
    """Create the ``modeloperator`` Service Juju makes in a model; returns its pod selector.

    Args:
        client: any lightkube client.
        namespace: the model's namespace (created if needed).
        scheme: ``"current"`` or ``"legacy"``, the label scheme of the Juju that made the model.
    """
    selector = MODEL_OPERATOR_LABELS[scheme]
    seed_namespace(client, namespace)
    client.create(
        codecs.from_dict(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "modeloperator", "namespace": namespace, "labels": selector},
                "spec": {
                    "selector": selector,
                    "type": "ClusterIP",
                    "ports": [{"name": "api", "port": 17071, "protocol": "TCP"}],
                },
            }
        ),
        field_manager=JUJU_FIELD_MANAGER,
    )
    return dict(selector)
