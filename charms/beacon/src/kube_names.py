"""Every Kubernetes name the beacon reads or writes: labels, annotations, API groups, resources.

One home, so that the reconcile (which writes these names), the access engine (which reads them
back to tell the beacon's objects apart) and the code facing the library agree by construction.

Every hook imports this module (``charm.py`` needs the waypoint's name and the labels it
publishes), so it imports nothing but the standard library at import time: lightkube only when a
caller asks for a resource type.
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightkube.generic_resource import GenericNamespacedResource

# Juju's labels on an app's pods and Services.
#: The app a pod or Service belongs to.
APP_NAME_LABEL = "app.kubernetes.io/name"
#: The instance label of the resource handler the deployed beacon used.
INSTANCE_LABEL = "app.kubernetes.io/instance"

# Istio's labels.
#: Puts pods (or every pod of a namespace) in the ambient data plane.
DATAPLANE_LABEL = "istio.io/dataplane-mode"
#: Binds a Service (or every Service of a namespace) to a waypoint.
USE_WAYPOINT_LABEL = "istio.io/use-waypoint"
#: The namespace of the waypoint named by :data:`USE_WAYPOINT_LABEL`.
USE_WAYPOINT_NAMESPACE_LABEL = "istio.io/use-waypoint-namespace"
#: On a Gateway: what traffic the waypoint handles.
WAYPOINT_FOR_LABEL = "istio.io/waypoint-for"
#: Istio's gateway controller puts it on every object it generates (and only on those).
ISTIO_GENERATED_LABEL = "gateway.istio.io/managed"
#: Istio puts it on what it generates for a Gateway, naming that Gateway.
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
#: Istio's annotation on an AuthorizationPolicy: evaluate it, count and log its verdicts, enforce
#: nothing (read with Go's ``strconv.ParseBool``).
DRY_RUN_ANNOTATION = "istio.io/dry-run"

# The beacon's labels and annotations.
#: Marks every Gateway, autoscaler and AuthorizationPolicy the beacon owns: ``<model>.<app>``.
#: Istio copies it from the Gateway onto what it generates: never recognise an object by it alone.
MANAGED_BY = "charms.canonical.com/service-mesh.managed-by"
#: Label and annotation: the app whose request an AuthorizationPolicy implements.
REQUESTED_BY = "charms.canonical.com/service-mesh.requested-by"
#: Annotation: the id of the relation the request arrived on.
RELATION_ID = "charms.canonical.com/service-mesh.relation-id"
#: Annotation: the app whose pods a waypoint-access policy opens to the waypoint.
WAYPOINT_ACCESS_FOR = "charms.canonical.com/service-mesh.waypoint-access-for"
#: Says which beacon (``<model>.<app>``) put the mesh labels on a namespace.
NAMESPACE_OWNER_LABEL = "charms.canonical.com/istio.io.waypoint.managed-by"
#: The library's PolicyResourceManager (and the deployed beacon) select their objects by it.
SCOPE_LABEL = "kubernetes-resource-handler-scope"

# The Gateway API.
GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
GATEWAY_PLURAL = "gateways"
GATEWAY_CRD = f"{GATEWAY_PLURAL}.{GATEWAY_GROUP}"

# Istio's AuthorizationPolicy.
AUTHZ_GROUP = "security.istio.io"
AUTHZ_VERSION = "v1"
AUTHZ_API_VERSION = f"{AUTHZ_GROUP}/{AUTHZ_VERSION}"
AUTHZ_KIND = "AuthorizationPolicy"
AUTHZ_PLURAL = "authorizationpolicies"
AUTHZ_CRD = f"{AUTHZ_PLURAL}.{AUTHZ_GROUP}"


#: The longest name or label value Kubernetes takes for what these names end up in.
MAX_NAME = 63


@functools.cache
def authorization_policy_resource() -> type[GenericNamespacedResource]:
    """Lightkube's generic resource for Istio's AuthorizationPolicy (made once)."""
    from lightkube.generic_resource import create_namespaced_resource  # noqa: PLC0415 (see top)

    return create_namespaced_resource(AUTHZ_GROUP, AUTHZ_VERSION, AUTHZ_KIND, AUTHZ_PLURAL)


def waypoint_name(model_name: str, app_name: str) -> str:
    """``<model>-<app>-waypoint``, shortened with a hash suffix when longer than 63 characters."""
    name = f"{model_name}-{app_name}-waypoint"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - len(digest) - 1].rstrip('-')}-{digest}"


def waypoint_principal(namespace: str, waypoint: str) -> str:
    """The waypoint's mesh identity.

    Istio runs a waypoint's Deployment under a ServiceAccount named like its Gateway (the beacon
    sets no ``gateway.istio.io/service-account`` annotation to change that).
    """
    return f"cluster.local/ns/{namespace}/sa/{waypoint}"


def consumer_labels(waypoint: str, namespace: str, model_on_mesh: bool) -> dict[str, str]:
    """The labels published to related apps: what puts a pod and Service behind the waypoint.

    This is wire format: deployed consumers put every published label on both their pod template
    and their Service, and need all three. Istio reads ``istio.io/dataplane-mode`` on pods and the
    waypoint labels on Services; this library's consumers put each only where it is read.
    Empty when the whole namespace is labelled instead (consumers then remove theirs).
    """
    if model_on_mesh:
        return {}
    return {
        DATAPLANE_LABEL: "ambient",
        USE_WAYPOINT_LABEL: waypoint,
        USE_WAYPOINT_NAMESPACE_LABEL: namespace,
    }


def deployed_label(
    model_name: str, app_name: str, *, prefix: str = "", suffix: str = "", separator: str = "."
) -> str:
    """A name the deployed charm derived from its model and app names.

    ``<prefix><model><separator><app><suffix>``; beyond 63 characters the model and app names
    are cut in proportion to their lengths and a 6-character SHA-1 digest of
    ``<model><separator><app>`` is added before the suffix.
    """
    text = f"{prefix}{model_name}{separator}{app_name}{suffix}"
    if len(text) <= MAX_NAME:
        return text
    digest = hashlib.sha1(f"{model_name}{separator}{app_name}".encode()).hexdigest()[:6]
    room = MAX_NAME - len(prefix) - len(suffix) - len(digest) - 2
    model_room = max(1, int(room * len(model_name) / (len(model_name) + len(app_name))))
    app_room = max(1, room - model_room)
    return (
        f"{prefix}{model_name[:model_room]}{separator}{app_name[:app_room]}{separator}"
        f"{digest}{suffix}"
    )
