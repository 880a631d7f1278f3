"""What the tester asks of the mesh: its policies, the debug lie, and leaving the mesh."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import ops
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    CMRData,
    Endpoint,
    Method,
    UnitPolicy,
    build_mesh_policies,
    label_configmap_name,
    reconcile_charm_labels,
)
from lightkube import ApiError, Client, ConfigError
from workload import SERVER_PORTS

logger = logging.getLogger(__name__)

MESH_RELATION = "service-mesh"
PROVIDE_CMR_RELATION = "provide-cmr-mesh"
INBOUND_RELATION = "inbound"
INBOUND_UNIT_RELATION = "inbound-unit"
PEER_RELATION = "peers"

INBOUND_PATHS = ("/foo", "/bar/")
INBOUND_METHODS = (Method.get, Method.post)


def declared_policies(peer_communication: bool) -> list[AppPolicy | UnitPolicy]:
    """The policies the tester declares, for the given ``peer-communication`` setting.

    - ``inbound`` (app policy, L7): GET and POST on /foo and /bar/, ports 8080 and 8081;
    - ``inbound-unit`` (unit policy, L4): ports 8080 and 8081 of the unit pods;
    - ``peers`` (unit policy, L4), only with peer communication: ports 8080 and 8081.
    """
    policies: list[AppPolicy | UnitPolicy] = [
        AppPolicy(
            relation=INBOUND_RELATION,
            endpoints=[
                Endpoint(
                    ports=list(SERVER_PORTS),
                    methods=list(INBOUND_METHODS),
                    paths=list(INBOUND_PATHS),
                )
            ],
        ),
        UnitPolicy(relation=INBOUND_UNIT_RELATION, ports=list(SERVER_PORTS)),
    ]
    if peer_communication:
        policies.append(UnitPolicy(relation=PEER_RELATION, ports=list(SERVER_PORTS)))
    return policies


def publish_impersonated_policies(
    charm: ops.CharmBase, policies: list[AppPolicy | UnitPolicy], impersonated_app: str
) -> bool:
    """Overwrite the published policies with ones that name ``impersonated_app`` as the target.

    This is the ``debug-impersonate-app`` option: the tester asks the mesh for access to another
    application's workloads, which a safe mesh provider must refuse. Only the leader writes, and
    only when the mesh relation exists.

    Returns:
        Whether the lie was published.
    """
    relation = charm.model.get_relation(MESH_RELATION)
    if relation is None or not charm.unit.is_leader():
        return False
    mesh_policies = build_mesh_policies(
        charm.model.relations,
        impersonated_app,
        charm.model.name,
        policies,
        _cmr_application_data(charm),
    )
    relation.data[charm.app]["policies"] = json.dumps(
        [p.to_dict() for p in mesh_policies], separators=(",", ":")
    )
    logger.warning(
        "debug-impersonate-app: published %d policies targeting %r instead of %r",
        len(mesh_policies),
        impersonated_app,
        charm.app.name,
    )
    return True


def _cmr_application_data(charm: ops.CharmBase) -> dict[str, CMRData]:
    """The real names announced by cross-model senders, keyed by their local alias."""
    announced: dict[str, CMRData] = {}
    for relation in charm.model.relations[PROVIDE_CMR_RELATION]:
        if relation.app is None or "cmr_data" not in relation.data[relation.app]:
            continue
        try:
            announced[relation.app.name] = CMRData.from_dict(
                json.loads(relation.data[relation.app]["cmr_data"])
            )
        except ValueError as e:
            logger.warning("ignoring invalid cmr_data from %s: %s", relation.app.name, e)
    return announced


def remove_mesh_labels(charm: ops.CharmBase, client_factory: Callable[[], Client]) -> str | None:
    """Remove the mesh labels this app's StatefulSet and Service carry (``auto-join-mesh`` off).

    The library removes them itself only when its stored state remembers applying them, and that
    state lives in the charm container, which the label change itself restarts. The labels it
    applied are also remembered in a ConfigMap, so converging to ``{}`` from here is exact and
    touches nothing else. Only the leader acts.

    Returns:
        ``None`` when done (or not the leader), else a message that says what to fix.
    """
    if not charm.unit.is_leader():
        return None
    app = charm.app.name
    try:
        reconcile_charm_labels(
            client_factory(), app, charm.model.name, label_configmap_name(app), {}
        )
    except ApiError as e:
        if e.status.code == 403:
            return f"cannot remove the mesh labels: run `juju trust {app} --scope=cluster`"
        return (
            f"cannot remove the mesh labels: Kubernetes said {e.status.code}: {e.status.message}"
        )
    except ConfigError as e:
        return f"cannot remove the mesh labels: cannot reach Kubernetes: {e}"
    return None
