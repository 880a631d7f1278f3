"""Mesh labels follow the beacon's `model-on-mesh` and the consumer's `auto-join-mesh`.

- model off the mesh, auto-join on: the consumer's pod template and Service carry the labels the
  beacon publishes (and the consumer records them in its labels ConfigMap); the namespace has none;
- model on the mesh: the namespace carries them (with the beacon's ownership label), the consumer
  removes its own (the beacon publishes `{}`);
- auto-join off: the consumer removes the labels it applied, and only those.

Labels only ask for ambient: each step also waits for the consumer's pods to be really captured
(Istio's `ambient.istio.io/redirection: enabled` annotation), or really released.
"""

from __future__ import annotations

import jubilant
import lightkube
import mesh_checks
import mesh_cluster
import pytest
from lightkube.resources.core_v1 import Service
from mesh_deploy import (
    BEACON,
    DEPLOY_TIMEOUT,
    Charms,
    Models,
    deploy_beacon,
    deploy_tester,
    join_mesh,
    model_name,
    set_config,
    wait_active,
)
from mesh_probe import eventually

CONSUMER = "consumer"
FOREIGN_LABEL = ("example.com/owner", "someone-else")
"""A label another owner put on the consumer's Service: the charms must leave it alone."""
LABEL_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def juju(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio
    juju = models.new("labels")
    deploy_beacon(juju, charms, config={"model-on-mesh": False})
    deploy_tester(juju, charms, CONSUMER)
    join_mesh(juju, CONSUMER)
    wait_active(juju, BEACON, CONSUMER, timeout=DEPLOY_TIMEOUT)
    return juju


@pytest.fixture(scope="module")
def foreign_label(juju: jubilant.Juju, kube: lightkube.Client) -> tuple[str, str]:
    key, value = FOREIGN_LABEL
    kube.patch(
        Service,
        CONSUMER,
        {"metadata": {"labels": {key: value}}},
        namespace=model_name(juju),
    )
    return FOREIGN_LABEL


def _assert_consumer_labels(
    kube: lightkube.Client, model: str, expected: dict[str, str], foreign: tuple[str, str]
) -> None:
    mesh_checks.assert_consumer_mesh_labels(kube, model, CONSUMER, expected)
    key, value = foreign
    service = mesh_cluster.service_labels(kube, CONSUMER, model)
    assert service.get(key) == value, f"the label {key} set by another owner was touched"


def _converge(
    kube: lightkube.Client,
    model: str,
    consumer: dict[str, str],
    namespace: dict[str, str],
    foreign: tuple[str, str],
    what: str,
    *,
    captured: bool = True,
) -> None:
    def check() -> None:
        _assert_consumer_labels(kube, model, consumer, foreign)
        mesh_checks.assert_namespace_mesh_labels(kube, model, namespace)
        mesh_cluster.assert_captured(kube, model, CONSUMER, captured=captured)

    eventually(check, timeout=LABEL_TIMEOUT, what=what)


def test_consumer_labelled_when_model_off_mesh(
    juju: jubilant.Juju, kube: lightkube.Client, foreign_label: tuple[str, str]
) -> None:
    model = model_name(juju)
    set_config(juju, BEACON, {"model-on-mesh": False}, CONSUMER)
    set_config(juju, CONSUMER, {"auto-join-mesh": True})
    expected = mesh_cluster.expected_consumer_labels(model, BEACON)
    _converge(kube, model, expected, {}, foreign_label, "consumer labelled, namespace not")
    assert mesh_cluster.labels_configmap(kube, CONSUMER, model) == expected


def test_model_on_mesh_moves_labels_to_namespace(
    juju: jubilant.Juju, kube: lightkube.Client, foreign_label: tuple[str, str]
) -> None:
    model = model_name(juju)
    set_config(juju, BEACON, {"model-on-mesh": True}, CONSUMER)
    expected = mesh_cluster.expected_namespace_labels(model, BEACON)
    _converge(kube, model, {}, expected, foreign_label, "namespace labelled, consumer not")


def test_model_off_mesh_again_restores_consumer_labels(
    juju: jubilant.Juju, kube: lightkube.Client, foreign_label: tuple[str, str]
) -> None:
    model = model_name(juju)
    set_config(juju, BEACON, {"model-on-mesh": False}, CONSUMER)
    expected = mesh_cluster.expected_consumer_labels(model, BEACON)
    _converge(kube, model, expected, {}, foreign_label, "namespace unlabelled, consumer again")


def test_auto_join_off_removes_consumer_labels(
    juju: jubilant.Juju, kube: lightkube.Client, foreign_label: tuple[str, str]
) -> None:
    model = model_name(juju)
    set_config(juju, BEACON, {"model-on-mesh": False}, CONSUMER)
    set_config(juju, CONSUMER, {"auto-join-mesh": False})
    _converge(kube, model, {}, {}, foreign_label, "consumer left the mesh", captured=False)

    set_config(juju, CONSUMER, {"auto-join-mesh": True})
    expected = mesh_cluster.expected_consumer_labels(model, BEACON)
    _converge(kube, model, expected, {}, foreign_label, "consumer rejoined the mesh")
