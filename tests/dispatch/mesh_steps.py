"""Steps shared by the dispatch tier's tests: what a Juju user (and Istio) do, and what to read.

Each step runs the hooks Juju would run, in Juju's order, and checks that every one exited 0.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client, codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.rbac_v1 import PolicyRule
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.core_v1 import Namespace, Service
from support.juju_unit_agent import HookRun, JujuModel

BEACON = "istio-beacon-k8s"
MANAGED_BY = "charms.canonical.com/service-mesh.managed-by"
MESH_LABELS = (
    "istio.io/dataplane-mode",
    "istio.io/use-waypoint",
    "istio.io/use-waypoint-namespace",
)
AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)
Gateway = create_namespaced_resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")


def ok(runs: list[HookRun] | HookRun) -> None:
    """Every hook exited 0 (the message shows the first that did not)."""
    for run in runs if isinstance(runs, list) else [runs]:
        assert run.exit_code == 0, run.describe()


def waypoint(model: JujuModel) -> str:
    return f"{model.name}-{BEACON}-waypoint"


def owned(model: JujuModel, resource: Any) -> dict[str, dict[str, Any]]:
    """Objects of a kind that carry the beacon's ownership label, by name."""
    api: Any = model.admin
    labels = {MANAGED_BY: f"{model.name}.{BEACON}"}
    return {
        item.metadata.name: item.to_dict()
        for item in api.list(resource, namespace=model.name, labels=labels)
    }


def policies_for(model: JujuModel) -> dict[str, dict[str, Any]]:
    """The AuthorizationPolicies in the model's namespace, by name."""
    api: Any = model.admin
    return {
        p.metadata.name: p.to_dict() for p in api.list(AuthorizationPolicy, namespace=model.name)
    }


def namespace_labels(model: JujuModel) -> dict[str, str]:
    ns = model.admin.get(Namespace, model.name)
    assert ns.metadata is not None
    return dict(ns.metadata.labels or {})


def pod_template_labels(model: JujuModel, app: str) -> dict[str, str]:
    sts = model.admin.get(StatefulSet, app, namespace=model.name)
    assert sts.spec is not None
    assert sts.spec.template.metadata is not None
    return dict(sts.spec.template.metadata.labels or {})


def service_labels(model: JujuModel, app: str) -> dict[str, str]:
    svc = model.admin.get(Service, app, namespace=model.name)
    assert svc.metadata is not None
    return dict(svc.metadata.labels or {})


def istio_runs_the_waypoint(model: JujuModel, ready: int = 1) -> None:
    """Do what Istio does for a waypoint Gateway: a Deployment named like it.

    Here ``ready`` replicas are reported ready (no kubelet runs: the status is written directly).
    """
    name = waypoint(model)
    labels = {"gateway.networking.k8s.io/gateway-name": name}
    client: Client = model.admin
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": model.name, "labels": labels},
        "spec": {
            "replicas": ready,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "istio-proxy", "image": "istio/proxyv2"}]},
            },
        },
    }
    try:
        client.create(codecs.from_dict(manifest), field_manager="istio")
    except ApiError as e:
        if e.status.code != 409:
            raise
    client.patch(Deployment, name, {"spec": {"replicas": ready}}, namespace=model.name)
    # ... and programs the Gateway: Programmed for its generation, with an address.
    path = f"/apis/gateway.networking.k8s.io/v1/namespaces/{model.name}/gateways/{name}"
    status, gateway = model.kube.raw_request("GET", path)
    assert status == 200, gateway
    generation = gateway["metadata"]["generation"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [
        {
            "type": kind,
            "status": "True",
            "reason": kind,
            "message": "",
            "observedGeneration": generation,
            "lastTransitionTime": now,
        }
        for kind in ("Accepted", "Programmed")
    ]
    address = {"type": "Hostname", "value": f"{name}.{model.name}.svc.cluster.local"}
    status, answer = model.kube.raw_request(
        "PATCH",
        f"{path}/status",
        {"status": {"conditions": conditions, "addresses": [address]}},
        content_type="application/merge-patch+json",
    )
    assert status == 200, answer
    client.patch(
        Deployment.Status,
        name,
        {"status": {"replicas": ready, "readyReplicas": ready, "availableReplicas": ready}},
        namespace=model.name,
    )


def deploy_beacon(
    model: JujuModel,
    charm: Path,
    *,
    trust: bool = True,
    rules: Sequence[PolicyRule] | None = None,
    cluster_rules: Sequence[PolicyRule] | None = None,
    **config: Any,
) -> str:
    model.deploy(
        BEACON,
        charm,
        trust=trust,
        config={k.replace("_", "-"): v for k, v in config.items()},
        rules=rules,
        cluster_rules=cluster_rules,
    )
    runs = model.start_units(BEACON)
    ok(runs)
    return f"{BEACON}/0"


def deploy_tester(model: JujuModel, charm: Path, app: str) -> str:
    model.deploy(app, charm)
    ok(model.start_units(app))
    return f"{app}/0"


def relate_mesh(model: JujuModel, app: str) -> int:
    """``juju integrate BEACON:service-mesh APP:service-mesh`` and the hooks that follow.

    In the order Juju runs them: created on both sides, then each unit sees the other join.
    """
    rid = model.relate(BEACON, "service-mesh", app, "service-mesh")
    runs = [
        model.run_hook(f"{BEACON}/0", "service-mesh-relation-created", relation_id=rid),
        model.run_hook(f"{app}/0", "service-mesh-relation-created", relation_id=rid),
    ]
    runs += model.join(rid, f"{app}/0", f"{BEACON}/0")
    runs += model.join(rid, f"{BEACON}/0", f"{app}/0")
    # The consumer's leader wrote its policies after the beacon's first look: Juju tells the
    # consumer that the beacon's data changed, and the beacon that the consumer's did.
    runs.append(model.changed(rid, f"{app}/0", f"{BEACON}/0"))
    runs.append(model.changed(rid, f"{BEACON}/0", f"{app}/0"))
    ok(runs)
    return rid


def relate_inbound(model: JujuModel, receiver: str, sender: str) -> int:
    """``juju integrate RECEIVER:inbound SENDER:outbound`` with its hooks on both sides."""
    rid = model.relate(receiver, "inbound", sender, "outbound")
    runs = [
        model.run_hook(f"{receiver}/0", "inbound-relation-created", relation_id=rid),
        model.run_hook(f"{sender}/0", "outbound-relation-created", relation_id=rid),
    ]
    runs += model.join(rid, f"{receiver}/0", f"{sender}/0")
    runs += model.join(rid, f"{sender}/0", f"{receiver}/0")
    ok(runs)
    return rid
