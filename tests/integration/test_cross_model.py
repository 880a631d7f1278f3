"""Across models: a sender reaches a receiver in another model on the allowed paths only.

The two are related through an offer and the `cross_model_mesh` relation.

Each model has its own beacon (so each side's pods are on the mesh). The receiver offers `inbound`
and `provide-cmr-mesh`; the sender consumes the offer and relates `outbound` and `require-cmr-mesh`
to it, announcing its real name and model so the receiver's policy names the right principal.
The receiver's beacon is asked to `explain` every probed row (`source=sender/<sending model>`).
"""

from __future__ import annotations

import jubilant
import lightkube
import mesh_checks
import mesh_cluster
import pytest
from explain_check import assert_predicted, explain_rows
from mesh_deploy import (
    BEACON,
    DEPLOY_TIMEOUT,
    Charms,
    Models,
    cross_model_matrix,
    deploy_beacon,
    deploy_tester,
    join_mesh,
    model_name,
    wait_active,
)
from mesh_probe import assert_traffic, eventually

RECEIVER = "receiver"
SENDER = "sender"
OFFER = "receiver-offer"


@pytest.fixture(scope="module")
def receiving(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio
    juju = models.new("cmr-rx")
    deploy_beacon(juju, charms)
    deploy_tester(juju, charms, RECEIVER)
    join_mesh(juju, RECEIVER)
    wait_active(juju, BEACON, RECEIVER, timeout=DEPLOY_TIMEOUT)
    juju.offer(RECEIVER, endpoint=["inbound", "provide-cmr-mesh"], name=OFFER)
    return juju


@pytest.fixture(scope="module")
def sending(models: Models, receiving: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    juju = models.new("cmr-tx")
    deploy_beacon(juju, charms)
    deploy_tester(juju, charms, SENDER)
    join_mesh(juju, SENDER)
    juju.consume(f"{model_name(receiving)}.{OFFER}")
    juju.integrate(f"{SENDER}:outbound", f"{OFFER}:inbound")
    juju.integrate(f"{SENDER}:require-cmr-mesh", f"{OFFER}:provide-cmr-mesh")
    wait_active(juju, BEACON, SENDER, timeout=DEPLOY_TIMEOUT)
    wait_active(receiving, BEACON, RECEIVER)
    return juju


def test_receiver_policy_names_the_remote_sender(
    sending: jubilant.Juju, receiving: jubilant.Juju, kube: lightkube.Client
) -> None:
    receiver_model = model_name(receiving)
    expected = mesh_cluster.principal(model_name(sending), SENDER)

    def check() -> None:
        mesh_checks.assert_policies_for_target(
            kube, receiver_model, BEACON, RECEIVER, allowed=[expected]
        )

    eventually(check, timeout=180, what="receiver policy allows the remote sender")


def test_allowed_paths_and_nothing_else(sending: jubilant.Juju, receiving: jubilant.Juju) -> None:
    service = f"http://{RECEIVER}.{model_name(receiving)}.svc.cluster.local"
    observed = assert_traffic(
        sending, cross_model_matrix(f"{SENDER}/0", service), what="cross-model traffic"
    )
    predicted = explain_rows(receiving, BEACON, observed, source_model=model_name(sending))
    assert_predicted(predicted)
