"""Every Kubernetes name the beacon reads or writes: labels, annotations, API groups, resources.

One home, so that the reconcile (which writes these names), the access engine (which reads them
back to tell the beacon's objects apart) and the code facing the library agree by construction.
"""

from __future__ import annotations

import functools

from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource

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


@functools.cache
def authorization_policy_resource() -> type[GenericNamespacedResource]:
    """Lightkube's generic resource for Istio's AuthorizationPolicy (made once)."""
    return create_namespaced_resource(AUTHZ_GROUP, AUTHZ_VERSION, AUTHZ_KIND, AUTHZ_PLURAL)
