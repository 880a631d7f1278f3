"""The beacon's Grafana dashboard, over ``grafana-dashboard`` (interface ``grafana_dashboard``).

The leader writes one key in the application databag, ``dashboards``: JSON text of
``{"templates": {"file:<name>": template}, "uuid": <digest>}``, where each template carries the
dashboard (``content``: its JSON, LZMA-compressed then base64-encoded), the ``charm`` name, the
``juju_topology`` Grafana uses for its topology dropdowns and label matchers, ``inject_dropdowns``
and ``dashboard_alt_uid``. This is what Grafana's ``grafana_dashboard`` consumer reads. cosl
provides the encoding (``LZMABase64``), the dashboard's uid (``DashboardPath40UID``, from the
charm's name and the file's path, as every COS charm derives it) and the topology.

``uuid`` is there only to make the relation data change when a dashboard does: it is the digest
of the templates, not a random value, so an unchanged dashboard writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import ops
from metrics import juju_topology, update_databag

DASHBOARD_RELATION = "grafana-dashboard"
#: The dashboards the beacon ships (Grafana JSON), one template per file.
DASHBOARDS_DIR = Path(__file__).resolve().parent / "grafana_dashboards"
#: The charm's root: the uid of a dashboard derives from its path relative to it.
CHARM_DIR = Path(__file__).resolve().parents[1]


def dashboard_templates(
    charm_name: str, topology: dict[str, str], folder: Path = DASHBOARDS_DIR
) -> dict[str, dict[str, Any]]:
    """Every dashboard of ``folder`` as a ``grafana_dashboard`` template, by its id."""
    from cosl import DashboardPath40UID, LZMABase64  # noqa: PLC0415 (heavy: only when needed)

    templates: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        dashboard = json.loads(path.read_text())
        relative = path.relative_to(CHARM_DIR) if path.is_relative_to(CHARM_DIR) else path
        dashboard["uid"] = DashboardPath40UID.generate(charm_name, str(relative))
        tags: list[str] = dashboard.setdefault("tags", [])
        if f"charm: {charm_name}" not in tags:
            tags.append(f"charm: {charm_name}")
        key = f"file:{path.stem}"
        templates[key] = {
            "charm": charm_name,
            "content": LZMABase64.compress(json.dumps(dashboard, sort_keys=True)),
            "juju_topology": topology,
            "inject_dropdowns": True,
            "dashboard_alt_uid": hashlib.shake_256(f"{charm_name}-{key}".encode()).hexdigest(8),
        }
    return templates


def publish_dashboards(charm: ops.CharmBase) -> None:
    """The leader writes the dashboards on every ``grafana-dashboard`` relation (if changed)."""
    relations = charm.model.relations.get(DASHBOARD_RELATION, [])
    if not relations or not charm.unit.is_leader():
        return
    topology = dict(juju_topology(charm).as_dict())
    templates = dashboard_templates(charm.meta.name, topology)
    digest = hashlib.sha256(json.dumps(templates, sort_keys=True).encode()).hexdigest()
    value = json.dumps({"templates": templates, "uuid": digest})
    for relation in relations:
        update_databag(relation.data[charm.app], {"dashboards": value})
