"""The beacon's dashboard: every query parses in Prometheus, and reads only metrics that exist.

The dashboard is taken as the beacon publishes it (``dashboard_templates``: decoded the way
Grafana's ``grafana_dashboard`` consumer decodes it). Each query is given to promtool as a
recording rule (``promtool check rules`` parses it with Prometheus's parser), with Grafana's
``$__rate_interval`` replaced by a duration, as Grafana does before it sends a query.

Where each metric comes from (``SOURCES``): ``envoy_http_rbac`` is exported by real Envoy under
Istio's stats naming (tests/envoy/test_alert_metrics.py reads it from a running Envoy); ``up`` per
pod is what the metrics proxy writes for each waypoint pod it reads, and per beacon unit what
Prometheus records for each scrape; ``istio_requests_total`` with ``reporter="waypoint"`` and
``istio_agent_process_*`` are what Istio documents and exports for its waypoint (its standard
metrics, and its agent's process metrics; tests/envoy/test_alert_metrics.py checks both names in
Istio's own code). Nothing else may appear.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cosl import LZMABase64
from dashboards import dashboard_templates
from support.promtool import Promtool, PromtoolError, beacon_topology, metric_names

SOURCES = {
    "envoy_http_rbac": "real Envoy, Istio's stats naming",
    "up": "Prometheus (per beacon unit) and the metrics proxy (per waypoint pod)",
    "istio_requests_total": "Istio's standard metrics, reporter=waypoint",
    "istio_agent_process_cpu_seconds_total": "Istio's agent (process metrics)",
    "istio_agent_process_resident_memory_bytes": "Istio's agent (process metrics)",
}


def published_dashboard() -> dict[str, Any]:
    topology = beacon_topology()
    templates = dashboard_templates(topology.charm_name, dict(topology.as_dict()))
    assert list(templates) == ["file:waypoint"]
    return json.loads(LZMABase64.decompress(templates["file:waypoint"]["content"]))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


QUERIES = queries(published_dashboard())


def as_prometheus_sends_it(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m")


def test_the_dashboard_has_the_panels_the_docs_list():
    titles = [p["title"] for p in published_dashboard()["panels"] if p["type"] != "row"]
    assert titles == [
        "Requests allowed and denied by the waypoint's policies",
        "Denied by the waypoint's policies, per port",
        "403 at the waypoint, per target",
        "403 at the waypoint, by source and target",
        "Would be denied by dry-run policies, per port",
        "Dry-run verdicts",
        "Waypoint pods scraped",
        "Beacon units scraped",
        "Requests through the waypoint, per target",
        "Share of 5xx answers, per target",
        "Istio agent CPU, per waypoint pod",
        "Istio agent memory, per waypoint pod",
    ]


def test_every_query_parses(promtool: Promtool):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_prometheus_sends_it(expr)}
                    for i, (_, expr) in enumerate(QUERIES)
                ],
            }
        ]
    }
    promtool.check_rules(rules)


def test_a_broken_query_is_refused(promtool: Promtool):
    """The check can fail: promtool refuses what Prometheus would refuse."""
    broken = {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum by (a (up)"}]}]}
    with pytest.raises(PromtoolError):
        promtool.check_rules(broken)


@pytest.mark.parametrize(("title", "expr"), QUERIES, ids=[title for title, _ in QUERIES])
def test_every_query_reads_known_metrics_only(title: str, expr: str):
    names = metric_names(as_prometheus_sends_it(expr))
    assert names, f"{title}: reads no metric"
    assert names <= set(SOURCES), f"{title}: {names - set(SOURCES)} come from nowhere known"


def test_the_alert_rules_read_known_metrics_only(published_rules: dict[str, Any]):
    for group in published_rules["groups"]:
        for rule in group["rules"]:
            assert metric_names(rule["expr"]) <= set(SOURCES), rule["alert"]


def test_the_panels_use_the_prometheus_datasource_grafana_provides():
    for panel in published_dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${prometheusds}"}
        assert panel["description"]
