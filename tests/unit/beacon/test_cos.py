"""The alert rules and the dashboard reach the relation data as the COS charms read them.

Prometheus (``prometheus_scrape``): the leader's ``alert_rules`` is a rule file (``groups`` of
rules) whose rules carry the Juju topology labels from which Prometheus injects its label
matchers, in groups named after the topology; ``scrape_metadata`` is the same topology.
Grafana (``grafana_dashboard``): the leader's ``dashboards`` holds ``templates``, each decoded
here the way Grafana's consumer decodes it (LZMA + base64 of the dashboard's JSON), with the
charm's name, the topology it injects into the queries, and a stable uid.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import lzma
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import APP, MODEL, beacon_state
from ops import testing
from support.fake_kube import FakeKubeServer

SRC = Path(__file__).parents[3] / "charms" / "beacon" / "src"
CHARM = "istio-beacon-k8s"


def prometheus() -> testing.Relation:
    return testing.Relation("metrics-endpoint", "prometheus_scrape", remote_app_name="prometheus")


def grafana() -> testing.Relation:
    return testing.Relation("grafana-dashboard", "grafana_dashboard", remote_app_name="grafana")


def decode(content: str) -> dict[str, Any]:
    """As Grafana's consumer does: base64, then LZMA, then JSON."""
    return json.loads(lzma.decompress(base64.b64decode(content.encode())).decode())


def test_prometheus_gets_every_rule_with_the_topology(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    relation = prometheus()
    out = ctx.run(ctx.on.relation_created(relation), beacon_state(relations=[relation]))
    app = out.get_relation(relation.id).local_app_data
    metadata = json.loads(app["scrape_metadata"])
    uuid = out.model.uuid
    assert metadata == {
        "model": MODEL,
        "model_uuid": uuid,
        "application": APP,
        "unit": f"{APP}/0",
        "charm_name": CHARM,
    }
    published = json.loads(app["alert_rules"])
    shipped = yaml.safe_load((SRC / "prometheus_alert_rules" / "waypoint.rules").read_text())
    [group] = published["groups"]
    assert (
        group["name"]
        == f"{MODEL.replace('-', '_')}_{uuid[:8]}_{APP.replace('-', '_')}_waypoint_rules"
    )
    assert [r["alert"] for r in group["rules"]] == [
        r["alert"] for r in shipped["groups"][0]["rules"]
    ]
    topology = {
        "juju_model": MODEL,
        "juju_model_uuid": uuid,
        "juju_application": APP,
        "juju_charm": CHARM,
    }
    for rule, source in zip(group["rules"], shipped["groups"][0]["rules"], strict=True):
        assert rule["labels"] == {**source["labels"], **topology}
        assert rule["annotations"] == source["annotations"]
        assert rule.get("for") == source.get("for")
        # No cos-tool in the charm: the expression goes as written, Prometheus adds matchers.
        assert rule["expr"] == source["expr"]


def test_grafana_gets_the_dashboard_as_its_consumer_reads_it(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    relation = grafana()
    out = ctx.run(ctx.on.relation_created(relation), beacon_state(relations=[relation]))
    data = json.loads(out.get_relation(relation.id).local_app_data["dashboards"])
    assert set(data) == {"templates", "uuid"}
    [(key, template)] = data["templates"].items()
    assert key == "file:waypoint"
    assert template["charm"] == CHARM
    assert template["inject_dropdowns"] is True
    assert template["juju_topology"] == {
        "model": MODEL,
        "model_uuid": out.model.uuid,
        "application": APP,
        "unit": f"{APP}/0",
        "charm_name": CHARM,
    }
    assert len(template["dashboard_alt_uid"]) == 16
    dashboard = decode(template["content"])
    shipped = json.loads((SRC / "grafana_dashboards" / "waypoint.json").read_text())
    assert dashboard["title"] == shipped["title"]
    assert dashboard["panels"] == shipped["panels"]
    assert f"charm: {CHARM}" in dashboard["tags"]
    # Grafana keys dashboards by uid: 40 hex digits, the same from every unit and revision.
    assert len(dashboard["uid"]) == 40
    int(dashboard["uid"], 16)
    assert isinstance(dashboard["version"], int)


def test_the_published_dashboard_is_stable_across_hooks(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    relation = grafana()
    first = ctx.run(ctx.on.relation_created(relation), beacon_state(relations=[relation]))
    written = first.get_relation(relation.id).local_app_data["dashboards"]
    again = ctx.run(ctx.on.upgrade_charm(), first)
    assert again.get_relation(relation.id).local_app_data["dashboards"] == written


def test_the_dashboard_is_published_on_the_hooks_that_can_change_it_only(
    ctx: testing.Context[Any], kube: FakeKubeServer
):
    # The dashboard depends on the charm, the leader and the relation: other hooks (the
    # reconcile on config-changed, update-status, ...) do not even list the relation. Its data
    # taken away shows which hooks write it.
    relation = grafana()
    first = ctx.run(ctx.on.relation_created(relation), beacon_state(relations=[relation]))
    written = first.get_relation(relation.id).local_app_data["dashboards"]
    emptied = dataclasses.replace(
        first,
        relations=[dataclasses.replace(first.get_relation(relation.id), local_app_data={})],
    )
    for event in (ctx.on.config_changed(), ctx.on.update_status()):
        assert dict(ctx.run(event, emptied).get_relation(relation.id).local_app_data) == {}
    for event in (ctx.on.start(), ctx.on.upgrade_charm(), ctx.on.leader_elected()):
        out = ctx.run(event, emptied)
        assert out.get_relation(relation.id).local_app_data["dashboards"] == written


@pytest.mark.parametrize("relation", [prometheus, grafana])
def test_a_non_leader_writes_no_rules_nor_dashboard(
    ctx: testing.Context[Any], kube: FakeKubeServer, relation: Any
):
    rel = relation()
    out = ctx.run(ctx.on.relation_created(rel), beacon_state(leader=False, relations=[rel]))
    assert dict(out.get_relation(rel.id).local_app_data) == {}


def test_without_cos_relations_cosl_is_not_imported(
    ctx: testing.Context[Any], kube: FakeKubeServer, monkeypatch: pytest.MonkeyPatch
):
    import sys

    for name in [m for m in sys.modules if m == "cosl" or m.startswith("cosl.")]:
        monkeypatch.delitem(sys.modules, name)
    ctx.run(ctx.on.update_status(), beacon_state())
    assert "cosl" not in sys.modules
