"""Take over what the istio-beacon-k8s charm deployed so far left in the cluster, after a refresh.

That charm marked its objects with two labels, ``app.kubernetes.io/instance`` (its app and model
names, in one of two spellings depending on its revision) and ``kubernetes-resource-handler-scope``
(what they are for), and named them after its app and model:

- the waypoint ``Gateway`` and its ``HorizontalPodAutoscaler`` (scope ``istio-waypoint``), named
  ``<model>-<app>-waypoint`` (shortened with a hash beyond 63 characters);
- the ``AuthorizationPolicy`` objects it made for related apps (scope
  ``istio-authorization-policy``), in whichever namespace the request named, and the one that lets
  Juju reach the model operator (scope ``modeloperator-authorization-policy``, or the former in
  older revisions);
- the namespace labels of ``model-on-mesh``, owned through
  ``charms.canonical.com/istio.io.waypoint.managed-by: <model>.<app>``;
- the label ConfigMap ``juju-service-mesh-<app>-labels``, in the same format as ours.

The beacon takes them over in two steps around its own reconcile, so that access never differs
from what is requested in between: :func:`adopt_before` renames the namespace owner (nothing
changes for traffic), the reconcile then creates the beacon's own Gateway, autoscaler and
policies, and :func:`adopt_after` removes the old ones (or, for an object of the same name that
the reconcile has just taken over, the old labels). The label ConfigMap needs nothing: the
format and the name are the same.

The ``app.kubernetes.io/instance`` values are ambiguous: app ``a-b`` in model ``c`` and app ``a``
in model ``b-c`` write the same string, so another model's beacon can carry exactly the labels
this one looks for. Hence three rules, each one enforced here:

- adoption happens only with evidence of a refresh: the deployed charm's waypoint Gateway, under
  the name it derives from this model and app, in this model's namespace, with its labels and
  without this beacon's ownership label (:func:`refresh_evidence`);
- nothing outside this model's namespace is ever deleted or changed: a policy elsewhere that
  carries the labels is reported (:func:`foreign_leftovers`), never touched, since nothing can
  prove it is not another model's;
- teardown removes only what is this beacon's (by its ownership label), never the deployed
  charm's objects: those that were adopted are gone already, the others were never proven ours.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kube_names import (
    INSTANCE_LABEL,
    MAX_NAME,
    NAMESPACE_OWNER_LABEL,
    SCOPE_LABEL,
    deployed_label,
)
from kubernetes_client import status_code
from lightkube import ALL_NS, Client
from lightkube.models.authorization_v1 import ResourceAttributes, SelfSubjectAccessReviewSpec
from lightkube.operators import in_
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview
from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType
from namespace_labels import owner_value
from ownership import MANAGED_BY, is_generated_by_istio

logger = logging.getLogger(__name__)

WAYPOINT_SCOPE = "istio-waypoint"
POLICY_SCOPE = "istio-authorization-policy"
MODEL_OPERATOR_SCOPE = "modeloperator-authorization-policy"
SCOPES = (WAYPOINT_SCOPE, POLICY_SCOPE, MODEL_OPERATOR_SCOPE)


def instance_values(model_name: str, app_name: str) -> list[str]:
    """Both spellings of the deployed charm's ``app.kubernetes.io/instance`` label.

    The older one (``<app>-<model>``) was never shortened: beyond 63 characters that revision
    could not write its objects at all, so there is nothing to find under it.
    """
    values = {f"{app_name}-{model_name}", deployed_label(model_name, app_name, separator="-")}
    return sorted(value for value in values if len(value) <= MAX_NAME)


def rollback_labels(model_name: str, app_name: str, scope: str) -> dict[str, str]:
    """The deployed charm's ownership labels, for the beacon's own objects to carry.

    After a ``juju refresh`` back to the deployed charm, its reconcile lists the objects it
    manages by exactly these labels (its current ``app.kubernetes.io/instance`` spelling and a
    scope), deletes those it does not want and applies its own. Carried on the beacon's
    objects, they make that reconcile remove the beacon's policies (so none keeps granting
    once its relation is gone) and take over the Gateway and autoscaler of the same names. The
    beacon itself never selects an object by them alone (see :func:`adopt_after`).

    Args:
        model_name: the model (namespace).
        app_name: the beacon's app name.
        scope: :data:`WAYPOINT_SCOPE`, :data:`POLICY_SCOPE` or :data:`MODEL_OPERATOR_SCOPE`.
    """
    return {
        INSTANCE_LABEL: deployed_label(model_name, app_name, separator="-"),
        SCOPE_LABEL: scope,
    }


def deployed_selector(model_name: str, app_name: str) -> dict[str, Any]:
    """The label selector of every object the deployed charm owned."""
    return {
        INSTANCE_LABEL: in_(instance_values(model_name, app_name)),
        SCOPE_LABEL: in_(list(SCOPES)),
    }


def deployed_waypoint_name(model_name: str, app_name: str) -> str:
    """The name the deployed charm gave its waypoint Gateway (and the Gateway's autoscaler)."""
    return deployed_label(model_name, app_name, suffix="-waypoint", separator="-")


def refresh_evidence(
    client: Client, model_name: str, app_name: str, gateway: Any, own_labels: Mapping[str, str]
) -> str | None:
    """The deployed charm's waypoint Gateway in this model, if there is one: proof of a refresh.

    One list in the model's namespace (never another namespace), by the deployed charm's labels
    for this model and app; the Gateway counts only under the name that charm derives from them,
    and without this beacon's ownership labels (an object of ours that also carries the deployed
    labels is ours). A list, not a get by name: a Role may fix the names it lets the beacon get,
    and in a model with a long name the deployed charm's differs from the beacon's.

    Args:
        client: the Kubernetes client.
        model_name: the model (the beacon's namespace).
        app_name: the beacon's app name.
        gateway: the lightkube resource class of Gateways.
        own_labels: the labels that mark the beacon's own objects.

    Returns:
        ``Gateway <namespace>/<name>`` when found, else ``None``.

    Raises:
        lightkube.ApiError: Kubernetes refused (403) or failed: adoption waits for a later hook.
    """
    name = deployed_waypoint_name(model_name, app_name)
    selector = {
        INSTANCE_LABEL: in_(instance_values(model_name, app_name)),
        SCOPE_LABEL: WAYPOINT_SCOPE,
    }
    for item in _list(client, gateway, model_name, selector):
        labels: Mapping[str, str] = item.metadata.labels or {}
        if item.metadata.name != name:
            continue
        if own_labels and all(labels.get(key) == value for key, value in own_labels.items()):
            continue
        return f"Gateway {model_name}/{name}"
    return None


def is_deployed_charms(manifest: Mapping[str, Any], model_name: str, app_name: str) -> bool:
    """Whether an object of the model's namespace carries the deployed charm's labels.

    For the waypoint's Gateway and autoscaler only, whose name the deployed charm derived from
    this model and app: in this namespace, name and labels together are that charm's.
    """
    metadata: Mapping[str, Any] = manifest.get("metadata") or {}
    labels: Mapping[str, str] = metadata.get("labels") or {}
    return (
        metadata.get("namespace") == model_name
        and metadata.get("name") == deployed_waypoint_name(model_name, app_name)
        and labels.get(INSTANCE_LABEL) in instance_values(model_name, app_name)
        and labels.get(SCOPE_LABEL) == WAYPOINT_SCOPE
    )


@dataclass
class Adoption:
    """What :func:`adopt_after` did, as ``Kind namespace/name`` lists."""

    deleted: list[str] = field(default_factory=list[str])
    relabelled: list[str] = field(default_factory=list[str])


def adopt_before(client: Client, model_name: str, app_name: str, owner: str) -> bool:
    """Make the namespace labels the deployed charm put ours (before the reconcile reads them).

    Only the owner label changes, from the deployed charm's value to ``owner``: the mesh labels
    stay as they are until the reconcile sets them, so traffic is not affected.

    Returns:
        Whether the namespace was relabelled.
    """
    namespace = client.get(Namespace, model_name)
    labels = (namespace.metadata.labels if namespace.metadata else None) or {}
    if labels.get(NAMESPACE_OWNER_LABEL) != deployed_label(model_name, app_name):
        return False
    if labels[NAMESPACE_OWNER_LABEL] == owner:
        return False
    api: Any = client
    api.patch(
        Namespace,
        model_name,
        {"metadata": {"labels": {NAMESPACE_OWNER_LABEL: owner}}},
        patch_type=PatchType.MERGE,
    )
    logger.info("took over the namespace labels of the deployed beacon")
    return True


def adopt_after(
    client: Client,
    model_name: str,
    app_name: str,
    *,
    kinds: Iterable[Any],
    keep: set[tuple[str, str, str]],
    own_labels: Mapping[str, str],
) -> Adoption:
    """Remove what the deployed charm owned in this model, now that the beacon's are in place.

    Only in the model's namespace: see the module's docstring for why nothing elsewhere is
    touched.

    Args:
        client: the Kubernetes client.
        model_name: the model (the beacon's namespace).
        app_name: the beacon's app name.
        kinds: the resource classes to look through (Gateway, autoscaler, AuthorizationPolicy).
        keep: ``(kind, namespace, name)`` of the beacon's own objects: one the deployed charm
            also owned (same name) loses the old labels only.
        own_labels: the labels that mark the beacon's own objects: one carrying them is never
            deleted, whatever other labels it has.

    Raises:
        lightkube.ApiError: Kubernetes refused (the other objects are still handled next time).
    """
    done = Adoption()
    selector = deployed_selector(model_name, app_name)
    owner = owner_value(model_name, app_name)
    api: Any = client
    for kind in kinds:
        for item in _list(client, kind, model_name, selector):
            metadata = item.metadata
            labels = metadata.labels or {}
            if labels.get(MANAGED_BY) == owner or is_generated_by_istio(item.to_dict()):
                # The beacon's own (it carries the deployed labels for a rollback's sake), or
                # what Istio generated from a Gateway carrying them: never the deployed charm's.
                continue
            where = (kind.__name__, metadata.namespace, metadata.name)
            label = f"{where[0]} {where[1]}/{where[2]}"
            if where in keep:
                api.patch(
                    kind,
                    metadata.name,
                    {"metadata": {"labels": {INSTANCE_LABEL: None, SCOPE_LABEL: None}}},
                    namespace=metadata.namespace,
                    patch_type=PatchType.MERGE,
                )
                done.relabelled.append(label)
                continue
            if own_labels and all(labels.get(key) == value for key, value in own_labels.items()):
                continue  # ours, also carrying the deployed charm's labels: never deleted here
            try:
                api.delete(kind, metadata.name, namespace=metadata.namespace)
            except Exception as error:  # lightkube.ApiError, or an HTTP error
                if status_code(error) != 404:
                    raise
            done.deleted.append(label)
    if done.deleted or done.relabelled:
        logger.info(
            "took over the deployed beacon's objects: deleted %s; relabelled %s",
            ", ".join(done.deleted) or "none",
            ", ".join(done.relabelled) or "none",
        )
    return done


def foreign_leftovers(
    client: Client, model_name: str, app_name: str, policy_kind: Any
) -> list[str] | None:
    """AuthorizationPolicies outside this model that carry the deployed charm's labels.

    The deployed charm wrote a policy in whichever namespace a request named; those are left
    alone (another model's beacon may have written the very same labels) and reported here, for
    an operator to check and delete by hand.

    Returns:
        ``namespace/name`` of each, or ``None`` when Kubernetes refused to list across
        namespaces (the beacon has no cluster-wide read of AuthorizationPolicies).

    Raises:
        lightkube.ApiError: any other failure.
    """
    api: Any = client
    if _may_list_everywhere(client, policy_kind) is False:
        return None  # asked first: a refused request would only be noise in the audit log
    try:
        items = list(
            api.list(policy_kind, namespace=ALL_NS, labels=deployed_selector(model_name, app_name))
        )
    except Exception as error:  # lightkube.ApiError, or an HTTP error
        code = status_code(error)
        if code == 403:
            return None
        if code == 404:
            return []
        raise
    return sorted(
        f"{item.metadata.namespace}/{item.metadata.name}"
        for item in items
        if item.metadata.namespace != model_name
    )


def _may_list_everywhere(client: Client, kind: Any) -> bool | None:
    """Whether Kubernetes lets this client list ``kind`` across namespaces (``None``: unknown).

    A SelfSubjectAccessReview, which every authenticated client may create.
    """
    info = kind._api_info  # lightkube's description of the kind's API
    review = SelfSubjectAccessReview(
        spec=SelfSubjectAccessReviewSpec(
            resourceAttributes=ResourceAttributes(
                group=info.resource.group, resource=info.plural, verb="list"
            )
        )
    )
    try:
        answer = client.create(review)
    except Exception:  # lightkube.ApiError, an HTTP or a connection error: try the list itself
        return None
    return bool(answer.status and answer.status.allowed)


def leftovers_command(model_name: str, app_name: str) -> str:
    """The kubectl command that lists what :func:`foreign_leftovers` looks for."""
    values = ",".join(instance_values(model_name, app_name))
    return (
        f"kubectl get authorizationpolicies -A -l '{INSTANCE_LABEL} in ({values}),"
        f"{SCOPE_LABEL}={POLICY_SCOPE}'"
    )


def leftovers_note(found: list[str] | None, model_name: str, app_name: str) -> str | None:
    """Log what :func:`foreign_leftovers` found (``None``: could not look); the status note.

    Returns:
        The note for the status, or ``None`` when there is nothing to say.
    """
    command = leftovers_command(model_name, app_name)
    if found is None:
        logger.warning(
            "took over the deployed beacon's objects in this model; could not check other "
            "namespaces for its AuthorizationPolicies (no right to list them across "
            "namespaces): check by hand with %s",
            command,
        )
        return (
            "took over the deployed beacon in this model; other namespaces not checked "
            "(no cluster-wide read): see the log"
        )
    if not found:
        return None
    logger.warning(
        "left alone %d AuthorizationPolicies outside this model that carry the deployed "
        "beacon's labels (another model's beacon can carry the same): %s; delete those "
        "that are the deployed beacon's by hand (%s)",
        len(found),
        ", ".join(found),
        command,
    )
    return (
        f"took over the deployed beacon in this model; left alone {len(found)} "
        "policies in other namespaces: see the log"
    )


def _list(client: Client, kind: Any, model_name: str, selector: dict[str, Any]) -> list[Any]:
    """The deployed charm's objects of one kind in the model's namespace."""
    api: Any = client
    try:
        return list(api.list(kind, namespace=model_name, labels=selector))
    except Exception as error:  # lightkube.ApiError, or an HTTP error (kind not served)
        if status_code(error) == 404:
            return []  # the CRD is not installed: nothing of that kind can exist
        raise
