"""What the tester asks of the mesh: its policies, and the debug lie."""

from __future__ import annotations

import dataclasses
import json
import logging

from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    Endpoint,
    Method,
    ServiceMeshConsumer,
    UnitPolicy,
)
from workload import POLICY_PORTS

logger = logging.getLogger(__name__)

MESH_RELATION = "service-mesh"
INBOUND_RELATION = "inbound"
INBOUND_UNIT_RELATION = "inbound-unit"
PEER_RELATION = "peers"

INBOUND_PATHS = ("/foo", "/bar/")
INBOUND_METHODS = (Method.get, Method.post)


def declared_policies(
    peer_communication: bool, inbound_extra_service: str = ""
) -> list[AppPolicy | UnitPolicy]:
    """The policies the tester declares, for the given ``peer-communication`` setting.

    - ``inbound`` (app policy, L7): GET and POST on /foo and /bar/, ports 8080 and 8081;
    - the same on the Service ``inbound_extra_service``, when one is named (its
      ``inbound-extra-service`` option): an app policy whose ``service`` is that Service;
    - ``inbound-unit`` (unit policy, L4): ports 8080 and 8081 of the unit pods;
    - ``peers`` (unit policy, L4), only with peer communication: ports 8080 and 8081.
    """
    inbound = [
        Endpoint(
            ports=list(POLICY_PORTS), methods=list(INBOUND_METHODS), paths=list(INBOUND_PATHS)
        )
    ]
    policies: list[AppPolicy | UnitPolicy] = [
        AppPolicy(relation=INBOUND_RELATION, endpoints=inbound)
    ]
    if inbound_extra_service:
        policies.append(
            AppPolicy(relation=INBOUND_RELATION, endpoints=inbound, service=inbound_extra_service)
        )
    policies.append(UnitPolicy(relation=INBOUND_UNIT_RELATION, ports=list(POLICY_PORTS)))
    if peer_communication:
        policies.append(UnitPolicy(relation=PEER_RELATION, ports=list(POLICY_PORTS)))
    return policies


def publish_impersonated_policies(consumer: ServiceMeshConsumer, impersonated_app: str) -> bool:
    """Overwrite the published policies with ones that name ``impersonated_app`` as the target.

    This is the ``debug-impersonate-app`` option: the tester asks the mesh for access to another
    application's workloads, which a safe mesh provider must refuse. Only the leader writes, and
    only when the mesh relation exists.

    Returns:
        Whether the lie was published.
    """
    charm = consumer.model.unit
    relation = consumer.model.get_relation(MESH_RELATION)
    if relation is None or not charm.is_leader():
        return False
    lies = [
        dataclasses.replace(policy, target_app_name=impersonated_app)
        for policy in consumer.mesh_policies()
    ]
    relation.data[consumer.model.app]["policies"] = json.dumps(
        [policy.to_dict() for policy in lies], separators=(",", ":")
    )
    logger.warning(
        "debug-impersonate-app: published %d policies targeting %r instead of %r",
        len(lies),
        impersonated_app,
        consumer.model.app.name,
    )
    return True
