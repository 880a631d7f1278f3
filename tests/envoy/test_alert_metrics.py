"""The beacon's alert rules on what real Envoy exports, named as Istio's waypoint names it.

The waypoint here is the Envoy tier's (test_waypoint.py): the policies come from the charms'
declarations through the library and the beacon, istiod's builder makes each Service's RBAC
filter (tools/istio-check), real Envoy enforces it. Two things make its stats the waypoint's:
each HTTP connection manager has the stat prefix istiod gives the waypoint's HTTP chains
(``inbound_0.0.0.0_<port>;``), and Envoy runs with the ``stats_config`` of Istio's own bootstrap
for an ambient proxy (its stats tags, which turn parts of a stat's name into labels, and its
inclusion list). receiver2's policies are put in dry-run (annotation ``istio.io/dry-run``), so
istiod builds them as shadow rules.

After allowed, denied and would-be-denied requests, Envoy's ``/stats/prometheus`` is read before
and after, turned into promtool input series (with the labels Prometheus and the metrics proxy add)
and the published rules are evaluated on them by promtool. Every rule that reads a metric Envoy
exports must fire here, with the port the requests went to: a rule written against a name or a
label Envoy does not emit fails.

Which names come from where:

- from the real Envoy here: ``envoy_http_rbac`` with ``http_conn_manager_prefix``,
  ``authz_enforce_result`` (allowed/denied) and, for shadow rules, ``authz_dry_run_action`` and
  ``authz_dry_run_result``;
- documented by Istio for the waypoint, not exported by upstream Envoy (it has no Istio stats
  filter and no agent): ``istio_requests_total`` (``reporter="waypoint"``, as Istio's own ambient
  integration tests query it) and ``istio_agent_process_*`` (the agent's process metrics under
  its ``istio_agent_`` prefix); both are checked in Istio's source below;
- written by the metrics proxy and Prometheus: ``up`` per waypoint pod and per beacon unit.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from beacon_path import BEACON, beacon_manifests
from metrics import alert_rules
from support.envoy_waypoint import Waypoint, run_waypoint
from support.istio_check import IstioCheck, istio_module_dir, istio_stats_config
from support.promtool import (
    RULE_LABELS,
    Promtool,
    beacon_topology,
    metric_names,
    parse_exposition,
    selector,
    series_from_exposition,
    target_labels,
    without_annotations,
)
from traffic_scenario import MODEL, SENDER1, SENDER2, SENDER3, SERVICE_PORTS, SERVICES, consumers
from waypoint import waypoint_name

DRY_RUN_ANNOTATION = "istio.io/dry-run"
POD = {"k8s_pod_name": f"{BEACON}-waypoint-5c9d-x7k2q", "k8s_namespace": MODEL}
#: Only receiver1 listens on 8083 (its policy opens 8080 and 8081), only receiver2 on 9999.
DENIED_PORT, DRY_RUN_PORT = 8083, 9999
ENVOY_METRICS = {"envoy_http_rbac"}


def in_dry_run(manifests: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    """The manifests, with every AuthorizationPolicy that targets ``service`` in dry-run."""
    changed: list[dict[str, Any]] = []
    marked = 0
    for manifest in copy.deepcopy(manifests):
        refs = manifest.get("spec", {}).get("targetRefs", [])
        if manifest["kind"] == "AuthorizationPolicy" and any(
            ref.get("kind") == "Service" and ref.get("name") == service for ref in refs
        ):
            manifest["metadata"].setdefault("annotations", {})[DRY_RUN_ANNOTATION] = "true"
            marked += 1
        changed.append(manifest)
    assert marked > 0, f"no AuthorizationPolicy targets {service}"
    return changed


@pytest.fixture(scope="module")
def rbac(istio: IstioCheck) -> dict[str, Any]:
    built, refusals = beacon_manifests(MODEL, consumers(), SERVICES)
    assert refusals == []
    manifests = in_dry_run(built, "receiver2")
    name = waypoint_name(MODEL, BEACON)
    return istio.waypoint(manifests, services=sorted(SERVICE_PORTS), waypoint=name)


@pytest.fixture(scope="module")
def waypoint(rbac: dict[str, Any]) -> Iterator[Waypoint]:
    with run_waypoint(rbac, SERVICE_PORTS, stats_config=istio_stats_config()) as running:
        yield running


@pytest.fixture(scope="module")
def scrapes(waypoint: Waypoint) -> tuple[str, str]:
    """Envoy's stats before and after the traffic."""
    before = waypoint.prometheus_stats()
    sent = [
        (SENDER1, "receiver1", 8081, "/foo", 200),
        (SENDER1, "receiver1", 8081, "/foo", 200),
        (SENDER3, "receiver1", DENIED_PORT, "/foo", 403),  # related to nothing
        (SENDER1, "receiver1", DENIED_PORT, "/foo", 403),  # related, but not on this port
        (SENDER3, "receiver1", DENIED_PORT, "/foo", 403),
        (SENDER1, "receiver2", DRY_RUN_PORT, "/", 200),  # the dry-run policy would allow it
        (SENDER2, "receiver2", DRY_RUN_PORT, "/", 200),  # it would deny this one: let through
        (SENDER3, "receiver2", DRY_RUN_PORT, "/x", 200),
    ]
    for sender, service, port, path, expected in sent:
        reply = waypoint.request(sender, f"{MODEL}/{service}", port, "GET", path)
        assert reply.status == expected, (sender, service, port, reply.body)
    return before, waypoint.prometheus_stats()


def rbac_samples(text: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {s.labels: s.value for s in parse_exposition(text) if s.name == "envoy_http_rbac"}


def test_envoy_exports_the_rbac_counters_under_istios_names(scrapes: tuple[str, str]):
    after = rbac_samples(scrapes[1])

    def value(**labels: str) -> float:
        return after[tuple(sorted(labels.items()))]

    denied_prefix = f"inbound_0.0.0.0_{DENIED_PORT}"
    dry_prefix = f"inbound_0.0.0.0_{DRY_RUN_PORT}"
    assert value(authz_enforce_result="denied", http_conn_manager_prefix=denied_prefix) == 3
    assert (
        value(authz_enforce_result="allowed", http_conn_manager_prefix="inbound_0.0.0.0_8081") == 2
    )
    shadow = {"authz_dry_run_action": "allow", "http_conn_manager_prefix": dry_prefix}
    assert value(authz_dry_run_result="denied", **shadow) == 2
    assert value(authz_dry_run_result="allowed", **shadow) == 1
    # Dry-run enforces nothing: the dry-run port counts no enforced denial.
    enforced = [
        v
        for labels, v in after.items()
        if dict(labels).get("http_conn_manager_prefix") == dry_prefix
        and "authz_enforce_result" in dict(labels)
    ]
    assert sum(enforced) == 0


def test_upstream_envoy_does_not_export_what_istio_documents(scrapes: tuple[str, str]):
    names = {sample.name for sample in parse_exposition(scrapes[1])}
    assert "envoy_http_rbac" in names
    assert "istio_requests_total" not in names
    assert not any(name.startswith("istio_agent_") for name in names)


def test_istio_names_the_metrics_the_rules_take_from_its_documentation():
    """What upstream Envoy cannot show, Istio's own code names: the agent's and the waypoint's."""
    istio = istio_module_dir()
    agent = (istio / "pilot/cmd/pilot-agent/status/server.go").read_text()
    assert 'WrapRegistererWithPrefix("istio_agent_"' in agent
    assert (
        "NewProcessCollector" in agent
    )  # process_cpu_seconds_total, process_resident_memory_bytes
    ambient = (istio / "tests/integration/ambient/baseline_test.go").read_text()
    assert '"istio_requests_total"' in ambient
    assert '"reporter":                       "waypoint"' in ambient
    for label in (
        "source_workload",
        "source_workload_namespace",
        "destination_service_name",
        "destination_service_namespace",
        "response_code",
    ):
        assert f'"{label}"' in ambient, label


def test_the_rules_fire_on_real_envoy_metrics(scrapes: tuple[str, str]):
    rules = alert_rules(beacon_topology())
    target = {**target_labels(0), **POD}
    input_series = series_from_exposition(list(scrapes), target, repeat_last=14)
    # What the metrics proxy and Prometheus add: the pod was read, the unit was scraped.
    input_series += [
        {"series": selector("up", {**target_labels(0), **POD}), "values": "1x15"},
        {"series": selector("up", target_labels(0)), "values": "1x15"},
    ]
    denied = {**RULE_LABELS, "port": str(DENIED_PORT), "severity": "warning"}
    would_deny = {
        **RULE_LABELS,
        "port": str(DRY_RUN_PORT),
        "authz_dry_run_action": "allow",
        "severity": "warning",
    }
    expected_at_2m = {
        "WaypointRequestsDenied": [{"exp_labels": denied}],
        "WaypointDryRunWouldDeny": [{"exp_labels": would_deny}],
        "WaypointMetricsNotScraped": [],
        "WaypointPodNotScraped": [],
        "WaypointAbsent": [],
    }
    # Every rule that reads a metric real Envoy exports is expected to fire here.
    reads_envoy = {
        rule["alert"]
        for group in rules["groups"]
        for rule in group["rules"]
        if metric_names(rule["expr"]) & ENVOY_METRICS
    }
    assert reads_envoy == {a for a, expected in expected_at_2m.items() if expected}
    checks = [
        {"eval_time": "2m", "alertname": name, "exp_alerts": expected}
        for name, expected in expected_at_2m.items()
    ]
    # Nothing new after the first minute: 5 minutes later the denials have left the window.
    checks += [
        {"eval_time": "8m", "alertname": name, "exp_alerts": []} for name in sorted(reads_envoy)
    ]
    test = {"name": "real Envoy", "interval": "1m", "input_series": input_series}
    Promtool.build().test_rules(without_annotations(rules), [{**test, "alert_rule_test": checks}])
