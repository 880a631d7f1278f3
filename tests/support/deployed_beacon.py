"""What the istio-beacon-k8s charm deployed so far leaves in a model, to seed before a refresh.

Objects as that charm writes them (its names, its ``app.kubernetes.io/instance`` and
``kubernetes-resource-handler-scope`` labels, its field manager: the app name), through any
lightkube client: the fake API server of the unit tests or the real one of the k8s tier.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap, Namespace
from lightkube.types import PatchType

INSTANCE = "app.kubernetes.io/instance"
#: The beacon's own ownership label (it also carries the two above, for a rollback's sake).
MANAGED_BY = "charms.canonical.com/service-mesh.managed-by"
SCOPE = "kubernetes-resource-handler-scope"
NAMESPACE_OWNER = "charms.canonical.com/istio.io.waypoint.managed-by"

Gateway = create_namespaced_resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")
AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)


def charm_label(model: str, app: str, prefix: str = "", suffix: str = "", sep: str = ".") -> str:
    """How the deployed charm derives a name from its model and app (its published helper).

    Written here independently of the beacon's own copy, so that the two check each other.
    """
    whole = prefix + model + sep + app + suffix
    if len(whole) <= 63:
        return whole
    tail = hashlib.sha1((model + sep + app).encode()).hexdigest()[:6]
    space = 63 - (len(prefix) + len(suffix) + 6 + 2)
    keep_model = max(1, int(space * len(model) / (len(model) + len(app))))
    keep_app = max(1, space - keep_model)
    return prefix + model[:keep_model] + sep + app[:keep_app] + sep + tail + suffix


@dataclass
class DeployedBeacon:
    """What was seeded, as ``(kind, namespace, name)``."""

    waypoint: str
    policies: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    model_operator_policy: str = ""


def seed_deployed_beacon(
    client: Client,
    app: str,
    model: str,
    *,
    consumers: list[tuple[str, str]],
    foreign_namespace: str | None = None,
    model_on_mesh: bool = True,
    older_revision: bool = False,
) -> DeployedBeacon:
    """Seed ``model`` with what the deployed beacon leaves after serving ``consumers``.

    Args:
        client: a client allowed to write anywhere (its field manager should be ``app``).
        app: the beacon's app name.
        model: the model (namespace), which must exist with the beacon's StatefulSet/Service.
        consumers: ``(source app, target app)`` pairs, each with an app policy (GET on 8080).
        foreign_namespace: also leave a policy there, as the deployed beacon applied a request
            naming another namespace as its target without checking it.
        model_on_mesh: leave the namespace labels and the model-operator policy of
            ``model-on-mesh``.
        older_revision: label with the older spelling of the instance label (``<app>-<model>``).
    """
    api: Any = client
    instance = f"{app}-{model}" if older_revision else charm_label(model, app, sep="-")
    waypoint = charm_label(model, app, suffix="-waypoint", sep="-")
    telemetry = {charm_label(model, app, "charms.canonical.com/", ".telemetry"): "aggregated"}

    def labels(scope: str, **more: str) -> dict[str, str]:
        return {**more, INSTANCE: instance, SCOPE: scope}

    api.apply(
        Gateway.from_dict(
            {
                "metadata": {
                    "name": waypoint,
                    "namespace": model,
                    "labels": labels(
                        "istio-waypoint", **{"istio.io/waypoint-for": "service"}, **telemetry
                    ),
                },
                "spec": {
                    "gatewayClassName": "istio-waypoint",
                    "listeners": [
                        {
                            "name": "mesh",
                            "port": 15008,
                            "protocol": "HBONE",
                            "allowedRoutes": {"namespaces": {"from": "All"}},
                        }
                    ],
                },
            }
        ),
        field_manager=app,
        force=True,
    )
    api.apply(
        HorizontalPodAutoscaler.from_dict(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {
                    "name": waypoint,
                    "namespace": model,
                    "labels": labels("istio-waypoint"),
                },
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": waypoint,
                    },
                    "minReplicas": 1,
                    "maxReplicas": 1,
                },
            }
        ),
        field_manager=app,
        force=True,
    )
    seeded = DeployedBeacon(waypoint=waypoint)
    targets = [(model, source, target) for source, target in consumers]
    if foreign_namespace is not None and consumers:
        targets.append((foreign_namespace, consumers[0][0], "victim"))
    for i, (namespace, source, target) in enumerate(targets):
        name = f"{app}-{model}-policy-{source}-{model}-{target}-{i:08x}"[-253:].lstrip("-")
        api.apply(
            AuthorizationPolicy.from_dict(
                {
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": labels("istio-authorization-policy"),
                    },
                    "spec": {
                        "targetRefs": [{"kind": "Service", "group": "", "name": target}],
                        "rules": [
                            {
                                "from": [
                                    {
                                        "source": {
                                            "principals": [f"cluster.local/ns/{model}/sa/{source}"]
                                        }
                                    }
                                ],
                                "to": [{"operation": {"ports": ["8080"], "methods": ["GET"]}}],
                            }
                        ],
                    },
                }
            ),
            field_manager=app,
            force=True,
        )
        seeded.policies.append((namespace, name))
    if model_on_mesh:
        seeded.model_operator_policy = f"{app}-{model}-policy-all-sources-modeloperator"
        api.apply(
            AuthorizationPolicy.from_dict(
                {
                    "metadata": {
                        "name": seeded.model_operator_policy,
                        "namespace": model,
                        "labels": labels("modeloperator-authorization-policy"),
                    },
                    "spec": {
                        "selector": {"matchLabels": {"juju-modeloperator": "modeloperator"}},
                        "rules": [{}],
                    },
                }
            ),
            field_manager=app,
            force=True,
        )
        api.patch(
            Namespace,
            model,
            {
                "metadata": {
                    "labels": {
                        "istio.io/use-waypoint": waypoint,
                        "istio.io/dataplane-mode": "ambient",
                        NAMESPACE_OWNER: charm_label(model, app),
                    }
                }
            },
            patch_type=PatchType.MERGE,
        )
    api.apply(
        ConfigMap.from_dict(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"juju-service-mesh-{app}-labels", "namespace": model},
                "data": {
                    "labels": (
                        '{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": '
                        f'"{waypoint}", "istio.io/use-waypoint-namespace": "{model}"}}'
                    )
                },
            }
        ),
        field_manager=app,
        force=True,
    )
    return seeded


def deployed_objects(client: Client, app: str, model: str) -> list[str]:
    """The deployed beacon's own objects, as ``Kind namespace/name``.

    Those carrying its labels and not the beacon's ownership label: the beacon's objects carry
    the deployed labels too (so that a rollback removes them, see :func:`roll_back`).
    """
    api: Any = client
    found: list[str] = []
    for instance in {f"{app}-{model}", charm_label(model, app, sep="-")}:
        if len(instance) > 63:
            continue
        selector = {INSTANCE: instance}
        for kind in (Gateway, HorizontalPodAutoscaler, AuthorizationPolicy):
            for item in api.list(kind, namespace="*", labels=selector):
                if MANAGED_BY in (item.metadata.labels or {}):
                    continue
                found.append(f"{kind.__name__} {item.metadata.namespace}/{item.metadata.name}")
    return sorted(found)


#: What the deployed charm's reconcile manages, by scope label: the kinds it lists.
SCOPES = {
    "istio-waypoint": (Gateway, HorizontalPodAutoscaler),
    "istio-authorization-policy": (AuthorizationPolicy,),
    "modeloperator-authorization-policy": (AuthorizationPolicy,),
}


def roll_back(
    client: Client, app: str, model: str, *, consumers: list[tuple[str, str]]
) -> list[str]:
    """What the deployed charm's first reconcile does after ``juju refresh`` back to it.

    A model of its resource managers (read from its public source, not copied): for each scope,
    list every object of the scope's kinds that carries ``app.kubernetes.io/instance`` (its
    current spelling) and that scope, in every namespace; delete those it does not want; apply
    the ones it wants (here: :func:`seed_deployed_beacon`'s, for ``consumers``, model on mesh).

    Returns:
        What it deleted, as ``Kind namespace/name``.
    """
    api: Any = client
    wanted = seed_deployed_beacon(client, app, model, consumers=consumers)
    keep = {
        ("Gateway", model, wanted.waypoint),
        ("HorizontalPodAutoscaler", model, wanted.waypoint),
        *(("AuthorizationPolicy", namespace, name) for namespace, name in wanted.policies),
        ("AuthorizationPolicy", model, wanted.model_operator_policy),
    }
    instance = charm_label(model, app, sep="-")
    deleted: list[str] = []
    for scope, kinds in SCOPES.items():
        for kind in kinds:
            selector = {INSTANCE: instance, SCOPE: scope}
            for item in api.list(kind, namespace="*", labels=selector):
                where = (kind.__name__, item.metadata.namespace, item.metadata.name)
                if where in keep:
                    continue
                api.delete(kind, item.metadata.name, namespace=item.metadata.namespace)
                deleted.append(f"{where[0]} {where[1]}/{where[2]}")
    return sorted(deleted)
