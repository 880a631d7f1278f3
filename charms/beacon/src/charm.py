#!/usr/bin/env python3
"""The Istio beacon charm: event wiring and status only.

docs/contributing/architecture.md maps the rest.

What a hook imports: every hook is a new process, and this module's imports are its start. They
hold only what every unit's hooks use (ops, the library's provider, the metrics and dashboard
relations, statuses). The Kubernetes client (lightkube and its HTTP client) comes with
``reconciler``, imported when a unit talks to Kubernetes: the leader's reconcile and the last
unit's teardown, never a non-leader's other hooks. The access engine (``access``) is imported
only by the ``access-map`` and ``explain`` actions. ``tests/unit/beacon/test_hook_start.py``
keeps it so.
"""

from __future__ import annotations

# First: whether `import ops` loads ops_tracing depends on the charm-tracing relation (see there).
import tracing_gate

# isort: split
import contextlib
import gc
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import ops
from beacon_config import BeaconConfig
from charms.istio_beacon_k8s.v0.service_mesh import ServiceMeshProvider
from dashboards import DASHBOARD_RELATION, publish_dashboards
from display import display_text
from kube_names import consumer_labels, waypoint_name
from metrics import (
    METRICS_PROXY,
    METRICS_RELATION,
    configure_metrics_proxy,
    publish_scrape_targets,
    telemetry_label,
)
from policies import MAX_STATUS_LENGTH, dry_run_message, refusal_message
from policy_status import not_enforced_message

if TYPE_CHECKING:
    # Imported where used: see "What a hook imports" above.
    from findings import Findings
    from reconciler import BeaconReconciler

logger = logging.getLogger(__name__)
# lightkube's HTTP client logs each request at INFO (httpx) and a dozen lines per request at DEBUG
# (httpcore); ops sends every line to juju-log, one hook tool run each: 6,752 juju-log runs in a
# first reconcile with 200 related apps (docs/contributing/benchmark.md). Warnings and errors
# still go through.
for _http_logger in ("httpx", "httpcore", "httpx2", "httpcore2"):
    logging.getLogger(_http_logger).setLevel(logging.WARNING)

MESH_RELATION = "service-mesh"
PEER_RELATION = "peers"
#: In the peers relation's app data while a refresh's take-over is unfinished (adoption.py).
ADOPTION_PENDING_KEY = "adoption-pending"
TRACING_RELATION = "charm-tracing"


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector; reference counting still frees what is dropped.

    A reconcile allocates in proportion to the related apps (their parsed requests, the wanted
    manifests, the listed policies), and each full collection on the way scans everything alive:
    the steady hook's CPU then grows faster than the number of apps (at 1,000 apps half of it
    was collections; docs/contributing/benchmark.md). A hook is a short process: the few cycles
    a reconcile leaves are collected after it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class IstioBeaconCharm(ops.CharmBase):
    """Run a waypoint for the model, publish the mesh labels, enforce what related apps request."""

    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        # The charm's own traces go to the backend related over charm-tracing, if any; ops loads
        # ops_tracing only in a unit so related (tracing_gate.py).
        self._tracing = (
            ops.tracing.Tracing(self, tracing_relation_name=TRACING_RELATION)
            if ops.tracing is not None
            else None
        )
        tracing_events = self.on[TRACING_RELATION]
        for event in (tracing_events.relation_created, tracing_events.relation_changed):
            framework.observe(event, self._on_tracing_related)
        framework.observe(tracing_events.relation_broken, self._on_tracing_broken)
        for event in (self.on.start, self.on.upgrade_charm):
            framework.observe(event, self._on_tracing_check)
        # adopted: whether this unit, as leader, took over what the deployed istio-beacon-k8s
        # left (see adoption.py).
        # steady: what the last reconcile vouched for (Findings.steady), so that the next one
        # can tell that nothing changed.
        # adoption_pending: see _adoption_pending.
        self._stored.set_default(
            refusals_logged={}, adopted=False, adoption_pending=False, steady=""
        )
        self._config, self._config_error = self._load_config()
        # What this hook's reconcile found, for collect-status (None: no reconcile ran).
        self._findings: Findings | None = None
        self._torn_down = False
        self._mesh: ServiceMeshProvider | None = None
        if self._config is not None:
            # Without a valid config the beacon cannot know what to publish: it publishes nothing.
            # Until a reconcile has seen the namespace carry the mesh labels, consumers are told
            # to keep their own (fail closed): the reconcile publishes "none needed" itself.
            self._mesh = ServiceMeshProvider(
                self,
                labels=consumer_labels(
                    waypoint_name(self.model.name, self.app.name), self.model.name, False
                ),
                mesh_relation_name=MESH_RELATION,
            )

        for event in (
            self.on.start,
            self.on.config_changed,
            self.on.upgrade_charm,
            self.on.leader_elected,
            self.on.update_status,
        ):
            framework.observe(event, self._reconcile)
        mesh = self.on[MESH_RELATION]
        for event in (
            mesh.relation_created,
            mesh.relation_joined,
            mesh.relation_changed,
            mesh.relation_departed,
            mesh.relation_broken,
        ):
            framework.observe(event, self._reconcile)
        # The waypoint scales with the units: follow them as they come and go.
        peers = self.on[PEER_RELATION]
        for event in (peers.relation_joined, peers.relation_departed):
            framework.observe(event, self._reconcile)
        metrics = self.on[METRICS_RELATION]
        for event in (metrics.relation_created, metrics.relation_joined, metrics.relation_broken):
            framework.observe(event, self._reconcile)
        # The dashboards change only with the charm, the leader or the relations: other hooks
        # leave the grafana-dashboard relation alone (one relation-ids fewer on every hook).
        for event in (
            self.on.start,
            self.on.upgrade_charm,
            self.on.leader_elected,
            self.on[DASHBOARD_RELATION].relation_created,
        ):
            framework.observe(event, self._on_dashboards_due)
        # The proxy's layer depends only on the app and model names: set it whenever its
        # container (re)starts, which is when Pebble is ready again.
        framework.observe(self.on[METRICS_PROXY].pebble_ready, self._on_metrics_proxy_ready)
        framework.observe(self.on.remove, self._on_remove)
        framework.observe(self.on.collect_unit_status, self._on_collect_unit_status)
        framework.observe(self.on["access-map"].action, self._on_access_map)
        framework.observe(self.on["explain"].action, self._on_explain)

    def _load_config(self) -> tuple[BeaconConfig | None, str | None]:
        try:
            return self.load_config(BeaconConfig), None
        except ValueError as error:
            return None, str(error)

    def _on_tracing_related(self, _: ops.EventBase) -> None:
        tracing_gate.remember(True, self.charm_dir)

    def _on_tracing_broken(self, _: ops.EventBase) -> None:
        tracing_gate.remember(False, self.charm_dir)

    def _on_tracing_check(self, _: ops.EventBase) -> None:
        # The marker may be gone (a new pod) or stale (a relation broken while it could not be
        # removed): set it from the relation itself; only start and upgrade pay the relation-ids.
        tracing_gate.remember(bool(self.model.relations[TRACING_RELATION]), self.charm_dir)

    def _on_metrics_proxy_ready(self, event: ops.PebbleReadyEvent) -> None:
        configure_metrics_proxy(event.workload, telemetry_label(self.model.name, self.app.name))
        self._reconcile(event)

    def _on_dashboards_due(self, _: ops.EventBase) -> None:
        publish_dashboards(self)

    def _reconcile(self, _: ops.EventBase) -> None:
        # Every unit tells Prometheus where to scrape the waypoint's metrics; the leader also
        # gives it the alert rules.
        publish_scrape_targets(self)
        if self._config is None or self._mesh is None or not self.unit.is_leader():
            return
        reconciler = self._reconciler()
        if reconciler is None:
            return
        with contextlib.closing(reconciler), _cyclic_gc_paused():
            self._findings = reconciler.reconcile(
                self._config,
                self._mesh,
                self.app.planned_units(),
                refusals_logged=dict(self._stored.refusals_logged),
                adopt=not self._stored.adopted,
                refresh_proven=not self._stored.adopted and self._adoption_pending(),
                steady=str(self._stored.steady),
            )
            if reconciler.adopted:
                self._stored.adopted = True
            if reconciler.adoption_pending is not None:
                self._remember_adoption_pending(reconciler.adoption_pending)
        if self._findings.refusals_logged != dict(self._stored.refusals_logged):
            self._stored.refusals_logged = self._findings.refusals_logged
        if self._findings.steady != self._stored.steady:
            self._stored.steady = self._findings.steady

    def _adoption_pending(self) -> bool:
        """Whether a leader proved a refresh from the deployed beacon and has not taken over yet.

        In the peers relation's app data, so that a new leader finishes it too (the proof is
        gone once the first reconcile took over the deployed waypoint), and in this unit's
        stored state while there is no peers relation.
        """
        if self._stored.adoption_pending:
            return True
        peers = self.model.get_relation(PEER_RELATION)
        return peers is not None and peers.data[self.app].get(ADOPTION_PENDING_KEY) == "true"

    def _remember_adoption_pending(self, pending: bool) -> None:
        self._stored.adoption_pending = pending
        peers = self.model.get_relation(PEER_RELATION)
        if peers is None:
            return
        data = peers.data[self.app]
        if pending:
            data[ADOPTION_PENDING_KEY] = "true"
        elif ADOPTION_PENDING_KEY in data:
            del data[ADOPTION_PENDING_KEY]

    def _on_access_map(self, event: ops.ActionEvent) -> None:
        from access.actions import access_map_results  # noqa: PLC0415 (actions only: see top)

        self._answer(event, access_map_results)

    def _on_explain(self, event: ops.ActionEvent) -> None:
        from access.actions import explain_results  # noqa: PLC0415 (actions only: see top)

        self._answer(event, explain_results)

    def _answer(self, event: ops.ActionEvent, answer: Callable[..., dict[str, Any]]) -> None:
        """Read the model, let ``answer`` ask the access engine (see ``access.actions``)."""
        from access.actions import ActionError, read  # noqa: PLC0415 (actions only: see top)

        managing = self._config.manage_authorization_policies if self._config else True
        requests = self._mesh.relation_requests() if self._mesh else []
        try:
            event.set_results(
                answer(
                    read(self.app.name, self.model.name, requests, managing=managing), event.params
                )
            )
        except ActionError as error:
            event.fail(str(error))

    def _on_remove(self, event: ops.RemoveEvent) -> None:
        if self.app.planned_units() > 0:
            self._reconcile(event)  # a scale-down: the waypoint follows
            return
        # The application is going away. Leadership is not reliable this late, so whichever unit
        # gets here cleans up; every deletion tolerates the object being gone already.
        reconciler = self._reconciler()
        if reconciler is None:
            return
        with contextlib.closing(reconciler):
            self._findings = reconciler.teardown()
        self._torn_down = True

    def _reconciler(self) -> BeaconReconciler | None:
        """A reconciler, or ``None`` (and a finding) when no Kubernetes client can be made."""
        # The Kubernetes client's import: only the units that talk to Kubernetes pay it (see top).
        from findings import Findings  # noqa: PLC0415
        from reconciler import BeaconReconciler  # noqa: PLC0415

        try:
            return BeaconReconciler(self)
        except Exception as error:  # no usable client (configuration): a status, not a failure
            self._findings = Findings(unreachable=display_text(str(error), 120, quote=False))
            logger.error("cannot reach Kubernetes: %s", self._findings.unreachable)
            return None

    def _on_collect_unit_status(self, event: ops.CollectStatusEvent) -> None:
        if self._config_error is not None:
            event.add_status(ops.BlockedStatus(f"invalid config: {self._config_error}"))
        findings = self._findings
        if findings is not None:
            for status in self._statuses(findings):
                # Bounded and printable, whatever the text came from.
                status.message = display_text(status.message, MAX_STATUS_LENGTH, quote=False)
                event.add_status(status)
        if self._torn_down:
            event.add_status(ops.MaintenanceStatus("removed the mesh resources"))
        elif not self.unit.is_leader():
            event.add_status(ops.ActiveStatus("standby"))
        elif findings is not None and findings.adoption_note:
            event.add_status(ops.ActiveStatus(findings.adoption_note))
        elif self._config is not None and not self._config.manage_authorization_policies:
            event.add_status(ops.ActiveStatus("not managing authorization policies"))
        elif findings is not None and self._config is not None and self._config.dry_run:
            event.add_status(ops.ActiveStatus(dry_run_message(len(findings.dry_run))))
        event.add_status(ops.ActiveStatus())

    def _statuses(self, findings: Findings) -> list[ops.StatusBase]:
        """The statuses for what a reconcile found, most urgent first."""
        statuses: list[ops.StatusBase] = []
        if findings.root_namespace:
            statuses.append(ops.BlockedStatus(findings.root_namespace))
        if findings.unreachable:
            statuses.append(ops.BlockedStatus(f"cannot reach Kubernetes: {findings.unreachable}"))
        if findings.missing_crds:
            statuses.append(
                ops.BlockedStatus(
                    f"deploy istio-k8s: Istio is missing ({', '.join(findings.missing_crds)} "
                    "not installed)"
                )
            )
        if findings.forbidden:
            statuses.append(
                ops.BlockedStatus(
                    f"run `juju trust {self.app.name} --scope=cluster` or bind the Role in "
                    f"charms/beacon/rbac (docs/beacon.md): Kubernetes refused to "
                    f"{findings.forbidden[0]}"
                )
            )
        if findings.namespace_conflict:
            statuses.append(
                ops.BlockedStatus(
                    f"model-on-mesh: {findings.namespace_conflict}; leaving its labels alone, so "
                    "related apps keep their own mesh labels"
                )
            )
        if findings.model_operator:
            statuses.append(ops.BlockedStatus(f"model-on-mesh: {findings.model_operator}"))
        if findings.refusals:
            statuses.append(
                ops.BlockedStatus(
                    refusal_message(findings.refusals, findings.held, findings.unprotected)
                )
            )
        if findings.unenforced:
            statuses.append(ops.BlockedStatus(not_enforced_message(findings.unenforced)))
        statuses.extend(ops.BlockedStatus(error) for error in findings.api_errors[:1])
        if findings.leaving_mesh:
            more = len(findings.leaving_mesh) - 1
            statuses.append(
                ops.WaitingStatus(
                    "model-on-mesh is off: keeping the model on the mesh until "
                    f"{findings.leaving_mesh[0]}{f' (and {more} more)' if more else ''} carries "
                    "its own mesh labels"
                )
            )
        if findings.waypoint is not None and not findings.waypoint.ready:
            statuses.append(
                ops.WaitingStatus(f"waiting for the waypoint: {findings.waypoint.detail}")
            )
        return statuses


if __name__ == "__main__":  # pragma: nocover
    ops.main(IstioBeaconCharm)
