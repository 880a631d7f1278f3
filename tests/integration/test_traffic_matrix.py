"""The reference traffic matrix of docs/traffic-matrix.md, with the model off and on the mesh.

receiver1 asks for an app policy on `inbound` and a unit policy on `inbound-unit`; sender1 is
related to `inbound`, sender2 to `inbound-unit`. These three are related to the beacon; sender3 is
related to nothing, not even the beacon, so it is on the mesh only while the whole model is. Every
row of the table is one real request sent by the tester's `probe` action, once the pods that should
be on the mesh are captured by ambient (and sender3's are not, while the model is off the mesh).
Then the beacon's `explain` is asked about every row, and its verdict must be what the probe saw.
"""

from __future__ import annotations

import jubilant
import lightkube
import mesh_cluster
import pytest
from explain_check import assert_predicted, explain_rows
from mesh_deploy import (
    BEACON,
    MESH_MEMBERS,
    REFERENCE_APPS,
    STRANGER,
    Charms,
    Models,
    deploy_reference_scenario,
    model_name,
    reference_matrix,
    set_config,
)
from mesh_probe import assert_traffic, eventually

CAPTURE_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def juju(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio
    juju = models.new("traffic")
    deploy_reference_scenario(juju, charms, model_on_mesh=False)
    return juju


@pytest.mark.parametrize("model_on_mesh", [False, True], ids=["model-off-mesh", "model-on-mesh"])
def test_reference_matrix(
    juju: jubilant.Juju, kube: lightkube.Client, model_on_mesh: bool
) -> None:
    model = model_name(juju)
    set_config(juju, BEACON, {"model-on-mesh": model_on_mesh}, *REFERENCE_APPS)

    def captured_as_expected() -> None:
        for app in MESH_MEMBERS:
            mesh_cluster.assert_captured(kube, model, app)
        mesh_cluster.assert_captured(kube, model, STRANGER, captured=model_on_mesh)

    eventually(
        captured_as_expected,
        timeout=CAPTURE_TIMEOUT,
        what=f"ambient capture (model-on-mesh={model_on_mesh})",
    )
    observed = assert_traffic(
        juju,
        reference_matrix(model, model_on_mesh=model_on_mesh),
        what=f"reference matrix (model-on-mesh={model_on_mesh})",
    )
    assert_predicted(explain_rows(juju, BEACON, observed))
