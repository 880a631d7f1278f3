"""The local demo is a test: the observed table must be the expected one (docs/demo.md).

It runs the whole demo (``demo.run``): the packed charms through their ``dispatch`` on a real API
server, Istio's waypoint RBAC built from the beacon's policies, real Envoy in front of the
receiver's real servers, each sender's ``probe`` through Envoy with its own identity. A missing
part (packed charm, API server, istio-check, Envoy, root) fails it; nothing is skipped.

The same run holds the integration tier (tests/integration) to what our charms really do: its
cluster assertions (``mesh_checks``) run against the objects the packed charms left on the API
server, and its expected rows (``mesh_deploy.reference_matrix``, ``cross_model_matrix``) against
the table the demo observed. An integration test that expects what the charms do not produce
fails here first, without a Juju cluster.
"""

from __future__ import annotations

import sys

import demo
import mesh_checks
import mesh_cluster
from mesh_deploy import cross_model_matrix, reference_matrix
from mesh_probe import Case, ProbeResult
from mesh_steps import BEACON
from support.juju_unit_agent import JujuModel


def test_the_demo_observes_the_expected_table():
    inspected: list[str] = []

    def inspect(model: JujuModel, other: JujuModel) -> None:
        assert_integration_checks_hold(model, other)
        inspected.append(model.name)

    # Not pytest's tmp_path: a Pebble socket path inside it would pass AF_UNIX's 108 bytes.
    with demo.demo_folder() as workdir:
        result = demo.run(workdir, lambda message: print(message, file=sys.stderr), inspect)
    demo.render(result, sys.stdout)
    table = [(o.row.sender, o.row.method, o.row.url, o.observed) for o in result.rows]
    expected = [(r.sender, r.method, r.url, r.expected) for r in demo.EXPECTED]
    assert table == expected
    assert demo.mismatched(result) == []
    # The beacon's own view agrees and says why the denied row is denied.
    assert result.explanation["verdict"] == "deny"
    assert "receiver1-app-from-sender1" in result.access_map
    assert "receiver1-app-from-sender4-demo-other" in result.access_map
    assert inspected == [demo.MODEL]
    assert_integration_rows_match(result)


def assert_integration_checks_hold(model: JujuModel, other: JujuModel) -> None:
    """The integration tier's cluster assertions, on what the packed charms wrote (model on mesh).

    ``demo`` runs the reference scenario with ``model-on-mesh=true``: the beacon's waypoint
    (Gateway, HPA), receiver1's policies (sender1's app policy, sender2's unit policy, sender4's
    across models, never sender3), the waypoint's hop to each related app, the namespace carrying
    the mesh labels and the testers none, and Juju's model operator off the waypoint.
    """
    kube = model.admin
    name, remote = model.name, other.name
    mesh_checks.assert_waypoint_gateway(kube, name, BEACON)
    mesh_checks.assert_waypoint_autoscaler(kube, name, BEACON, replicas=1)
    mesh_checks.assert_policies_for_target(
        kube,
        name,
        BEACON,
        demo.RECEIVER,
        allowed=[
            mesh_cluster.principal(name, "sender1"),
            mesh_cluster.principal(name, "sender2"),
            mesh_cluster.principal(remote, demo.REMOTE_SENDER),
        ],
        refused=[mesh_cluster.principal(name, "sender3")],
    )
    for app in (demo.RECEIVER, "sender1", "sender2"):
        mesh_checks.assert_waypoint_hop(kube, name, BEACON, app)
    mesh_checks.assert_namespace_mesh_labels(
        kube, name, mesh_cluster.expected_namespace_labels(name, BEACON)
    )
    for app in (demo.RECEIVER, *demo.SENDERS):
        mesh_checks.assert_consumer_mesh_labels(kube, name, app, {})
    mesh_checks.assert_model_operator_off_the_waypoint(kube, name)
    # The sender's model, with its own beacon.
    mesh_checks.assert_waypoint_gateway(kube, remote, BEACON)
    mesh_checks.assert_namespace_mesh_labels(
        kube, remote, mesh_cluster.expected_namespace_labels(remote, BEACON)
    )
    mesh_checks.assert_consumer_mesh_labels(kube, remote, demo.REMOTE_SENDER, {})
    mesh_checks.assert_model_operator_off_the_waypoint(kube, remote)


def probe_result(observed: demo.Observed) -> ProbeResult:
    """The demo's observed value as the integration tier's probe result."""
    status = int(observed.observed) if observed.observed.isdigit() else None
    return ProbeResult(
        url=observed.row.url,
        method=observed.row.method,
        outcome="response" if status is not None else observed.observed,
        status=status,
        error=None,
        elapsed=None,
    )


def assert_integration_rows_match(result: demo.DemoResult) -> None:
    """Each observed row is a row the integration tests expect, and each expectation holds.

    The demo's rows from model ``demo`` must cover the Service rows of the reference matrix
    with the model on the mesh (its pod rows need ztunnel, which the demo does not run); sender4's
    are among the cross-model test's rows.
    """
    service = f"http://{demo.RECEIVER}.{demo.MODEL}.svc.cluster.local"
    expected: dict[tuple[str, str | None, str], Case] = {}
    reference = reference_matrix(demo.MODEL, model_on_mesh=True)
    remote = cross_model_matrix(f"{demo.REMOTE_SENDER}/0", service)
    for item in [*reference, *remote]:
        expected[(item.source, item.request.method, item.request.url)] = item
    service_rows = {key for key in expected if key[2].startswith(f"http://{demo.RECEIVER}:")}
    seen: set[tuple[str, str | None, str]] = set()
    mismatches: list[str] = []
    for observed in result.rows:
        key = (f"{observed.row.sender}/0", observed.row.method, observed.row.url)
        item = expected.get(key)
        assert item is not None, f"the integration tests expect nothing for {key}"
        seen.add(key)
        if not item.expected.matches(probe_result(observed)):
            mismatches.append(f"{key}: expected {item.expected.label}, saw {observed.observed}")
    assert not mismatches, mismatches
    assert service_rows <= seen, f"rows not observed: {sorted(service_rows - seen)}"
