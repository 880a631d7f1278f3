"""The engine predicts the reference traffic matrix (docs/traffic-matrix.md), row by row.

The integration tests assert that matrix on a real cluster; here the engine, given the reference
scenario's objects as the beacon and the library make them, must predict every row: 200 as allow,
403 as a denial at the waypoint, "refused" as a denial by ztunnel in front of the pods.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from access.evaluation import decide
from access.model import Decision, Level, Model, Point, Request, Workload, principal
from access.parsing import parse_policy
from charms.istio_beacon_k8s.v0.service_mesh import (
    Endpoint,
    MeshPolicy,
    Method,
    PolicyTargetType,
    build_authorization_policy,
)
from kube_names import MANAGED_BY, RELATION_ID, REQUESTED_BY
from policies import waypoint_allow_policy

DOC = Path(__file__).resolve().parents[3] / "docs" / "traffic-matrix.md"
MODEL = "m"
BEACON = "istio-beacon-k8s"
WAYPOINT = f"{MODEL}-{BEACON}-waypoint"
OWNER = f"{MODEL}.{BEACON}"
MESH = {
    "istio.io/dataplane-mode": "ambient",
    "istio.io/use-waypoint": WAYPOINT,
    "istio.io/use-waypoint-namespace": MODEL,
}
RELATED = ("receiver1", "sender1", "sender2")  # related to the beacon; sender3 is not


def reference_model(model_on_mesh: bool) -> Model:
    """The scenario of docs/traffic-matrix.md, with the objects the beacon and library make."""
    requests = [
        MeshPolicy(
            MODEL, "sender1", MODEL, "receiver1",
            endpoints=[Endpoint(ports=[8080, 8081], methods=[Method.get, Method.post],
                                paths=["/foo", "/bar/"])],
        ),
        MeshPolicy(
            MODEL, "sender2", MODEL, "receiver1", target_type=PolicyTargetType.unit,
            endpoints=[Endpoint(ports=[8080, 8081])],
        ),
    ]  # fmt: skip
    manifests = [
        build_authorization_policy(
            policy,
            labels={MANAGED_BY: OWNER, REQUESTED_BY: "receiver1"},
            annotations={REQUESTED_BY: "receiver1", RELATION_ID: "1"},
        )
        for policy in requests
    ]
    for app in RELATED:
        manifest = waypoint_allow_policy(app, MODEL, principal(MODEL, WAYPOINT))
        manifest["metadata"]["labels"] = {MANAGED_BY: OWNER}
        manifests.append(manifest)
    workloads = []
    for app in (*RELATED, "sender3"):
        own = {"app.kubernetes.io/name": app}
        # Consumers label themselves unless the whole namespace is on the mesh.
        labels = {**own, **MESH} if app in RELATED and not model_on_mesh else own
        workloads.append(Workload(app, labels, app, labels))
    return Model(
        namespace=MODEL,
        namespace_labels=MESH if model_on_mesh else {},
        workloads=tuple(workloads),
        waypoint=WAYPOINT,
        waypoint_ready=True,
        policies=tuple(parse_policy(m, OWNER) for m in manifests),
    )


_SEGMENT = re.compile(
    r"^(?P<methods>[A-Z]+(?: and [A-Z]+)*)(?: the (?P<where>Service|pod))? (?P<targets>`.*)$"
)


def matrix_rows() -> list[tuple[str, str, str, int, str, bool, str]]:
    """(sender, method, where, port, path, model on mesh, expected) of each request in the doc."""
    section = DOC.read_text().split("## The matrix", 1)[1].split("\n## ", 1)[0]
    rows: list[tuple[str, str, str, int, str, bool, str]] = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("sender"):
            continue
        sender, request, off, on = cells
        where = ""
        for segment in request.split(";"):
            found = _SEGMENT.match(segment.strip())
            assert found, f"cannot read {segment!r} in docs/traffic-matrix.md"
            where = found["where"] or where
            for target in re.findall(r"`:(\d+)(/[^`]*)`", found["targets"]):
                for method in found["methods"].split(" and "):
                    for mode, expected in ((False, off), (True, on)):
                        rows.append((sender, method, where, int(target[0]), target[1], mode,
                                     expected))  # fmt: skip
    return rows


ROWS = matrix_rows()


def test_the_doc_has_every_row():
    assert len(ROWS) == 2 * 13  # 13 requests, model off and on the mesh


@pytest.mark.parametrize(
    ("sender", "method", "where", "port", "path", "model_on_mesh", "expected"),
    ROWS,
    ids=[f"{r[0]}-{r[1]}-{r[2]}-{r[3]}{r[4]}-{'on' if r[5] else 'off'}" for r in ROWS],
)
def test_the_engine_predicts_the_row(
    sender: str, method: str, where: str, port: int, path: str, model_on_mesh: bool, expected: str
):
    model = reference_model(model_on_mesh)
    workload = model.workload(sender)
    assert workload is not None
    on_the_mesh = "istio.io/dataplane-mode" in {**model.namespace_labels, **workload.pod_labels}
    request = Request(
        principal(MODEL, sender) if on_the_mesh else None,
        "receiver1",
        port,
        method,
        path,
        "receiver1",
        Level.app if where == "Service" else Level.unit,
    )
    verdict = decide(model, request)
    if expected == "200":
        assert verdict.decision is Decision.allow, verdict
        if request.level is Level.app and request.source_principal is not None:
            # The pods see only the waypoint: the headline is the app policy the relation made.
            assert verdict.deciding_step is verdict.steps[0], verdict
            assert verdict.policy is not None
            assert verdict.policy.name == app_policy_name(model, sender)
            assert verdict.steps[-1].point is Point.ztunnel
            assert verdict.steps[-1].decision is Decision.allow
    else:
        assert verdict.decision is Decision.deny, verdict
        point = Point.waypoint if expected == "403" else Point.ztunnel
        assert verdict.steps[-1].point is point, verdict
        assert verdict.deciding_step is verdict.steps[-1], verdict


def app_policy_name(model: Model, sender: str) -> str:
    """The name of the app policy the beacon made for ``sender``'s relation."""
    caller = principal(MODEL, sender)
    (policy,) = [
        p
        for p in model.policies
        if p.target_refs
        and p.provenance
        and any(caller in s.principals for rule in p.rules for s in rule.sources)
    ]
    return policy.name


@pytest.mark.parametrize("model_on_mesh", [False, True])
def test_an_allow_through_the_service_names_the_relations_app_policy(model_on_mesh: bool):
    model = reference_model(model_on_mesh)
    request = Request(principal(MODEL, "sender1"), "receiver1", 8080, "GET", "/foo", "receiver1")
    verdict = decide(model, request)
    assert verdict.decision is Decision.allow
    assert verdict.policy is not None
    assert verdict.policy.name == app_policy_name(model, "sender1")
    assert verdict.policy.name.startswith("receiver1-app-from-sender1")
    assert verdict.reason == (
        f"AuthorizationPolicy {verdict.policy.name} (asked for by receiver1 over relation 1, "
        "service-mesh) allows it"
    )
    # The waypoint-to-pod hop stays in the chain, as the step that lets the waypoint through.
    assert [s.point for s in verdict.steps] == [Point.waypoint, Point.ztunnel]
    pods = verdict.steps[-1]
    assert pods.decision is Decision.allow
    assert pods.policy is not None
    assert pods.policy.name != verdict.policy.name
