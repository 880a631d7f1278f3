"""Which objects are the beacon's: the one place that decides, for every kind it writes.

Istio copies the waypoint Gateway's labels and annotations onto every object it generates for it
(Deployment, Service, ServiceAccount, and an autoscaler or disruption budget when an admin asks
for one), so a label on the Gateway cannot tell the beacon's objects from Istio's. What Istio
does not copy, and what the beacon relies on instead:

- Gateways and AuthorizationPolicies: Istio never generates either; the beacon's carry its
  ownership label (:data:`MANAGED_BY`) and are listed by it.
- The waypoint's autoscaler: recognised by kind and name (the waypoint's name) and by not being
  Istio's. Istio marks everything it generates with ``gateway.istio.io/managed`` and an owner
  reference to the Gateway; the beacon never sets either, and never adopts, changes or deletes
  an object that has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from kube_names import GATEWAY_GROUP, GATEWAY_NAME_LABEL, ISTIO_GENERATED_LABEL, MANAGED_BY
from namespace_labels import owner_value


def ownership_labels(model_name: str, app_name: str) -> dict[str, str]:
    """The labels that mark the objects a beacon owns (and select its Gateways and policies)."""
    return {MANAGED_BY: owner_value(model_name, app_name)}


def is_generated_by_istio(manifest: Mapping[str, Any]) -> bool:
    """Whether Istio generated this object for a Gateway (it carries Istio's marks).

    Args:
        manifest: the object as a plain dict (``to_dict()`` of a lightkube object).
    """
    metadata = cast("Mapping[str, Any]", manifest.get("metadata") or {})
    labels = cast("Mapping[str, str]", metadata.get("labels") or {})
    if ISTIO_GENERATED_LABEL in labels or GATEWAY_NAME_LABEL in labels:
        return True
    references = cast("list[Mapping[str, Any]]", metadata.get("ownerReferences") or [])
    return any(
        reference.get("kind") == "Gateway"
        and str(reference.get("apiVersion", "")).startswith(f"{GATEWAY_GROUP}/")
        for reference in references
    )


def owns_waypoint_autoscaler(manifest: Mapping[str, Any], waypoint: str) -> bool:
    """Whether an autoscaler is the one the beacon writes for its waypoint ``waypoint``.

    By name and kind, never by a label: an autoscaler Istio generated from the Gateway carries the
    Gateway's labels (the beacon's ownership label included) and the same name.

    Args:
        manifest: a ``HorizontalPodAutoscaler`` as a plain dict.
        waypoint: the waypoint's name (the autoscaler's and its Deployment's).
    """
    metadata = cast("Mapping[str, Any]", manifest.get("metadata") or {})
    if manifest.get("kind", "HorizontalPodAutoscaler") != "HorizontalPodAutoscaler":
        return False
    return metadata.get("name") == waypoint and not is_generated_by_istio(manifest)
