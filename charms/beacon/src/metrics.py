"""The waypoint's metrics for Prometheus: the ``prometheus_scrape`` provider and the metrics proxy.

Istio copies the Gateway's labels onto the waypoint pods. The beacon puts a telemetry label on
its Gateway; the ``metrics-proxy`` workload container gathers the metrics of every pod carrying it
and serves them on port 15090 of the beacon's units. Over ``metrics-endpoint`` (interface
``prometheus_scrape``) the beacon tells Prometheus to scrape that port on each unit, and allows
the related Prometheus through the mesh to it.

The interface's relation data is written here from its published specification: the
application databag carries ``scrape_jobs``, ``scrape_metadata`` and ``alert_rules`` (each JSON
text), each unit's databag ``prometheus_scrape_unit_address`` and ``prometheus_scrape_unit_name``
(plain text). ``cosl`` (the COS charms' own helpers) provides what the interface shares with the
rest of COS: the Juju topology (``scrape_metadata``) and the alert rules' handling (the rules in
``prometheus_alert_rules/`` get the topology labels, group names and, where the charm ships
``cos-tool``, topology matchers; Prometheus adds the matchers itself when it loads them). What is
left by hand is what cosl does not provide: the scrape job and the unit addresses.

cosl loads pydantic and sqlite when imported: only the leader imports it, and only when a related
Prometheus or Grafana is there to read what it computes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ops
from charms.istio_beacon_k8s.v0.service_mesh import (
    CMRData,
    MeshPolicy,
    UnitPolicy,
    build_authorization_policy,
    build_mesh_policies,
    get_data_from_cmr_relation,
)
from kube_names import deployed_label

if TYPE_CHECKING:
    from cosl import JujuTopology

logger = logging.getLogger(__name__)

METRICS_RELATION = "metrics-endpoint"
METRICS_PROXY = "metrics-proxy"
METRICS_PORT = 15090
CMR_RELATION = "provide-cmr-mesh"
#: The beacon's alert rules (Prometheus rule-file format), published over ``metrics-endpoint``.
ALERT_RULES_DIR = Path(__file__).resolve().parent / "prometheus_alert_rules"


def telemetry_label(model_name: str, app_name: str) -> dict[str, str]:
    """The label that marks the pods whose metrics the metrics proxy gathers.

    ``charms.canonical.com/<model>.<app>.telemetry: aggregated``, the label the deployed beacon
    uses, so a refreshed beacon and its waypoint pods agree on it. When longer than 63
    characters it is shortened as the deployed charm shortened it (see ``deployed_label``).
    """
    key = deployed_label(model_name, app_name, prefix="charms.canonical.com/", suffix=".telemetry")
    return {key: "aggregated"}


def metrics_proxy_layer(pod_selector: Mapping[str, str]) -> ops.pebble.LayerDict:
    """The Pebble layer that runs the metrics proxy over the pods matching ``pod_selector``."""
    selector = ",".join(f"{key}={value}" for key, value in pod_selector.items())
    return {
        "summary": "metrics proxy",
        "description": "Gathers the waypoint pods' metrics for Prometheus",
        "services": {
            METRICS_PROXY: {
                "override": "replace",
                "summary": "metrics proxy",
                "command": "metrics-proxy",
                "startup": "enabled",
                "environment": {"POD_LABEL_SELECTOR": selector},
            }
        },
    }


def configure_metrics_proxy(container: ops.Container, pod_selector: Mapping[str, str]) -> bool:
    """Run the metrics proxy in ``container``; ``False`` when Pebble is not reachable yet."""
    if not container.can_connect():
        return False
    try:
        container.add_layer(METRICS_PROXY, metrics_proxy_layer(pod_selector), combine=True)
        container.replan()
    except (ops.pebble.ConnectionError, ops.pebble.ChangeError) as error:
        logger.warning("cannot start the metrics proxy: %s", error)
        return False
    return True


def scrape_jobs() -> list[dict[str, Any]]:
    """One job: the metrics proxy's port on every unit (``*`` stands for each unit's address)."""
    return [{"metrics_path": "/metrics", "static_configs": [{"targets": [f"*:{METRICS_PORT}"]}]}]


def juju_topology(charm: ops.CharmBase) -> JujuTopology:
    """The beacon unit's Juju topology, as every COS charm computes it."""
    from cosl import JujuTopology  # noqa: PLC0415 (heavy: only when needed)

    return JujuTopology.from_charm(charm)


def alert_rules(topology: JujuTopology, rules_dir: Path = ALERT_RULES_DIR) -> dict[str, Any]:
    """The rules of ``rules_dir`` as the beacon publishes them (``alert_rules``'s JSON value).

    cosl labels each rule with the Juju topology and prefixes each group's name with the
    topology's identifier, as every COS charm publishes its rules.
    """
    from cosl.rules import Rules  # noqa: PLC0415 (heavy: only when needed)

    rules = Rules(query_type="promql", topology=topology)
    rules.add_path(rules_dir, recursive=False)
    return rules.as_dict()


def publish_scrape_targets(charm: ops.CharmBase) -> None:
    """Write what Prometheus needs on every ``metrics-endpoint`` relation (only what changed).

    Every unit writes its own address; the leader writes the jobs, metadata and alert rules.
    """
    relations = charm.model.relations.get(METRICS_RELATION, [])
    if not relations:
        return
    app_data: dict[str, str] = {}
    if charm.unit.is_leader():
        topology = juju_topology(charm)
        app_data = {
            "scrape_jobs": json.dumps(scrape_jobs()),
            "scrape_metadata": json.dumps(topology.as_dict()),
            "alert_rules": json.dumps(alert_rules(topology)),
        }
    for relation in relations:
        unit_data = {"prometheus_scrape_unit_name": charm.unit.name}
        binding = charm.model.get_binding(relation)
        address = binding.network.ingress_address if binding is not None else None
        if address is not None:
            unit_data["prometheus_scrape_unit_address"] = str(address)
        update_databag(relation.data[charm.unit], unit_data)
        if app_data:
            update_databag(relation.data[charm.app], app_data)


def update_databag(databag: ops.RelationDataContent, values: Mapping[str, str]) -> None:
    """Write the ``values`` that differ from what ``databag`` holds (no write when none does)."""
    for key, value in values.items():
        if databag.get(key) != value:
            databag[key] = value


def metrics_access_policies(
    relations: Mapping[str, Sequence[ops.Relation]], app_name: str, namespace: str, model_uuid: str
) -> list[MeshPolicy]:
    """Let the apps related over ``metrics-endpoint`` reach the beacon's pods on the proxy port.

    The beacon's pods are on the mesh; this is the one access they need to grant (cross-model
    Prometheus apps are named by what they announced over ``provide-cmr-mesh``).
    """
    if not relations.get(METRICS_RELATION):
        return []
    claims = trusted_claims(relations.get(CMR_RELATION, []), namespace, model_uuid)
    return build_mesh_policies(
        relations,
        app_name,
        namespace,
        [UnitPolicy(relation=METRICS_RELATION, ports=[METRICS_PORT])],
        claims,
    )


#: The alias Juju gives an app behind an offer, which no app of this model can have.
_OFFER_ALIAS = re.compile(r"^remote-[0-9a-f]{32}$")


def _crosses_models(relation: ops.Relation, model_uuid: str) -> bool:
    """Whether Juju says the remote app of ``relation`` is in another model."""
    try:
        return relation.remote_model.uuid != model_uuid
    except ops.ModelError:  # Juju before 3.6.2: only an offer's alias tells
        return relation.app is not None and bool(_OFFER_ALIAS.match(relation.app.name))


def trusted_claims(
    cmr_relations: Sequence[ops.Relation], namespace: str, model_uuid: str
) -> dict[str, CMRData]:
    """The ``cmr_data`` identities to believe, by the alias of the app that announced them.

    The library's rules for its consumers, applied to the metrics access: a claim counts only on
    a relation that really crosses models (Juju names the apps of this model itself), never for
    an app of this model, and not at all when two relations claim the same identity. Each
    refusal is logged.
    """
    relations = [relation for relation in cmr_relations if relation.app is not None]
    crossing = [
        relation
        for relation in relations
        if relation.app is not None and _crosses_models(relation, model_uuid)
    ]
    for relation in relations:
        if (
            relation not in crossing
            and relation.app is not None
            and relation.data[relation.app].get("cmr_data") is not None
        ):
            logger.warning(
                "metrics access: ignoring cmr_data from %s: it is in this model", relation.app.name
            )
    claims = {
        alias: claim
        for alias, claim in get_data_from_cmr_relation(crossing).items()
        if claim.juju_model_name != namespace
    }
    by_identity: dict[tuple[str, str], list[str]] = {}
    for alias, claim in claims.items():
        by_identity.setdefault((claim.juju_model_name, claim.app_name), []).append(alias)
    trusted: dict[str, CMRData] = {}
    for (model, app), aliases in sorted(by_identity.items()):
        if len(aliases) > 1:
            logger.warning(
                "metrics access: refused cmr_data: %s in model %s is claimed by %s",
                app,
                model,
                ", ".join(sorted(aliases)),
            )
            continue
        trusted[aliases[0]] = claims[aliases[0]]
    return trusted


def metrics_access_manifests(
    relations: Mapping[str, Sequence[ops.Relation]], app_name: str, namespace: str, model_uuid: str
) -> list[dict[str, Any]]:
    """The AuthorizationPolicies of :func:`metrics_access_policies`."""
    return [
        build_authorization_policy(policy)
        for policy in metrics_access_policies(relations, app_name, namespace, model_uuid)
    ]
