"""What only a real cluster shows: how Istio and Juju treat what the beacon writes.

- Once an app's Service is bound to the waypoint, its pods refuse direct traffic from anything
  but the waypoint (a bystander with no policy at all: its Service answers, its pod refuses).
- An app policy naming a Service other than `<app>` is refused while Istio would not enforce it,
  and applied, bound (Istio's `WaypointAccepted` condition) and enforced once the Service is bound.
- Juju's model operator stays reachable from another model with the model on the mesh, also under
  istio-k8s's `hardened-mode` and with `auto-allow-waypoint-policy` off.

The request naming a second Service is the receiver's own: its `inbound-extra-service` option makes
it declare its `inbound` app policy on that Service too (the library's `AppPolicy(service=...)`),
so it stays in the databag however often the tester republishes its policies.

The model operator is probed with a TCP connect (the probe's `tcp://` mode): it serves TLS, so an
HTTP probe would say nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import jubilant
import lightkube
import mesh_checks
import mesh_cluster
import pytest
from lightkube.models.core_v1 import ServicePort, ServiceSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType
from mesh_deploy import (
    BEACON,
    DEPLOY_TIMEOUT,
    ISTIO_APP,
    RECEIVER,
    SENDER_APP,
    Charms,
    Models,
    deploy_beacon,
    deploy_tester,
    join_mesh,
    model_name,
    pod_host,
    set_config,
    wait_active,
)
from mesh_probe import (
    ALLOWED,
    CONNECTED,
    FORBIDDEN,
    REFUSED,
    assert_traffic,
    case,
    eventually,
    tcp_case,
)

BYSTANDER = "bystander"
"""On the mesh, no policy at all (peer communication off, nothing related to its endpoints)."""
OUTSIDER = "outsider"
"""A tester in another model, related to nothing."""
SECOND_SERVICE = f"{RECEIVER}-admin"
APPS = (RECEIVER, SENDER_APP, BYSTANDER)
STATUS_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def juju(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio
    # The beacon re-reads Services and Istio's conditions on its next hook: update-status, every
    # minute in the tests' models (mesh_deploy.MODEL_CONFIG).
    juju = models.new("semantics")
    deploy_beacon(juju, charms)
    for app in (RECEIVER, SENDER_APP):
        deploy_tester(juju, charms, app)
    deploy_tester(juju, charms, BYSTANDER, config={"peer-communication": False})
    join_mesh(juju, *APPS)
    juju.integrate(f"{SENDER_APP}:outbound", f"{RECEIVER}:inbound")
    wait_active(juju, BEACON, *APPS, timeout=DEPLOY_TIMEOUT)
    return juju


@pytest.fixture(scope="module")
def outsider(models: Models, juju: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del juju
    other = models.new("semantics-out")
    deploy_tester(other, charms, OUTSIDER)
    wait_active(other, OUTSIDER, timeout=DEPLOY_TIMEOUT)
    return other


def _beacon_message(status: jubilant.Status) -> str:
    app = status.apps[BEACON]
    return " ".join(
        [app.app_status.message, *(u.workload_status.message for u in app.units.values())]
    )


# --- bound Services: the pods refuse direct traffic -------------------------------------------


def test_once_bound_a_pod_refuses_direct_traffic_but_its_service_answers(
    juju: jubilant.Juju, kube: lightkube.Client
) -> None:
    model = model_name(juju)
    eventually(
        lambda: mesh_checks.assert_waypoint_hop(kube, model, BEACON, BYSTANDER),
        timeout=180,
        what="the waypoint's access to the bystander's pods",
    )
    sender = f"{SENDER_APP}/0"
    assert_traffic(
        juju,
        [
            case(sender, f"http://{BYSTANDER}:8080/foo", ALLOWED),
            case(sender, f"http://{pod_host(BYSTANDER, model)}:8080/foo", REFUSED),
        ],
        what="bystander: Service through the waypoint, pod refused",
    )


# --- a policy on a Service other than <app> ---------------------------------------------------


def _create_second_service(kube: lightkube.Client, model: str) -> None:
    selector = {"app.kubernetes.io/name": RECEIVER}
    kube.create(
        Service(
            metadata=ObjectMeta(name=SECOND_SERVICE, namespace=model, labels=selector),
            spec=ServiceSpec(selector=selector, ports=[ServicePort(name="http", port=8080)]),
        )
    )


def _bind_second_service(kube: lightkube.Client, model: str) -> None:
    waypoint = mesh_cluster.waypoint_name(model, BEACON)
    labels = {mesh_cluster.USE_WAYPOINT: waypoint, mesh_cluster.USE_WAYPOINT_NAMESPACE: model}
    kube.patch(
        Service,
        SECOND_SERVICE,
        {"metadata": {"labels": labels}},
        namespace=model,
        patch_type=PatchType.MERGE,
    )


def _bound_policy_for_second_service(kube: lightkube.Client, model: str) -> None:
    policies = [
        p
        for p in mesh_cluster.authorization_policies(kube, model)
        if SECOND_SERVICE in mesh_cluster.policy_targets(p)
    ]
    assert policies, f"no policy targets {SECOND_SERVICE}"
    conditions = [c for p in policies for c in (p.get("status") or {}).get("conditions") or []]
    accepted = [c for c in conditions if c.get("type") == "WaypointAccepted"]
    assert accepted, f"Istio wrote no WaypointAccepted condition: {conditions}"
    assert all(c.get("status") == "True" for c in accepted), accepted


def test_a_policy_on_an_unbound_service_is_refused_then_enforced_once_bound(
    juju: jubilant.Juju, kube: lightkube.Client
) -> None:
    model = model_name(juju)
    _create_second_service(kube, model)
    juju.config(RECEIVER, {"inbound-extra-service": SECOND_SERVICE})

    juju.wait(
        lambda status: f"{SECOND_SERVICE} is not bound to the waypoint" in _beacon_message(status),
        timeout=STATUS_TIMEOUT,
    )
    assert not [
        p
        for p in mesh_cluster.authorization_policies(kube, model)
        if SECOND_SERVICE in mesh_cluster.policy_targets(p)
    ], "a policy Istio would not enforce was applied"

    _bind_second_service(kube, model)
    eventually(
        lambda: _bound_policy_for_second_service(kube, model),
        timeout=STATUS_TIMEOUT,
        what=f"the policy on {SECOND_SERVICE} applied and bound to the waypoint",
    )
    sender = f"{SENDER_APP}/0"
    service = f"http://{SECOND_SERVICE}:8080"
    assert_traffic(
        juju,
        [
            case(sender, f"{service}/foo", ALLOWED),
            case(sender, f"{service}/foo", FORBIDDEN, method="DELETE"),
            case(f"{BYSTANDER}/0", f"{service}/foo", FORBIDDEN),
        ],
        what=f"the policy on {SECOND_SERVICE} enforced",
    )


# --- Juju's model operator --------------------------------------------------------------------


@contextlib.contextmanager
def _istio_config(
    istio: jubilant.Juju, kube: lightkube.Client, values: dict[str, jubilant.ConfigValue]
) -> Iterator[None]:
    """istio-k8s with `values` in force for the duration, then its earlier values back.

    Active is not enough: istio-k8s may report it before istiod runs with the new setting, so
    each change also waits until the cluster shows it (`mesh_cluster.assert_istio_settings`).
    """
    config = istio.config(ISTIO_APP)
    before = {key: config[key] for key in values if key in config}
    namespace = model_name(istio)
    _apply_istio_config(istio, kube, namespace, values, {**config, **values})
    try:
        yield
    finally:
        reset = [key for key in values if key not in before]
        _apply_istio_config(istio, kube, namespace, before, {**config}, reset=reset)


def _apply_istio_config(
    istio: jubilant.Juju,
    kube: lightkube.Client,
    namespace: str,
    values: dict[str, jubilant.ConfigValue],
    expected: Mapping[str, jubilant.ConfigValue],
    *,
    reset: list[str] | None = None,
) -> None:
    if values:
        istio.config(ISTIO_APP, values)
    if reset:
        istio.config(ISTIO_APP, reset=reset)
    wait_active(istio, ISTIO_APP)
    eventually(
        lambda: mesh_cluster.assert_istio_settings(
            kube,
            namespace,
            ISTIO_APP,
            hardened_mode=bool(expected.get("hardened-mode", False)),
            auto_allow_waypoint_policy=bool(expected.get("auto-allow-waypoint-policy", True)),
        ),
        timeout=STATUS_TIMEOUT,
        what=f"istio-k8s settings in force ({dict(values)}, reset {reset or []})",
    )


@pytest.mark.parametrize(
    "istio_config",
    [
        {},
        {"hardened-mode": True},
        {"auto-allow-waypoint-policy": False},
    ],
    ids=["istio-k8s defaults", "hardened-mode", "auto-allow-waypoint-policy off"],
)
def test_the_model_operator_is_reachable_from_another_model_with_the_model_on_the_mesh(
    juju: jubilant.Juju,
    outsider: jubilant.Juju,
    istio: jubilant.Juju,
    kube: lightkube.Client,
    istio_config: dict[str, jubilant.ConfigValue],
) -> None:
    model = model_name(juju)
    set_config(juju, BEACON, {"model-on-mesh": True}, *APPS)
    eventually(
        lambda: mesh_checks.assert_model_operator_off_the_waypoint(kube, model),
        timeout=STATUS_TIMEOUT,
        what="the model operator's policy and Service label",
    )
    name, port = mesh_cluster.model_operator_endpoint(kube, model)
    host = f"{name}.{model}.svc.cluster.local"
    with _istio_config(istio, kube, istio_config):
        assert_traffic(
            outsider,
            [tcp_case(f"{OUTSIDER}/0", host, port, CONNECTED)],
            what=f"model operator reachable ({istio_config or 'istio-k8s defaults'})",
        )
        # Juju itself still drives the model through its model operator.
        juju.config(BYSTANDER, {"peer-communication": True})
        wait_active(juju, BYSTANDER)
        juju.config(BYSTANDER, {"peer-communication": False})
        wait_active(juju, BYSTANDER)
