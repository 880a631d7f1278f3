#!/usr/bin/env python3
"""The service mesh tester charm: event wiring and status only."""

from __future__ import annotations

import logging

import ops
import probe
import workload
from charms.istio_beacon_k8s.v0.service_mesh import ServiceMeshConsumer
from mesh import declared_policies, publish_impersonated_policies
from tester_config import TesterConfig

logger = logging.getLogger(__name__)


class ServiceMeshTesterCharm(ops.CharmBase):
    """Serve HTTP on three ports, join the mesh with the declared policies, probe on demand."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._config, self._config_error = self._load_config()
        # Constructed before our own observers so that, on events both handle, the library
        # publishes first and the reconcile below has the last word (the debug option needs that).
        self._mesh = ServiceMeshConsumer(
            self,
            policies=declared_policies(
                self._config.peer_communication, self._config.inbound_extra_service
            ),
            auto_join=self._config.auto_join_mesh,
        )
        self._container = self.unit.get_container(workload.CONTAINER_NAME)

        for event in (
            self.on.install,
            self.on.start,
            self.on.upgrade_charm,
            self.on.config_changed,
            self.on.leader_elected,
            self.on.update_status,
            self.on[workload.CONTAINER_NAME].pebble_ready,
        ):
            framework.observe(event, self._reconcile)
        for relation_name in self.meta.relations:
            relation_events = self.on[relation_name]
            for event in (
                relation_events.relation_created,
                relation_events.relation_joined,
                relation_events.relation_changed,
                relation_events.relation_departed,
                relation_events.relation_broken,
            ):
                framework.observe(event, self._reconcile)
        framework.observe(self.on.collect_unit_status, self._on_collect_unit_status)
        framework.observe(self.on.probe_action, self._on_probe_action)

    def _load_config(self) -> tuple[TesterConfig, str | None]:
        try:
            return self.load_config(TesterConfig), None
        except ValueError as e:
            # Keep honouring the options that are valid (Juju type-checks booleans); only the
            # invalid string options are ignored, and the unit is Blocked until they are fixed.
            return TesterConfig.valid_part(self.config), str(e)

    def _reconcile(self, _: ops.EventBase) -> None:
        self.unit.set_ports(*workload.POLICY_PORTS)
        if self._container.can_connect():
            try:
                workload.ensure_running(self._container, self.app.name, self.unit.name)
            except ops.pebble.ConnectionError as e:
                logger.info("Pebble went away while configuring the workload: %s", e)
        # The library converges the published policies and, with auto-join-mesh off, removes
        # the mesh labels it had put.
        self._mesh.update_service_mesh()
        if self._config.debug_impersonate_app and self._config_error is None:
            publish_impersonated_policies(self._mesh, self._config.debug_impersonate_app)

    def _on_collect_unit_status(self, event: ops.CollectStatusEvent) -> None:
        if self._config_error is not None:
            event.add_status(ops.BlockedStatus(f"invalid config: {self._config_error}"))
        if not self._container.can_connect():
            event.add_status(ops.WaitingStatus("waiting for Pebble in the workload container"))
        else:
            stopped = workload.stopped_services(self._container)
            if stopped:
                event.add_status(ops.WaitingStatus(f"waiting for {', '.join(stopped)} to run"))
        ports = ", ".join(str(port) for port in workload.SERVER_PORTS)
        event.add_status(ops.ActiveStatus(f"serving on {ports}"))

    def _on_probe_action(self, event: ops.ActionEvent) -> None:
        try:
            requests = probe.parse_params(event.params)
        except probe.ProbeParamsError as e:
            event.fail(str(e))
            return
        event.log(f"sending {len(requests)} request(s)")
        event.set_results(probe.action_results(probe.run(requests)))


if __name__ == "__main__":  # pragma: nocover
    ops.main(ServiceMeshTesterCharm)
