"""A consumer that lies about its target does not get its request applied.

`liar` is a tester with `debug-impersonate-app=receiver1`: it publishes its policies with receiver1
as the target, which would let `accomplice` (related to liar's `inbound`) reach receiver1. The
beacon must refuse liar's request, name liar in its status, and keep applying everyone else's.
Every app here is related to the beacon, so on the mesh (the model itself is not).
"""

from __future__ import annotations

import jubilant
import lightkube
import mesh_checks
import mesh_cluster
import pytest
from mesh_deploy import (
    BEACON,
    DEPLOY_TIMEOUT,
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
from mesh_probe import ALLOWED, FORBIDDEN, REFUSED, assert_traffic, case, eventually

LIAR = "liar"
ACCOMPLICE = "accomplice"
"""Related to liar's `inbound`: the app the lie would let into receiver1."""
APPS = (RECEIVER, SENDER_APP, ACCOMPLICE, LIAR)
STATUS_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def juju(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio
    juju = models.new("liar")
    deploy_beacon(juju, charms)
    for app in (RECEIVER, SENDER_APP, ACCOMPLICE):
        deploy_tester(juju, charms, app)
    deploy_tester(juju, charms, LIAR, config={"debug-impersonate-app": RECEIVER})
    join_mesh(juju, *APPS)
    juju.integrate(f"{SENDER_APP}:outbound", f"{RECEIVER}:inbound")
    juju.integrate(f"{ACCOMPLICE}:outbound", f"{LIAR}:inbound")
    wait_active(juju, *APPS, timeout=DEPLOY_TIMEOUT)
    return juju


def _beacon_message(status: jubilant.Status) -> str:
    app = status.apps[BEACON]
    unit_messages = [unit.workload_status.message for unit in app.units.values()]
    return " ".join([app.app_status.message, *unit_messages])


def test_beacon_status_names_the_liar(juju: jubilant.Juju) -> None:
    status = juju.wait(
        lambda status: BEACON in status.apps and LIAR in _beacon_message(status),
        timeout=STATUS_TIMEOUT,
    )
    assert LIAR in _beacon_message(status)


def test_lie_not_applied(juju: jubilant.Juju, kube: lightkube.Client) -> None:
    model = model_name(juju)
    accomplice = mesh_cluster.principal(model, ACCOMPLICE)

    def receiver_policies_exclude_the_accomplice() -> None:
        mesh_checks.assert_policies_for_target(
            kube,
            model,
            BEACON,
            RECEIVER,
            allowed=[mesh_cluster.principal(model, SENDER_APP)],
            refused=[accomplice],
        )

    eventually(receiver_policies_exclude_the_accomplice, timeout=180, what="receiver policies")
    every_policy = mesh_cluster.authorization_policies(kube, model)
    leaked = [
        p
        for p in every_policy
        if accomplice in mesh_cluster.policy_principals(p)
        or mesh_cluster.labels_of(p).get(mesh_cluster.REQUESTED_BY) == LIAR
    ]
    assert leaked == [], [mesh_cluster.policy_summary(p) for p in leaked]


def test_everyone_else_unaffected(juju: jubilant.Juju) -> None:
    model = model_name(juju)
    service = f"http://{RECEIVER}"
    pod = f"http://{pod_host(RECEIVER, model)}"
    assert_traffic(
        juju,
        [
            case(f"{SENDER_APP}/0", f"{service}:8080/foo", ALLOWED),
            case(f"{SENDER_APP}/0", f"{service}:8080/foo", FORBIDDEN, method="DELETE"),
            # On the mesh but not allowed: 403 at the waypoint, refused at the pod.
            case(f"{ACCOMPLICE}/0", f"{service}:8080/foo", FORBIDDEN),
            case(f"{ACCOMPLICE}/0", f"{pod}:8080/foo", REFUSED),
        ],
        what="traffic with a lying consumer around",
    )


def test_honest_again_is_applied(juju: jubilant.Juju, kube: lightkube.Client) -> None:
    model = model_name(juju)
    set_config(juju, LIAR, {"debug-impersonate-app": ""}, BEACON)
    juju.wait(lambda status: LIAR not in _beacon_message(status), timeout=STATUS_TIMEOUT)
    wait_active(juju, BEACON)

    def liar_policies_applied() -> None:
        mesh_checks.assert_policies_for_target(
            kube, model, BEACON, LIAR, allowed=[mesh_cluster.principal(model, ACCOMPLICE)]
        )

    eventually(liar_policies_applied, timeout=180, what="liar's honest policies")
    # liar's own request now applies: accomplice may reach liar, sender1 may not.
    assert_traffic(
        juju,
        [
            case(f"{ACCOMPLICE}/0", f"http://{LIAR}:8080/foo", ALLOWED),
            case(f"{SENDER_APP}/0", f"http://{LIAR}:8080/foo", FORBIDDEN),
            case(f"{ACCOMPLICE}/0", f"http://{RECEIVER}:8080/foo", FORBIDDEN),
        ],
        what="liar's honest request applied",
    )
