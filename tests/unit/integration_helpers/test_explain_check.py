"""The explain-versus-probe comparison of the integration tests, proven here on real answers.

The integration tests cannot run here, so their comparison is proven on the reference scenario of
docs/traffic-matrix.md: the beacon charm runs through ops.testing against the fake Kubernetes API
(`tests/support/fake_kube.py`), its reconcile writes the AuthorizationPolicies, and its `explain`
action answers the very questions `explain_check.question` derives from `reference_matrix()`. Each
answer is compared with the outcome the matrix expects there (what the probe sees on a cluster).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from charm import IstioBeaconCharm
from explain_check import (
    ALLOW,
    DENY,
    Comparison,
    Question,
    assert_predicted,
    compare,
    observed_verdict,
    question,
)
from lightkube import codecs
from mesh_deploy import (
    BEACON,
    MESH_MEMBERS,
    RECEIVER,
    REFERENCE_APPS,
    SENDER_APP,
    SENDER_UNIT,
    reference_matrix,
)
from mesh_probe import ALLOWED, CONNECTED, FORBIDDEN, REFUSED, Case, Expected, ProbeResult, case
from mesh_probe import tcp_case as tcp
from ops import testing
from support import istiod_standin, juju_seed
from support.fake_kube import FakeKubeServer
from waypoint import build_gateway, waypoint_name

MODEL = "traffic"
WAYPOINT = waypoint_name(MODEL, BEACON)
MESH_LABELS = {
    "istio.io/dataplane-mode": "ambient",
    "istio.io/use-waypoint": WAYPOINT,
    "istio.io/use-waypoint-namespace": MODEL,
}


def probe_result(item: Case, outcome: str, status: int | None = None) -> ProbeResult:
    """A result as the tester's `probe` action reports it."""
    return ProbeResult.from_dict(
        {"url": item.request.url, "method": item.request.method, "outcome": outcome,
         "status": status, "error": None, "elapsed": 0.01}
    )  # fmt: skip


def seen(item: Case) -> ProbeResult:
    """What the probe sees on a cluster that behaves as the row expects."""
    expected = item.expected
    if expected == ALLOWED:
        return probe_result(item, "response", 200)
    if expected == FORBIDDEN:
        return probe_result(item, "response", 403)
    if expected == REFUSED:
        return probe_result(item, "refused")
    raise AssertionError(f"no reference row expects {expected.label}")


# -- the questions -------------------------------------------------------------------------------


def test_a_request_to_the_service_is_an_app_level_question_with_its_method_and_path():
    row = case("sender1/0", "http://receiver1:8081/bar/", FORBIDDEN, method="DELETE")
    assert question(row) == Question("sender1", "receiver1", 8081, "app", "DELETE", "/bar/")
    fqdn = case("sender/0", "http://receiver.rx-1.svc.cluster.local:8080/foo", ALLOWED)
    assert question(fqdn, source_model="tx-1") == Question(
        "sender/tx-1", "receiver", 8080, "app", "GET", "/foo"
    )


def test_a_request_to_a_pod_address_is_a_unit_level_question():
    row = case(
        "sender2/0", "http://receiver1-3.receiver1-endpoints.m.svc.cluster.local:8083/", REFUSED
    )
    assert question(row) == Question("sender2", "receiver1", 8083, "unit", "GET", "/")
    # The app's name may itself end in -<digits>; the headless Service name must repeat it.
    odd = case("a/0", "http://db-2-0.db-2-endpoints.m.svc.cluster.local:5432/x", ALLOWED)
    assert question(odd).target == "db-2"
    assert question(odd).level == "unit"
    not_a_pod = case("a/0", "http://db-0.other-endpoints.m:5432/x", ALLOWED)
    assert question(not_a_pod).level == "app"


def test_a_tcp_connect_asks_without_method_or_path():
    row = tcp("sender1/0", "receiver1-0.receiver1-endpoints.m.svc.cluster.local", 8080, CONNECTED)
    assert question(row).params() == {
        "source": "sender1", "target": "receiver1", "port": 8080, "level": "unit"
    }  # fmt: skip


def test_a_url_without_a_port_cannot_be_asked():
    with pytest.raises(ValueError, match="no explicit port"):
        question(case("sender1/0", "http://receiver1/foo", ALLOWED))


# -- what the probe saw --------------------------------------------------------------------------

ROW = case("sender1/0", "http://receiver1:8080/foo", ALLOWED)


@pytest.mark.parametrize(
    ("outcome", "status", "verdict"),
    [
        ("response", 200, ALLOW),
        ("response", 403, DENY),
        ("refused", None, DENY),
        ("reset", None, DENY),
        ("connected", None, ALLOW),
    ],
)
def test_observed_verdict(outcome: str, status: int | None, verdict: str):
    assert observed_verdict(probe_result(ROW, outcome, status)) == verdict


@pytest.mark.parametrize(
    ("outcome", "status"),
    [("response", 500), ("response", 404), ("timeout", None), ("unresolved", None),
     ("error", None)],
)  # fmt: skip
def test_an_outcome_that_decides_nothing_fails_the_row(outcome: str, status: int | None):
    result = probe_result(ROW, outcome, status)
    with pytest.raises(ValueError, match="neither allow nor deny"):
        observed_verdict(result)
    comparison = compare(ROW, result, {"verdict": "allow", "reason": "r"})
    assert (
        comparison.mismatch()
        == f"the probe saw {result.describe()}, which is neither allow nor deny"
    )
    with pytest.raises(AssertionError, match="neither allow nor deny"):
        assert_predicted([comparison])


def test_nothing_to_compare_fails():
    with pytest.raises(AssertionError, match="no probed rows"):
        assert_predicted([])


def test_a_results_mapping_without_a_verdict_fails():
    comparison = compare(ROW, probe_result(ROW, "response", 200), {"reason": "?"})
    assert "no verdict" in (comparison.mismatch() or "")


# -- real answers of the beacon's explain ---------------------------------------------------------


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeServer]:
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(FakeKubeServer())
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig_path))
        yield server


def seed_reference_scenario(kube: FakeKubeServer, *, model_on_mesh: bool) -> None:
    """What Juju, the library and Istio make for the reference scenario (docs/traffic-matrix.md).

    The related apps carry the mesh labels the library puts on them unless the whole model is on
    the mesh (then the beacon labels the namespace); sender3 is related to nothing.
    """
    client = kube.client()
    juju_seed.seed_app(client, BEACON, MODEL)
    for app in REFERENCE_APPS:
        labels = MESH_LABELS if app in MESH_MEMBERS and not model_on_mesh else {}
        client.create(
            codecs.from_dict(juju_seed.statefulset_manifest(app, MODEL, **labels)),
            field_manager=juju_seed.JUJU_FIELD_MANAGER,
        )
        juju_seed.seed_service(client, app, MODEL, {**juju_seed.app_labels(app), **labels})


def istio_runs_waypoint(kube: FakeKubeServer) -> None:
    """What istiod does with the beacon's Gateway: programs it, addresses it, runs its pod."""
    gateway = kube.get("gateways", MODEL, WAYPOINT) or build_gateway(WAYPOINT, MODEL, {})
    stored = kube.put(gateway, field_manager="pilot-discovery")
    stored["status"] = {
        "conditions": [
            {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "",
             "observedGeneration": stored["metadata"].get("generation", 1),
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ],
        "addresses": [{"type": "IPAddress", "value": "10.152.183.7"}],
    }  # fmt: skip
    kube.put(stored, field_manager="pilot-discovery")
    kube.put(istiod_standin.waypoint_deployment(WAYPOINT, MODEL))


def wire_policy(source: str, target_type: str, endpoint: dict[str, Any]) -> dict[str, Any]:
    """receiver1's request for `source`, as the library writes it into the relation."""
    return {
        "source_namespace": MODEL, "source_app_name": source,
        "target_namespace": MODEL, "target_app_name": RECEIVER,
        "target_selector_labels": None, "target_service": None,
        "target_type": target_type, "endpoints": [endpoint],
    }  # fmt: skip


def reference_state(*, model_on_mesh: bool) -> testing.State:
    """The beacon's state: related to the three mesh members; receiver1 asks for both policies."""
    app_endpoint = {"hosts": None, "ports": [8080, 8081], "methods": ["GET", "POST"],
                    "paths": ["/foo", "/bar/"]}  # fmt: skip
    unit_endpoint = {"hosts": None, "ports": [8080, 8081], "methods": None, "paths": None}
    policies = [
        wire_policy(SENDER_APP, "app", app_endpoint),
        wire_policy(SENDER_UNIT, "unit", unit_endpoint),
    ]
    relations = [
        testing.Relation(
            "service-mesh",
            remote_app_name=app,
            remote_app_data={"policies": json.dumps(policies if app == RECEIVER else [])},
        )
        for app in MESH_MEMBERS
    ]
    return testing.State(
        leader=True,
        model=testing.Model(name=MODEL),
        relations=relations,
        config={"model-on-mesh": model_on_mesh},
        containers=[testing.Container("metrics-proxy", can_connect=False)],
    )


def explain_reference(kube: FakeKubeServer, model_on_mesh: bool, questions: list[Question]):
    """Reconcile the reference scenario, then run `explain` once per question; its results."""
    seed_reference_scenario(kube, model_on_mesh=model_on_mesh)
    ctx = testing.Context(IstioBeaconCharm, app_name=BEACON)
    state = ctx.run(ctx.on.update_status(), reference_state(model_on_mesh=model_on_mesh))
    istio_runs_waypoint(kube)
    state = ctx.run(ctx.on.update_status(), state)
    answers: list[dict[str, Any]] = []
    for asked in questions:
        ctx.run(ctx.on.action("explain", params=asked.params()), state)
        assert ctx.action_results is not None
        answers.append(dict(ctx.action_results))
    return answers


@pytest.mark.parametrize("model_on_mesh", [False, True], ids=["model-off-mesh", "model-on-mesh"])
def test_explain_predicts_every_row_of_the_reference_matrix(
    kube: FakeKubeServer, model_on_mesh: bool
):
    rows = reference_matrix(MODEL, model_on_mesh=model_on_mesh)
    answers = explain_reference(kube, model_on_mesh, [question(row) for row in rows])
    comparisons = [
        compare(row, seen(row), answer) for row, answer in zip(rows, answers, strict=True)
    ]
    assert_predicted(comparisons)
    # Both verdicts occur, at both levels: the comparison is not one answer repeated.
    assert {(c.question.level, c.verdict) for c in comparisons} == {
        ("app", ALLOW), ("app", DENY), ("unit", ALLOW), ("unit", DENY)
    }  # fmt: skip


def _flipped(item: Case) -> Expected:
    return REFUSED if item.expected == ALLOWED else ALLOWED


def test_a_cluster_that_differs_from_the_prediction_fails_on_every_differing_row(
    kube: FakeKubeServer,
):
    rows = reference_matrix(MODEL, model_on_mesh=True)
    answers = explain_reference(kube, True, [question(row) for row in rows])
    # The cluster does the opposite of the matrix on sender2's rows (say, a policy not applied).
    observed = [
        seen(case(row.source, row.request.url, _flipped(row), method=row.request.method or "GET"))
        if row.source.startswith(SENDER_UNIT)
        else seen(row)
        for row in rows
    ]
    comparisons = [compare(r, o, a) for r, o, a in zip(rows, observed, answers, strict=True)]
    wrong = [c for c in comparisons if c.mismatch()]
    assert [c.case for c in wrong] == [row for row in rows if row.source.startswith(SENDER_UNIT)]
    with pytest.raises(AssertionError) as failure:
        assert_predicted(comparisons)
    message = str(failure.value)
    assert message.count("!!") == len(wrong)
    assert "explain predicts deny" in message
    assert "the probe saw allow" in message


def test_an_explain_that_cannot_decide_fails_with_its_reason(kube: FakeKubeServer):
    # A TCP connect to the Service: explain needs the method to decide at the waypoint.
    row = tcp(f"{SENDER_APP}/0", RECEIVER, 8080, CONNECTED)
    (answer,) = explain_reference(kube, False, [question(row)])
    assert answer["verdict"] == "unknown"
    comparison: Comparison = compare(row, probe_result(row, "connected"), answer)
    assert comparison.mismatch() == f"explain cannot decide: {answer['reason']}"
    with pytest.raises(AssertionError, match="explain cannot decide"):
        assert_predicted([comparison])


def test_explain_names_the_senders_app_policy_for_every_allowed_service_row(kube: FakeKubeServer):
    rows = [
        row
        for row in reference_matrix(MODEL, model_on_mesh=True)
        if row.source.startswith(SENDER_APP) and question(row).level == "app"
    ]
    answers = explain_reference(kube, True, [question(row) for row in rows])
    allowed = [a for row, a in zip(rows, answers, strict=True) if row.expected == ALLOWED]
    assert allowed, "the matrix has no allowed row through the Service"
    for answer in allowed:
        assert answer["verdict"] == ALLOW
        # The app policy the relation made, not the waypoint's own policy at the pods.
        assert answer["policy"].startswith(f"{RECEIVER}-app-from-{SENDER_APP}-"), answer
        assert f"(asked for by {RECEIVER} over relation " in answer["reason"], answer
        assert f"{RECEIVER}-from-waypoint" in answer["explanation"], answer
