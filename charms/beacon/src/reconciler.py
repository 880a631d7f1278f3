"""One reconcile path: converge everything the beacon manages, from scratch, and note problems.

Nothing here sets a status: problems are recorded in :class:`Findings`, which the charm turns into
statuses in its collect-status handler.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ops
from adoption import (
    MODEL_OPERATOR_SCOPE,
    POLICY_SCOPE,
    WAYPOINT_SCOPE,
    adopt_after,
    adopt_before,
    foreign_leftovers,
    is_deployed_charms,
    leftovers_note,
    refresh_evidence,
    rollback_labels,
)
from beacon_config import BeaconConfig
from charms.istio_beacon_k8s.v0.service_mesh import (
    MeshType,
    MissingCRDError,
    PolicyResourceManager,
    ServiceMeshProvider,
    label_configmap_name,
    reconcile_charm_labels,
)
from display import display_text
from findings import Findings
from kube_names import authorization_policy_resource
from kubernetes_client import error_message, make_client, refuses_the_object, status_code
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap, Service
from metrics import metrics_access_manifests, telemetry_label
from model_operator import ModelOperatorAccess, model_operator_policy, reconcile_model_operator
from namespace_labels import (
    apps_leaving_with_the_namespace,
    owner_value,
    reconcile_namespace_labels,
)
from ownership import ownership_labels
from policies import (
    Refusal,
    WaypointBinding,
    as_written,
    build_policy_manifests,
    check_requests,
    is_dry_run,
    kept_by_relation,
    last_accepted,
    log_refusals,
    needs_services,
    proven_owners,
    requested_by,
    waypoint_allow_policy,
    with_mode,
)
from policy_status import istio_conditions
from steady_skip import SteadyRecord, inputs_digest, listed_digest
from waypoint import (
    NotOwnedError,
    consumer_labels,
    delete_waypoint,
    gateway_resource,
    reconcile_waypoint,
    waypoint_name,
    waypoint_principal,
)

logger = logging.getLogger(__name__)

__all__ = ["BeaconReconciler", "Findings"]

_T = TypeVar("_T")

#: Istio's root namespace as istiod has it by default (``meshConfig.rootNamespace``): policies
#: there apply to every namespace of the mesh.
ISTIO_ROOT_NAMESPACE = "istio-system"


@dataclass(frozen=True)
class Done(Generic[_T]):
    """A reconcile step that converged, and what it returned (which may be ``None``)."""

    value: _T


@dataclass(frozen=True)
class Failed:
    """A reconcile step that failed; why is recorded in the :class:`Findings`."""

    what: str


class BeaconReconciler:
    """Converge the waypoint, the labels and the policies of one beacon, or remove them all.

    Args:
        charm: the beacon charm (its app, model and, for the policy manager, itself).
        client: the Kubernetes client; by default one made by :func:`make_client`.
    """

    def __init__(self, charm: ops.CharmBase, client: Client | None = None):
        self._charm = charm
        self._app = charm.app.name
        self._namespace = charm.model.name
        self._owns_client = client is None
        self._client = client or make_client(self._app, self._namespace)
        self._labels = ownership_labels(self._namespace, self._app)
        self.waypoint = waypoint_name(self._namespace, self._app)
        self.findings = Findings()
        self._steady_before = ""
        #: Whether this reconcile took over what the deployed beacon had left (``adopt=True``).
        self.adopted = False
        #: Whether a refresh from the deployed beacon is proven and its objects are still to be
        #: taken over (``None``: not known this time). The caller remembers it for later hooks:
        #: the proof, the deployed waypoint Gateway, is the beacon's own after the first one.
        self.adoption_pending: bool | None = None

    def close(self) -> None:
        """Close the client if this reconciler made it: a hook leaves no connection open."""
        if self._owns_client:
            self._client.close()

    def reconcile(
        self,
        config: BeaconConfig,
        provider: ServiceMeshProvider,
        planned_units: int,
        refusals_logged: Mapping[str, str] | None = None,
        *,
        adopt: bool = False,
        refresh_proven: bool = False,
        steady: str = "",
    ) -> Findings:
        """Converge everything to the config, the relations and the planned unit count.

        With 0 planned units the app is going away: everything is removed instead.

        Args:
            config: the validated config.
            provider: the ``service-mesh`` provider, to publish the labels and read requests.
            planned_units: how many units the beacon will have (the waypoint's replicas).
            refusals_logged: what earlier hooks logged about refusals (from
                ``Findings.refusals_logged``), so that only changes are logged.
            adopt: also take over what the deployed istio-beacon-k8s charm left (after a
                refresh from it): see ``adoption``.
            refresh_proven: an earlier hook found the refresh's evidence (``adoption_pending``).
            steady: ``Findings.steady`` of the previous reconcile.
        """
        self._steady_before = steady
        if planned_units == 0:
            return self.teardown()
        if self._namespace == ISTIO_ROOT_NAMESPACE:
            # A selector policy there is mesh-wide: every related app's policy would apply to
            # every namespace's pods with the same labels. Nothing is written.
            self.findings.root_namespace = (
                f"this model is Istio's root namespace ({ISTIO_ROOT_NAMESPACE}), where a policy "
                "applies to the whole mesh: deploy the beacon in the model of the apps it serves"
            )
            return self.findings
        self.findings.refusals_logged = dict(refusals_logged or {})
        evidence = self._look_for_refresh(refresh_proven) if adopt else None
        # The namespace first: consumers are told they need no labels of their own only when the
        # namespace is known to carry this beacon's. Otherwise (a conflict, or no answer) they
        # keep theirs: fail closed.
        labelled = self._attempt(
            "label the namespace",
            lambda: reconcile_namespace_labels(
                self._client,
                self._namespace,
                on_mesh=config.model_on_mesh,
                waypoint=self.waypoint,
                owner=owner_value(self._namespace, self._app),
                not_on_mesh_alone=lambda: apps_leaving_with_the_namespace(
                    self._client,
                    self._namespace,
                    [r.app_name for r in provider.relation_requests() if r.app_name],
                    self.waypoint,
                ),
            ),
        )
        outcome = labelled.value if isinstance(labelled, Done) else None
        if outcome is not None:
            self.findings.namespace_conflict = outcome.conflict
            self.findings.leaving_mesh = list(outcome.kept_for)
        # Whether the namespace now binds its Services to the waypoint through this beacon:
        # also while it stays on the mesh for apps not on it by themselves yet (model-on-mesh
        # switched off), which are then told to put their own labels.
        leaving = bool(self.findings.leaving_mesh)
        namespace_bound = leaving or (
            config.model_on_mesh and outcome is not None and outcome.conflict is None
        )
        labels = consumer_labels(self.waypoint, self._namespace, namespace_bound and not leaving)
        provider.update_relations(labels=labels)
        self._attempt(
            "label the beacon's pods and Service",
            lambda: reconcile_charm_labels(
                self._client, self._app, self._namespace, label_configmap_name(self._app), labels
            ),
        )
        waypoint = self._attempt(
            "run the waypoint",
            lambda: reconcile_waypoint(
                self._client,
                self.waypoint,
                planned_units,
                self._labels,
                telemetry_label(self._namespace, self._app),
                rollback_labels(self._namespace, self._app, WAYPOINT_SCOPE),
                take_over=lambda found: is_deployed_charms(found, self._namespace, self._app),
            ),
        )
        self.findings.waypoint = waypoint.value if isinstance(waypoint, Done) else None
        model_operator = self._attempt(
            "keep Juju's model operator reachable",
            lambda: reconcile_model_operator(
                self._client,
                self._namespace,
                on_mesh=namespace_bound,
                owner=owner_value(self._namespace, self._app),
            ),
        )
        operator_access = (
            model_operator.value if isinstance(model_operator, Done) else ModelOperatorAccess()
        )
        self.findings.model_operator = operator_access.problem
        self._attempt(
            "apply the AuthorizationPolicies",
            lambda: self._reconcile_policies(config, provider, namespace_bound, operator_access),
        )
        if evidence is not None:
            self._finish_adoption(evidence)
        return self.findings

    def _look_for_refresh(self, refresh_proven: bool) -> str | None:
        """The evidence of a refresh from the deployed charm (see adoption.py), or ``None``.

        Only a refresh from the deployed charm leaves its waypoint Gateway in this model: without
        it (and without an earlier hook's, ``refresh_proven``) there is nothing to take over, and
        nothing is ever looked for again.
        """
        try:
            evidence = refresh_evidence(
                self._client, self._namespace, self._app, gateway_resource(), self._labels
            )
        except Exception as error:  # lightkube.ApiError, an HTTP or a connection error
            # The steps after meet the same refusal or outage and report it; adoption waits
            # for a later hook.
            logger.warning("cannot look for the deployed beacon's waypoint: %s", error)
            return None
        if evidence is not None:
            logger.info("refreshed from the deployed beacon (found its %s)", evidence)
        elif refresh_proven:
            evidence = "waypoint Gateway, found by an earlier hook"
        self.adopted = evidence is None
        self.adoption_pending = evidence is not None
        if evidence is not None:
            self._adopt_namespace_labels()
        return evidence

    def _finish_adoption(self, evidence: str) -> None:
        """Remove the deployed beacon's objects, once ours are all in place: never less access.

        Not while a request is refused (by the beacon or by Kubernetes): its app may have no
        policy of ours yet, and the deployed one is then all that keeps strangers out.
        """
        findings = self.findings
        if findings.refusals or findings.held or findings.unprotected:
            logger.warning(
                "keeping the deployed beacon's objects until every request is accepted "
                "(%d refused; evidence: its %s)",
                len(findings.refusals),
                evidence,
            )
            return
        if findings.forbidden or findings.api_errors or findings.unreachable:
            return
        adopted = self._attempt("remove the deployed beacon's objects", self._adopt)
        self.adopted = isinstance(adopted, Done)
        self.adoption_pending = not self.adopted
        if self.adopted:
            self._report_foreign_leftovers()

    def _adopt_namespace_labels(self) -> None:
        owner = owner_value(self._namespace, self._app)
        try:
            adopt_before(self._client, self._namespace, self._app, owner)
        except Exception as error:  # lightkube.ApiError, an HTTP or a connection error
            # The namespace step that follows meets the same refusal or outage and reports it;
            # adoption is tried again on the next hook.
            logger.warning("cannot look for the deployed beacon's namespace labels: %s", error)

    def _adopt(self) -> None:
        own = {
            ("Gateway", self._namespace, self.waypoint),
            ("HorizontalPodAutoscaler", self._namespace, self.waypoint),
        }
        adopt_after(
            self._client,
            self._namespace,
            self._app,
            kinds=(gateway_resource(), HorizontalPodAutoscaler, authorization_policy_resource()),
            keep=own,
            own_labels=self._labels,
        )

    def _report_foreign_leftovers(self) -> None:
        """Say what of the deployed beacon may be left in other namespaces: never touched."""
        try:
            found = foreign_leftovers(
                self._client, self._namespace, self._app, authorization_policy_resource()
            )
        except Exception as error:  # lightkube.ApiError, an HTTP or a connection error
            found = None
            logger.warning("cannot look for the deployed beacon's policies elsewhere: %s", error)
        self.findings.adoption_note = leftovers_note(found, self._namespace, self._app)

    def teardown(self) -> Findings:
        """Delete all the beacon created: waypoint, policies, namespace labels, ConfigMap.

        Only what carries the beacon's own ownership marks, in its own namespace.
        """
        self._attempt(
            "remove the waypoint",
            lambda: delete_waypoint(self._client, self.waypoint, self._labels),
        )
        self._attempt("remove the AuthorizationPolicies", self._delete_policies)
        self._attempt(
            "remove the namespace labels",
            lambda: reconcile_namespace_labels(
                self._client,
                self._namespace,
                on_mesh=False,
                waypoint=self.waypoint,
                owner=owner_value(self._namespace, self._app),
            ),
        )
        self._attempt(
            "remove the model operator's Service label",
            lambda: reconcile_model_operator(
                self._client,
                self._namespace,
                on_mesh=False,
                owner=owner_value(self._namespace, self._app),
            ),
        )
        self._attempt("remove the labels ConfigMap", self._delete_label_configmap)
        # Nothing of the deployed charm: what was adopted is gone already, and what was not was
        # never proven ours (adoption.py).
        return self.findings

    def _policy_manager(self) -> PolicyResourceManager:
        # Every policy of the beacon is in its namespace: no cluster-wide list (and no 403).
        return PolicyResourceManager(
            self._charm, self._client, labels=self._labels, logger=logger, cluster_wide=False
        )

    def _reconcile_policies(
        self,
        config: BeaconConfig,
        provider: ServiceMeshProvider,
        namespace_bound: bool,
        model_operator: ModelOperatorAccess,
    ) -> None:
        manager = self._policy_manager()
        if not config.manage_authorization_policies:
            manager.delete()
            return
        if self._unchanged(config, provider, namespace_bound, model_operator, manager):
            return
        requests = provider.relation_requests()
        # The policies as they are, listed once whether the Services' owners or the refused
        # relations' last accepted policies need them (the manager's reconcile lists its own).
        deployed = functools.cache(manager.get_deployed_resources)
        services: dict[str, dict[str, str]] | None = {}
        services_needed = needs_services(requests)
        if services_needed:
            listed = self._attempt(
                "list the Services",
                lambda: self._services(deployed()),
            )
            if isinstance(listed, Failed):
                # Requests naming a Service cannot be checked: change nothing this hook rather
                # than delete their policies (recorded above; the next hook tries again).
                return
            services = listed.value
        accepted, refused = check_requests(
            requests,
            self._namespace,
            services,
            WaypointBinding(self.waypoint, namespace_bound=namespace_bound),
        )
        manifests, unbuildable = build_policy_manifests(accepted)
        manifests = self._hold_last_accepted(deployed, manifests, refused + unbuildable)
        # authorization-mode, on every app policy: those just built and those kept from the
        # cluster for a refused relation alike.
        manifests = with_mode(manifests, dry_run=config.dry_run)
        # Whatever auto-allow-waypoint-policy says, the waypoint reaches every related app's pods.
        principal = waypoint_principal(self._namespace, self.waypoint)
        related = sorted({request.app_name for request in requests if request.app_name})
        manifests.extend(waypoint_allow_policy(app, self._namespace, principal) for app in related)
        # Prometheus, related over metrics-endpoint, may reach the metrics proxy on our pods.
        manifests.extend(
            metrics_access_manifests(
                self._charm.model.relations, self._app, self._namespace, self._charm.model.uuid
            )
        )
        scope = rollback_labels(self._namespace, self._app, POLICY_SCOPE)
        manifests = [as_written(manifest, scope) for manifest in manifests]
        if namespace_bound and model_operator.selector is not None:
            manifests.append(
                as_written(
                    model_operator_policy(self._namespace, model_operator.selector),
                    rollback_labels(self._namespace, self._app, MODEL_OPERATOR_SCOPE),
                )
            )
        rejected: list[Refusal] = []
        wanted = {f"{m['metadata']['namespace']}/{m['metadata']['name']}": m for m in manifests}
        requester = {key: requested_by(manifest) for key, manifest in wanted.items()}
        failed: set[str] = set()

        def on_error(key: str, error: Exception) -> None:
            failed.add(key)
            code = status_code(error)
            said = f"{code} {display_text(error_message(error), 120, quote=False)}"
            asker = requester.get(key)
            if asker is not None and refuses_the_object(code, error):
                # Kubernetes refused this object (admission, size, schema, a ResourceQuota):
                # the request's refusal.
                rejected.append(Refusal(*asker, f"Kubernetes refused it: {said}"))
                return
            logger.error("cannot write AuthorizationPolicy %s: %s", key, said)
            if code == 409:
                # Created, not applied (take_over=False): one of that name is someone else's.
                self.findings.api_errors.append(
                    f"AuthorizationPolicy {key} exists and is not the beacon's: remove or "
                    "rename it"
                )
            elif code == 403 and not refuses_the_object(code, error):  # RBAC, not a quota
                self.findings.forbidden.append(f"write AuthorizationPolicy {key}")
            elif code:
                self.findings.api_errors.append(f"cannot write AuthorizationPolicy {key}: {said}")
            else:
                self.findings.unreachable = self.findings.unreachable or said

        summary = manager.reconcile(
            [], MeshType.istio, raw_policies=manifests, on_error=on_error, take_over=False
        )
        # The dry-run policies now in the cluster: those written, or already as wanted.
        self.findings.dry_run = sorted(
            key for key, manifest in wanted.items() if is_dry_run(manifest) and key not in failed
        )
        # By relation: the status names the same first refusal whatever order Juju lists them.
        self.findings.refusals = sorted(
            refused + unbuildable + rejected, key=lambda refusal: refusal.relation_id
        )
        # What the library kept for want of its replacement stays in force for that relation.
        for relation_id, count in kept_by_relation(manager.listed, summary.kept).items():
            self.findings.held[relation_id] = self.findings.held.get(relation_id, 0) + count
        self._report(manager.listed, [*summary.created, *summary.updated, *summary.deleted])
        self._vouch(
            summary.changed or bool(failed),
            (config, provider, namespace_bound, model_operator),
            services if services_needed else None,
            manager.listed,
        )

    def _vouch(
        self,
        changed: bool,
        inputs_of: tuple[BeaconConfig, ServiceMeshProvider, bool, ModelOperatorAccess],
        services: Mapping[str, Mapping[str, str]] | None,
        listed: Sequence[Mapping[str, Any]],
    ) -> None:
        """Remember, for the next reconcile, that every owned policy was found as wanted.

        Only when nothing was written or failed, no request was refused and no relation holds
        its last accepted policies: then the listed policies are the wanted set, as they are.
        """
        if changed or self.findings.refusals or self.findings.held or self.findings.unprotected:
            return
        inputs = self._steady_inputs(*inputs_of, services)
        versions = listed_digest(listed)
        if inputs is not None and versions is not None:
            self.findings.steady = SteadyRecord(services is not None, inputs, versions).encode()

    def _unchanged(
        self,
        config: BeaconConfig,
        provider: ServiceMeshProvider,
        namespace_bound: bool,
        model_operator: ModelOperatorAccess,
        manager: PolicyResourceManager,
    ) -> bool:
        """Whether the policies are provably as the previous reconcile found them: then report.

        The previous reconcile vouched (``Findings.steady``) that every policy the beacon owns
        was as wanted and none other was owned, and remembered a digest of every input of the
        wanted set and each listed policy's ``resourceVersion``. The wanted set is a function of
        those inputs (the code included); Kubernetes changes an object's ``resourceVersion`` on
        every write, by anyone (a policy patched to DENY, a dry-run mark, Istio's status), and
        never reuses one. Both unchanged: the full reconcile would write nothing and report what
        is reported here. Either changed: the full reconcile runs.
        """
        before = SteadyRecord.decode(self._steady_before)
        if before is None:
            return False
        services: dict[str, dict[str, str]] | None = None
        listed: list[dict[str, Any]] | None = None
        if before.services_listed:
            try:
                listed = manager.get_deployed_resources()
                services = self._services(listed)
            except Exception:  # lightkube.ApiError, or an HTTP or connection error
                return False  # the full reconcile meets it again and reports it
        inputs = self._steady_inputs(config, provider, namespace_bound, model_operator, services)
        if inputs is None or inputs != before.inputs:
            return False
        if listed is None:
            listed = manager.get_deployed_resources()
        if listed_digest(listed) != before.versions:
            return False
        self.findings.dry_run = sorted(
            f"{policy['metadata']['namespace']}/{policy['metadata']['name']}"
            for policy in listed
            if is_dry_run(policy)
        )
        self._report(listed, [])
        self.findings.steady = self._steady_before
        return True

    def _report(self, listed: list[dict[str, Any]], written: list[str]) -> None:
        """Log the refusals that changed; read Istio's conditions of the listed policies."""
        self.findings.refusals_logged = log_refusals(
            self.findings.refusals, self.findings.refusals_logged, self.findings.held
        )
        self.findings.policy_conditions = istio_conditions(listed, written)
        for condition in self.findings.unenforced:
            logger.warning("Istio does not enforce policy %s", condition.describe())

    def _steady_inputs(
        self,
        config: BeaconConfig,
        provider: ServiceMeshProvider,
        namespace_bound: bool,
        model_operator: ModelOperatorAccess,
        services: Mapping[str, Mapping[str, str]] | None,
    ) -> str | None:
        """A digest of everything the wanted policies are made from, or ``None`` if unknown."""
        requests = provider.requests_fingerprint()
        if requests is None:
            return None
        metrics = metrics_access_manifests(
            self._charm.model.relations, self._app, self._namespace, self._charm.model.uuid
        )
        inputs = [
            requests,
            services,
            self._namespace,
            self._app,
            self.waypoint,
            self._labels,
            namespace_bound,
            repr(config),
            model_operator.selector,
            metrics,
        ]
        return inputs_digest(inputs)

    def _hold_last_accepted(
        self,
        deployed: Callable[[], list[dict[str, Any]]],
        manifests: list[dict[str, Any]],
        refusals: list[Refusal],
    ) -> list[dict[str, Any]]:
        """The policies to apply, where a relation whose request is refused keeps its last ones.

        A refused request replaces nothing: removing what was applied for it would leave its
        app without an ALLOW policy, which Istio reads as "allow everyone". The relation's
        objects in the cluster (they say which relation they were made for) are wanted as they
        are, until a valid request replaces them or the relation goes. A relation with nothing
        in the cluster (its first request) gets what of its request could be accepted, if any.
        """
        refused = {(refusal.app_name, refusal.relation_id) for refusal in refusals}
        if not refused:
            return manifests
        kept = last_accepted(deployed(), refused)
        self.findings.held = {relation_id: len(items) for relation_id, items in kept.items()}
        wanted = [m for m in manifests if (requested_by(m) or ("", -1))[1] not in kept]
        for items in kept.values():
            wanted.extend(items)
        served = {asker[1] for asker in map(requested_by, wanted) if asker is not None}
        self.findings.unprotected = sorted(
            {relation_id for _, relation_id in refused if relation_id not in served}
        )
        return wanted

    def _delete_policies(self) -> None:
        try:
            self._policy_manager().delete()
        except MissingCRDError:
            logger.info("no AuthorizationPolicy CRD: no policy to delete")

    def _services(self, listed: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
        """The namespace's Services, name to labels, with their owners as proven.

        See :func:`policies.proven_owners` (``listed``: the beacon's policies in the cluster).
        """
        api: Any = self._client  # lightkube's list overloads are only partly typed
        services = {
            item.metadata.name: dict(item.metadata.labels or {})
            for item in api.list(Service, namespace=self._namespace)
        }
        apps = [item.metadata.name for item in api.list(StatefulSet, namespace=self._namespace)]
        return proven_owners(services, apps, listed)

    def _delete_label_configmap(self) -> None:
        try:
            self._client.delete(
                ConfigMap, label_configmap_name(self._app), namespace=self._namespace
            )
        except ApiError as error:
            if status_code(error) != 404:
                raise

    def _attempt(self, what: str, action: Callable[[], _T]) -> Done[_T] | Failed:
        """Run one step; any failure is recorded and the other steps still run (no failed hook)."""
        try:
            return Done(action())
        except MissingCRDError as error:
            logger.error("cannot %s: %s", what, error)
            if error.resource not in self.findings.missing_crds:
                self.findings.missing_crds.append(error.resource)
        except NotOwnedError as error:
            logger.error("cannot %s: %s", what, error)
            self.findings.api_errors.append(f"cannot {what}: {error}")
        except Exception as error:  # lightkube.ApiError, or an HTTP error: see status_code
            code = status_code(error)
            if not code:
                # No answer from Kubernetes (no connection, a timeout, a broken configuration):
                # a status says so and the next hook tries again.
                said = display_text(str(error) or type(error).__name__, 120, quote=False)
                logger.error("cannot %s: cannot reach Kubernetes: %s", what, said)
                self.findings.unreachable = self.findings.unreachable or said
                return Failed(what)
            message = display_text(error_message(error), 120, quote=False)
            logger.error("cannot %s: Kubernetes said %d: %s", what, code, message)
            if code == 403:
                self.findings.forbidden.append(what)
            else:
                self.findings.api_errors.append(f"cannot {what}: {code} {message}")
        return Failed(what)
