"""The reference traffic matrix of istio-ambient.md, with the model off and on the mesh.

receiver1 asks for an app policy on `inbound` and a unit policy on `inbound-unit`; sender1 is
related to `inbound`, sender2 to `inbound-unit`, sender3 to nothing. Every row of the table is one
real request sent by the tester's `probe` action.
"""

from __future__ import annotations

import jubilant
import pytest
from mesh_deploy import (
    BEACON,
    REFERENCE_APPS,
    Charms,
    Models,
    deploy_reference_scenario,
    model_name,
    reference_matrix,
    set_config,
)
from mesh_probe import assert_traffic


@pytest.fixture(scope="module")
def juju(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio
    juju = models.new("traffic")
    deploy_reference_scenario(juju, charms, model_on_mesh=False)
    return juju


@pytest.mark.parametrize("model_on_mesh", [False, True], ids=["model-off-mesh", "model-on-mesh"])
def test_reference_matrix(juju: jubilant.Juju, model_on_mesh: bool) -> None:
    set_config(juju, BEACON, {"model-on-mesh": model_on_mesh}, *REFERENCE_APPS)
    assert_traffic(
        juju,
        reference_matrix(model_name(juju), model_on_mesh=model_on_mesh),
        what=f"reference matrix (model-on-mesh={model_on_mesh})",
    )
