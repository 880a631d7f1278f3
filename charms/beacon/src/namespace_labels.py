"""Putting the whole model on the mesh: the labels of its Kubernetes namespace.

The beacon adds the mesh labels together with an ownership label, removes exactly those when it
no longer wants them, and never touches mesh labels that someone else put there.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kube_names import (
    DATAPLANE_LABEL,
    NAMESPACE_OWNER_LABEL,
    USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL,
)
from lightkube import Client
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import Namespace, Pod, Service
from lightkube.types import PatchType

#: Labels that mean "this namespace is on a mesh" when someone else set them.
MESH_LABELS = (DATAPLANE_LABEL, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL)
_MAX_LABEL_VALUE = 63


def owner_value(model_name: str, app_name: str) -> str:
    """``<model>.<app>`` as a valid label value (hash-shortened beyond 63 characters)."""
    text = f"{model_name}.{app_name}"
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    if len(value) <= _MAX_LABEL_VALUE:
        return value
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{value[: _MAX_LABEL_VALUE - len(digest) - 1].rstrip('-._')}-{digest}"


@dataclass(frozen=True)
class NamespaceLabelPlan:
    """What to do to a namespace's labels.

    Attributes:
        patch: a JSON merge patch of the labels (``None`` removes one); empty: nothing to write.
        conflict: why the beacon leaves the namespace alone although it wants it on the mesh.
    """

    patch: dict[str, str | None] = field(default_factory=dict)
    conflict: str | None = None


def plan_namespace_labels(
    namespace: str,
    current: Mapping[str, str],
    *,
    on_mesh: bool,
    waypoint: str,
    owner: str,
) -> NamespaceLabelPlan:
    """Decide the label changes that put a namespace on (or take it off) the mesh.

    Args:
        namespace: the namespace's name, for messages.
        current: its labels now.
        on_mesh: whether the beacon wants the namespace on the mesh.
        waypoint: the waypoint the namespace's Services should use.
        owner: this beacon's ownership label value (see :func:`owner_value`).
    """
    wanted = {
        DATAPLANE_LABEL: "ambient",
        USE_WAYPOINT_LABEL: waypoint,
        NAMESPACE_OWNER_LABEL: owner,
    }
    current_owner = current.get(NAMESPACE_OWNER_LABEL)
    ours = current_owner == owner
    if on_mesh:
        if current_owner is not None and not ours:
            return NamespaceLabelPlan(
                conflict=f"namespace {namespace} is put on the mesh by {current_owner}"
            )
        if not ours:
            foreign = sorted(key for key in MESH_LABELS if key in current)
            if foreign:
                return NamespaceLabelPlan(
                    conflict=f"namespace {namespace} already has {', '.join(foreign)} set by "
                    "someone else"
                )
        return NamespaceLabelPlan(
            patch={key: value for key, value in wanted.items() if current.get(key) != value}
        )
    if not ours:
        return NamespaceLabelPlan()
    # Remove what we set; a mesh label whose value someone changed since is theirs now.
    return NamespaceLabelPlan(
        patch={
            key: None
            for key, value in wanted.items()
            if key in current and (key == NAMESPACE_OWNER_LABEL or current[key] == value)
        }
    )


@dataclass(frozen=True)
class NamespaceOutcome:
    """What :func:`reconcile_namespace_labels` did.

    Attributes:
        conflict: why the namespace was left alone although wanted on the mesh.
        kept_for: taking the namespace off the mesh waits for these apps: its labels stay.
    """

    conflict: str | None = None
    kept_for: Sequence[str] = ()


def reconcile_namespace_labels(
    client: Client,
    namespace: str,
    *,
    on_mesh: bool,
    waypoint: str,
    owner: str,
    not_on_mesh_alone: Callable[[], Sequence[str]] | None = None,
) -> NamespaceOutcome:
    """Converge the namespace's mesh labels; one read, and a write only when something changes.

    Args:
        client: the Kubernetes client.
        namespace: the namespace (the model).
        on_mesh: whether the beacon wants the namespace on the mesh.
        waypoint: the waypoint the namespace's Services should use.
        owner: this beacon's ownership label value (see :func:`owner_value`).
        not_on_mesh_alone: when taking the namespace off the mesh, the apps that are not on it
            by their own labels yet: while there are any, the namespace's labels stay (without
            them those apps' pods would leave the mesh, and Istio would enforce none of their
            policies). Called only when there is something to remove.

    Raises:
        lightkube.ApiError: when Kubernetes refuses (403: the charm is not trusted).
    """
    api: Any = client  # lightkube's patch overloads are only partly typed
    current = client.get(Namespace, namespace)
    labels = (current.metadata.labels if current.metadata else None) or {}
    plan = plan_namespace_labels(
        namespace, labels, on_mesh=on_mesh, waypoint=waypoint, owner=owner
    )
    if plan.patch and not on_mesh and not_on_mesh_alone is not None:
        waiting = list(not_on_mesh_alone())
        if waiting:
            return NamespaceOutcome(kept_for=waiting)
    if plan.patch:
        api.patch(
            Namespace, namespace, {"metadata": {"labels": plan.patch}}, patch_type=PatchType.MERGE
        )
    return NamespaceOutcome(conflict=plan.conflict)


def apps_not_on_mesh_alone(
    apps: Sequence[str],
    statefulsets: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    services: Sequence[Mapping[str, Any]],
    waypoint: str,
) -> list[str]:
    """The apps that would leave the mesh with the namespace's labels: not labelled themselves.

    An app is on the mesh by itself when its StatefulSet's pod template and every pod of it
    carry ``istio.io/dataplane-mode: ambient`` and its Service (if any) uses ``waypoint``: what
    the labels the beacon publishes make a consumer put (its pods restart with them). An app
    without a StatefulSet has nothing the beacon could wait for.

    Args:
        apps: the related apps.
        statefulsets: the namespace's StatefulSets (plain dicts).
        pods: its pods.
        services: its Services.
        waypoint: the beacon's waypoint.
    """
    name_label = "app.kubernetes.io/name"

    def labels(item: Mapping[str, Any], *path: str) -> Mapping[str, str]:
        node: Any = item
        for key in path:
            node = (node or {}).get(key)
        return node or {}

    templates = {
        s["metadata"]["name"]: labels(s, "spec", "template", "metadata", "labels")
        for s in statefulsets
    }
    by_name = {s["metadata"]["name"]: labels(s, "metadata", "labels") for s in services}
    waiting: list[str] = []
    for app in apps:
        if app not in templates:
            continue
        ambient = [templates[app]] + [
            labels(pod, "metadata", "labels")
            for pod in pods
            if labels(pod, "metadata", "labels").get(name_label) == app
        ]
        service = by_name.get(app)
        if any(item.get(DATAPLANE_LABEL) != "ambient" for item in ambient) or (
            service is not None and service.get(USE_WAYPOINT_LABEL) != waypoint
        ):
            waiting.append(app)
    return waiting


def apps_leaving_with_the_namespace(
    client: Client, namespace: str, apps: Sequence[str], waypoint: str
) -> list[str]:
    """:func:`apps_not_on_mesh_alone`, from the namespace's StatefulSets, pods and Services."""
    api: Any = client  # lightkube's list overloads are only partly typed
    listed = [
        [item.to_dict() for item in api.list(kind, namespace=namespace)]
        for kind in (StatefulSet, Pod, Service)
    ]
    return apps_not_on_mesh_alone(sorted(set(apps)), *listed, waypoint=waypoint)
