"""Every alert rule the beacon publishes, evaluated by Prometheus's own code (promtool test rules).

The rules are those the beacon writes into ``alert_rules`` (through cosl, with its Juju topology);
the series are what Prometheus stores when it scrapes the beacon's units: each series carries its
unit's target labels (``target_labels``) and, for the waypoint's series, the pod the metrics proxy
read them from (``k8s_pod_name``, ``k8s_namespace``). Each rule gets a case where it fires (with
the labels the alert must carry), cases where it must not, and a case where it stops firing once
the condition is gone: none can fire forever, none can never fire.

The metric names: ``envoy_http_rbac`` and its labels are what real Envoy exports under Istio's
stats naming (proven in tests/envoy/test_alert_metrics.py); ``up{k8s_pod_name=...}`` is what the
metrics proxy adds per pod it reads; ``istio_requests_total`` (reporter ``waypoint``) and
``istio_agent_process_*`` are the metrics Istio documents for its proxies (standard metrics, and
the agent's process metrics that the proxy's merged endpoint serves).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest
from support.promtool import (
    RULE_LABELS,
    Promtool,
    selector,
    target_labels,
    without_annotations,
)

POD = {
    "k8s_pod_name": "istio-beacon-k8s-mesh-model-waypoint-7d9f-abcde",
    "k8s_namespace": "mesh-model",
}
POD2 = {
    "k8s_pod_name": "istio-beacon-k8s-mesh-model-waypoint-7d9f-fghij",
    "k8s_namespace": "mesh-model",
}
MIB = 1024 * 1024


def series(name: str, values: str, unit: int = 0, /, **labels: str) -> dict[str, str]:
    """One input series, as scraped through beacon unit ``unit``."""
    return {"series": selector(name, {**labels, **target_labels(unit)}), "values": values}


def alert(**labels: str) -> dict[str, Any]:
    """An expected alert: its labels, with the rule's own (severity is given by the caller)."""
    return {"exp_labels": {**RULE_LABELS, **labels}}


def case(
    name: str, input_series: list[dict[str, str]], checks: Mapping[str, Mapping[str, list[Any]]]
) -> dict[str, Any]:
    """A promtool test: ``checks`` maps eval times to {alert name: expected alerts}."""
    return {
        "name": name,
        "interval": "1m",
        "input_series": input_series,
        "alert_rule_test": [
            {"eval_time": at, "alertname": alertname, "exp_alerts": expected}
            for at, by_alert in checks.items()
            for alertname, expected in by_alert.items()
        ],
    }


def rbac(
    result: str, port: int, values: str, unit: int = 0, pod: Mapping[str, str] = POD
) -> dict[str, str]:
    return series(
        "envoy_http_rbac",
        values,
        unit,
        authz_enforce_result=result,
        http_conn_manager_prefix=f"inbound_0.0.0.0_{port}",
        **pod,
    )


def shadow(action: str, result: str, port: int, values: str, unit: int = 0) -> dict[str, str]:
    return series(
        "envoy_http_rbac",
        values,
        unit,
        authz_dry_run_action=action,
        authz_dry_run_result=result,
        http_conn_manager_prefix=f"inbound_0.0.0.0_{port}",
        **POD,
    )


def up(values: str, unit: int = 0, /, **labels: str) -> dict[str, str]:
    return series("up", values, unit, **labels)


DENIED = alert(port="8080", severity="warning")

CASES: list[dict[str, Any]] = [
    # -- WaypointRequestsDenied ----------------------------------------------------------------
    case(
        "denials fire, per port, once for a pod seen through two beacon units, and clear",
        [
            # Denials on 8080 from minute 2 to 4, then none; 9090 only allowed requests.
            rbac("denied", 8080, "0 0 3 6 9 9 9 9 9 9 9 9 9 9 9 9", unit=0),
            rbac("denied", 8080, "0 0 3 6 9 9 9 9 9 9 9 9 9 9 9 9", unit=1),
            rbac("allowed", 8080, "0 10 20 30 40 50 60 70 80 90 100 110 120 130 140 150"),
            rbac("denied", 9090, "0x15"),
            rbac("allowed", 9090, "0+5x15"),
        ],
        {
            "1m": {"WaypointRequestsDenied": []},
            "3m": {"WaypointRequestsDenied": [DENIED]},
            # The last denials were scraped at 4m: the 5-minute window (3m, 8m] no longer sees
            # the counter grow at 8m; (2m, 7m] still does at 7m.
            "7m": {"WaypointRequestsDenied": [DENIED]},
            "9m": {"WaypointRequestsDenied": []},
        },
    ),
    case(
        "allowed requests and would-be denials of dry-run policies are not denials",
        [
            rbac("allowed", 8080, "0+10x10"),
            rbac("denied", 8080, "0x10"),
            shadow("allow", "denied", 8080, "0+4x10"),
        ],
        {"5m": {"WaypointRequestsDenied": []}},
    ),
    case(
        "denials on two ports and two pods: one alert per port",
        [
            rbac("denied", 8080, "0+1x10"),
            rbac("denied", 8080, "0+2x10", pod=POD2),
            rbac("denied", 9090, "0+1x10", pod=POD2),
        ],
        {
            "5m": {
                "WaypointRequestsDenied": [DENIED, alert(port="9090", severity="warning")],
            }
        },
    ),
    # -- WaypointDryRunWouldDeny ---------------------------------------------------------------
    case(
        "would-be denials of dry-run policies fire, per port and dry-run action, and clear",
        [
            shadow("allow", "denied", 9999, "0 0 2 4 4 4 4 4 4 4 4 4"),
            shadow("allow", "allowed", 9999, "0+7x11"),
            shadow("deny", "denied", 8080, "0 0 0 1 1 1 1 1 1 1 1 1"),
            rbac("denied", 8080, "0+3x11"),
        ],
        {
            "1m": {"WaypointDryRunWouldDeny": []},
            "3m": {
                "WaypointDryRunWouldDeny": [
                    alert(port="9999", authz_dry_run_action="allow", severity="warning"),
                    alert(port="8080", authz_dry_run_action="deny", severity="warning"),
                ]
            },
            "10m": {"WaypointDryRunWouldDeny": []},
        },
    ),
    case(
        "dry-run policies that would allow everything, and real denials, do not fire it",
        [shadow("allow", "allowed", 9999, "0+7x10"), rbac("denied", 9999, "0+3x10")],
        {"5m": {"WaypointDryRunWouldDeny": []}},
    ),
    # -- WaypointMetricsNotScraped -------------------------------------------------------------
    case(
        "a beacon unit Prometheus cannot scrape for 5 minutes, then can again",
        [
            up("1 0 0 0 0 0 0 0 1 1 1 1", 0),
            up("1x11", 1),
            # The proxy of unit 1 still reads the pod: a pod's series is not the unit's scrape.
            up("1x11", 1, **POD),
        ],
        {
            "5m": {"WaypointMetricsNotScraped": []},  # down since 1m: not 5 minutes yet
            "6m": {
                "WaypointMetricsNotScraped": [
                    {"exp_labels": {**target_labels(0), "severity": "critical"}}
                ]
            },
            "9m": {"WaypointMetricsNotScraped": []},
        },
    ),
    case(
        "a waypoint pod the proxy cannot read does not make the unit unscraped",
        [up("1x10"), up("0x10", **POD)],
        {"8m": {"WaypointMetricsNotScraped": []}},
    ),
    # -- WaypointPodNotScraped -----------------------------------------------------------------
    case(
        "a waypoint pod no proxy can read for 5 minutes, reported once, then back",
        [
            up("1x12", 0),
            up("1x12", 1),
            up("1 0 0 0 0 0 0 0 1 1 1 1 1", 0, **POD),
            up("1 0 0 0 0 0 0 0 1 1 1 1 1", 1, **POD),
            up("1x12", 0, **POD2),
        ],
        {
            "5m": {"WaypointPodNotScraped": []},
            "6m": {
                "WaypointPodNotScraped": [
                    {
                        "exp_labels": {
                            **RULE_LABELS,
                            **POD,
                            "severity": "critical",
                        }
                    }
                ]
            },
            "9m": {"WaypointPodNotScraped": []},
        },
    ),
    case(
        "a waypoint pod that one of two proxies can read is not down",
        [up("0x10", 0, **POD), up("1x10", 1, **POD)],
        {"8m": {"WaypointPodNotScraped": []}},
    ),
    # -- WaypointAbsent ------------------------------------------------------------------------
    case(
        "proxies scraped fine but no waypoint pod at all, for 10 minutes, until one appears",
        [
            up("1x20", 0),
            up("1x20", 1),
            up("_x12 1x7", 0, **POD),
        ],
        {
            "9m": {"WaypointAbsent": []},
            "10m": {"WaypointAbsent": [alert(severity="critical")]},
            "14m": {"WaypointAbsent": []},
        },
    ),
    case(
        "a waypoint pod that is down is not absent; an unscraped unit is not either",
        [up("1x15", **POD), up("0x15", 0), up("1x15", 1), up("0x15", 1, **POD2)],
        {"12m": {"WaypointAbsent": []}},
    ),
    case(
        "no beacon unit scraped: WaypointAbsent stays quiet (WaypointMetricsNotScraped speaks)",
        [up("0x15", 0)],
        {"12m": {"WaypointAbsent": []}},
    ),
    # -- WaypointHighErrorRate -----------------------------------------------------------------
    case(
        "one target with 20% of 5xx for 5 minutes; another at 5%; no traffic at all",
        [
            series(
                "istio_requests_total",
                "0+80x15",
                reporter="waypoint",
                response_code="200",
                destination_service_namespace="mesh-model",
                destination_service_name="api",
                **POD,
            ),
            series(
                "istio_requests_total",
                "0+20x15",
                reporter="waypoint",
                response_code="503",
                destination_service_namespace="mesh-model",
                destination_service_name="api",
                **POD,
            ),
            series(
                "istio_requests_total",
                "0+95x15",
                reporter="waypoint",
                response_code="200",
                destination_service_namespace="mesh-model",
                destination_service_name="web",
                **POD,
            ),
            series(
                "istio_requests_total",
                "0+5x15",
                reporter="waypoint",
                response_code="500",
                destination_service_namespace="mesh-model",
                destination_service_name="web",
                **POD,
            ),
            series(
                "istio_requests_total",
                "7x15",
                reporter="waypoint",
                response_code="503",
                destination_service_namespace="mesh-model",
                destination_service_name="idle",
                **POD,
            ),
        ],
        {
            "5m": {"WaypointHighErrorRate": []},  # above 10% since 1m: not 5 minutes yet
            "7m": {
                "WaypointHighErrorRate": [
                    alert(
                        destination_service_namespace="mesh-model",
                        destination_service_name="api",
                        severity="warning",
                    )
                ]
            },
        },
    ),
    case(
        "the inherited rule's mistake: successes over completed requests is no error rate",
        [
            # All requests succeed: the deployed rule (completed / 2xx > 0.1) fired on this.
            series(
                "istio_requests_total",
                "0+100x15",
                reporter="waypoint",
                response_code="200",
                destination_service_namespace="mesh-model",
                destination_service_name="api",
                **POD,
            ),
            series(
                "istio_requests_total",
                "0+100x15",
                reporter="source",
                response_code="503",
                destination_service_namespace="mesh-model",
                destination_service_name="api",
                **POD,
            ),
        ],
        {"10m": {"WaypointHighErrorRate": []}},
    ),
    case(
        "errors clear: 5xx stop at minute 6",
        [
            series(
                "istio_requests_total",
                "0+50x20",
                reporter="waypoint",
                response_code="200",
                destination_service_namespace="mesh-model",
                destination_service_name="api",
                **POD,
            ),
            series(
                "istio_requests_total",
                "0+50x6 300x14",
                reporter="waypoint",
                response_code="502",
                destination_service_namespace="mesh-model",
                destination_service_name="api",
                **POD,
            ),
        ],
        {"18m": {"WaypointHighErrorRate": []}},
    ),
    # -- WaypointAgentHighCPU ------------------------------------------------------------------
    case(
        "the agent busy at one CPU for 15 minutes fires; then idle clears",
        [series("istio_agent_process_cpu_seconds_total", "0+60x20 1200x15", **POD)],
        {
            "14m": {"WaypointAgentHighCPU": []},
            "20m": {"WaypointAgentHighCPU": [alert(**POD, severity="warning")]},
            "30m": {"WaypointAgentHighCPU": []},
        },
    ),
    case(
        "the inherited rule's mistake: a large CPU-seconds total is not high CPU",
        [series("istio_agent_process_cpu_seconds_total", "5000+1x30", **POD)],
        {"25m": {"WaypointAgentHighCPU": []}},
    ),
    # -- WaypointAgentHighMemory ---------------------------------------------------------------
    case(
        "the agent above 200 MiB for 15 minutes fires; back under, it clears",
        [
            series(
                "istio_agent_process_resident_memory_bytes", f"{300 * MIB}x20 {100 * MIB}x5", **POD
            )
        ],
        {
            "14m": {"WaypointAgentHighMemory": []},
            "16m": {"WaypointAgentHighMemory": [alert(**POD, severity="warning")]},
            "22m": {"WaypointAgentHighMemory": []},
        },
    ),
    case(
        "the agent at 100 MiB never fires",
        [series("istio_agent_process_resident_memory_bytes", f"{100 * MIB}x30", **POD)],
        {"25m": {"WaypointAgentHighMemory": []}},
    ),
]


def alert_names(rules: Mapping[str, Any]) -> list[str]:
    return [
        rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
    ]


def test_the_published_rules_parse(promtool: Promtool, published_rules: dict[str, Any]):
    promtool.check_rules(published_rules)


@pytest.mark.parametrize("test", CASES, ids=[c["name"] for c in CASES])
def test_rule_case(promtool: Promtool, published_rules: dict[str, Any], test: dict[str, Any]):
    promtool.test_rules(without_annotations(published_rules), [test])


def render(template: str, labels: Mapping[str, str], value: str) -> str:
    """What Prometheus renders for the templates used here: labels, and the value formatted."""
    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], template)
    return re.sub(r"\{\{\s*\$value(\s*\|\s*\w+)?\s*\}\}", value, text)


#: For each alert: series at a steady rate, when to look, the alert's labels, and its value as
#: Prometheus formats it in the annotations (rate 1/s is "1", 0.2 as a percentage "20%", ...).
ANNOTATED: dict[str, tuple[list[dict[str, str]], str, dict[str, str], str]] = {
    "WaypointRequestsDenied": (
        [rbac("denied", 8080, "0+60x10")],
        "5m",
        {**RULE_LABELS, "port": "8080"},
        "1",
    ),
    "WaypointDryRunWouldDeny": (
        [shadow("allow", "denied", 9999, "0+120x10")],
        "5m",
        {**RULE_LABELS, "port": "9999", "authz_dry_run_action": "allow"},
        "2",
    ),
    "WaypointMetricsNotScraped": ([up("0x10")], "6m", target_labels(0), ""),
    "WaypointPodNotScraped": (
        [up("1x10"), up("0x10", 0, **POD)],
        "6m",
        {**RULE_LABELS, **POD},
        "",
    ),
    "WaypointAbsent": ([up("1x15")], "11m", RULE_LABELS, ""),
    "WaypointHighErrorRate": (
        [
            series(
                "istio_requests_total",
                "0+80x15",
                reporter="waypoint",
                response_code="200",
                destination_service_namespace="mesh-model",
                destination_service_name="api",
                **POD,
            ),
            series(
                "istio_requests_total",
                "0+20x15",
                reporter="waypoint",
                response_code="503",
                destination_service_namespace="mesh-model",
                destination_service_name="api",
                **POD,
            ),
        ],
        "8m",
        {
            **RULE_LABELS,
            "destination_service_namespace": "mesh-model",
            "destination_service_name": "api",
        },
        "20%",
    ),
    "WaypointAgentHighCPU": (
        [series("istio_agent_process_cpu_seconds_total", "0+60x20", **POD)],
        "18m",
        {**RULE_LABELS, **POD},
        "1",
    ),
    "WaypointAgentHighMemory": (
        [series("istio_agent_process_resident_memory_bytes", f"{300 * MIB}x20", **POD)],
        "16m",
        {**RULE_LABELS, **POD},
        "300Mi",
    ),
}


@pytest.mark.parametrize("alertname", sorted(ANNOTATED))
def test_the_annotations_render(
    promtool: Promtool, published_rules: dict[str, Any], alertname: str
):
    """Each alert's summary and description, as Prometheus renders them, name what they say."""
    input_series, at, labels, value = ANNOTATED[alertname]
    [rule] = [
        r for g in published_rules["groups"] for r in g["rules"] if r.get("alert") == alertname
    ]
    expected = {
        "exp_labels": {**labels, **rule["labels"]},
        "exp_annotations": {
            key: render(text, labels, value) for key, text in rule["annotations"].items()
        },
    }
    test = case(alertname, input_series, {at: {alertname: [expected]}})
    promtool.test_rules(published_rules, [test])


def test_every_alert_has_a_firing_and_a_quiet_case(published_rules: dict[str, Any]):
    assert set(ANNOTATED) == set(alert_names(published_rules))
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in CASES:
        for check in test["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = set(alert_names(published_rules))
    assert names == fires, "every published alert fires in a case (and no case names another)"
    assert names == quiet, "every published alert stays quiet in a case"


def test_a_failing_expectation_fails(promtool: Promtool, published_rules: dict[str, Any]):
    """The harness can fail: expecting the denial alert where there is none is refused."""
    wrong = case(
        "wrong", [rbac("denied", 8080, "0x10")], {"5m": {"WaypointRequestsDenied": [DENIED]}}
    )
    with pytest.raises(RuntimeError, match="FAILED"):
        promtool.test_rules(without_annotations(published_rules), [wrong])


def test_every_rule_tells_what_to_do(published_rules: dict[str, Any]):
    for group in published_rules["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"]["summary"], rule["alert"]
            description = rule["annotations"]["description"]
            commands = ("juju run", "juju status", "kubectl -n")
            assert any(command in description for command in commands), rule["alert"]
            assert {k: rule["labels"][k] for k in RULE_LABELS} == RULE_LABELS, rule["alert"]
            assert rule["labels"]["severity"] in {"warning", "critical"}
    denial_rules = {"WaypointRequestsDenied", "WaypointDryRunWouldDeny"}
    for group in published_rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] in denial_rules:
                assert " explain " in rule["annotations"]["description"].replace("\n", " ")
