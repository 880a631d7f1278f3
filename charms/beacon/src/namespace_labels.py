"""Putting the whole model on the mesh: the labels of its Kubernetes namespace.

The beacon adds the mesh labels together with an ownership label, removes exactly those when it
no longer wants them, and never touches mesh labels that someone else put there.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kube_names import (
    DATAPLANE_LABEL,
    NAMESPACE_OWNER_LABEL,
    USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL,
)
from lightkube import Client
from lightkube.resources.core_v1 import Namespace
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


def reconcile_namespace_labels(
    client: Client, namespace: str, *, on_mesh: bool, waypoint: str, owner: str
) -> str | None:
    """Converge the namespace's mesh labels; one read, and a write only when something changes.

    Returns:
        Why the namespace was left alone although wanted on the mesh, or ``None``.

    Raises:
        lightkube.ApiError: when Kubernetes refuses (403: the charm is not trusted).
    """
    api: Any = client  # lightkube's patch overloads are only partly typed
    current = client.get(Namespace, namespace)
    labels = (current.metadata.labels if current.metadata else None) or {}
    plan = plan_namespace_labels(
        namespace, labels, on_mesh=on_mesh, waypoint=waypoint, owner=owner
    )
    if plan.patch:
        api.patch(
            Namespace, namespace, {"metadata": {"labels": plan.patch}}, patch_type=PatchType.MERGE
        )
    return plan.conflict
