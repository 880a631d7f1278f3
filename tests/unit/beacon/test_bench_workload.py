"""The benchmark's workload (``bench/workload.py``) is one the beacon accepts in full.

A workload the beacon refuses makes ``tox -e bench`` measure the refusal path: these tests keep the
generated names valid and the benchmark's own outcome check able to tell.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import re

import parse_cost
import pytest
from charms.istio_beacon_k8s.v0.service_mesh import MeshDataError, RelationRequest, parse_policies
from kube_backends import FakeBackend
from ops import testing
from policies import check_requests
from workload import (
    beacon_subject,
    build_state,
    check_outcome,
    consumer_app,
    consumer_policies,
    juju_objects,
    source_app,
)

MODEL = "bench-model"


@pytest.mark.parametrize("index", [0, 7, 42, 199, 999])
def test_every_generated_request_is_accepted_by_the_library_and_the_beacon(index: int) -> None:
    app = consumer_app(index)
    policies = parse_policies(consumer_policies(app, MODEL, 3))
    services = {app: {"app.kubernetes.io/name": app}}

    accepted, refusals = check_requests(
        [RelationRequest(relation_id=index, app_name=app, policies=policies)], MODEL, services
    )

    assert refusals == []
    assert len(accepted) == 3
    assert {policy.policy.source_app_name for policy in accepted} == {
        source_app(0),
        source_app(1),
        source_app(2),
    }


def test_names_are_distinct_for_a_thousand_apps() -> None:
    assert len({consumer_app(i) for i in range(1000)}) == 1000


#: Juju's rule for an application name: lowercase letters, digits and dashes, starting with a
#: letter, and every dash-separated part holding a letter (so `app-000` is not one).
JUJU_APP_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]*[a-z][a-z0-9]*)*\Z")


def test_generated_names_are_juju_application_names() -> None:
    names = [consumer_app(i) for i in range(1000)] + [source_app(k) for k in range(10)]

    assert [name for name in names if not JUJU_APP_NAME.match(name)] == []
    assert not JUJU_APP_NAME.match("app-000")  # the rule itself rejects what Juju rejects


@contextlib.contextmanager
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> collections.abc.Iterator[FakeBackend]:
    backend = FakeBackend()
    try:
        monkeypatch.setenv("KUBECONFIG", str(backend.kubeconfig))
        yield backend
    finally:
        backend.close()


def test_the_beacon_ends_active_with_every_policy_and_the_check_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    subject = beacon_subject()
    assert subject is not None
    with fake_backend(monkeypatch) as backend:
        backend.create_namespace(MODEL)
        backend.seed(juju_objects(subject.app_name, MODEL, 3))
        ctx = subject.make_context()

        first = ctx.run(ctx.on.config_changed(), build_state(subject, MODEL, 3, 2))
        assert check_outcome(subject, first, 3, 2, first=True) is None
        # Not yet active: Istio has not programmed the waypoint; only a first hook may say so.
        assert check_outcome(subject, first, 3, 2) is not None
        # The check counts the objects: another workload size is a failure.
        assert check_outcome(subject, first, 3, 3, first=True) == (
            "9 AuthorizationPolicies in the model, expected 12"
        )

        backend.play_istio(MODEL)
        settled = subject.make_context().run(ctx.on.config_changed(), first)
        assert check_outcome(subject, settled, 3, 2) is None


def test_a_refused_request_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    subject = beacon_subject()
    assert subject is not None
    with fake_backend(monkeypatch) as backend:
        backend.create_namespace(MODEL)
        backend.seed(juju_objects(subject.app_name, MODEL, 2))
        state = build_state(subject, MODEL, 2, 1)
        # The second app asks for a policy that targets another app: the beacon refuses it.
        relation = next(
            r
            for r in state.get_relations("service-mesh")
            if isinstance(r, testing.Relation) and r.remote_app_name == consumer_app(1)
        )
        bad = consumer_policies(consumer_app(0), MODEL, 1)
        state = dataclasses.replace(
            state,
            relations={
                *(r for r in state.relations if r is not relation),
                dataclasses.replace(relation, remote_app_data={"policies": bad}),
            },
        )
        ctx = subject.make_context()

        out = ctx.run(ctx.on.config_changed(), state)

        error = check_outcome(subject, out, 2, 1, first=True)
        assert error is not None
        assert error.startswith("unit status is blocked")


def test_the_parse_benchmark_measures_refusals_and_an_honest_request():
    """bench/parse_cost.py: each hostile shape refused, the honest one accepted, at each size."""
    assert parse_cost.main(["--repeat", "1"]) == 0
    # Each shape is within the size limit, so what is measured is the scan and the parse, not the
    # size check that refuses anything larger before reading it.
    for name, (make, must_accept) in parse_cost.SHAPES.items():
        text = make(parse_cost.MAX_POLICIES_BYTES)
        assert len(text.encode()) <= parse_cost.MAX_POLICIES_BYTES, name
        if not must_accept:
            with pytest.raises(MeshDataError) as refused:
                parse_policies(text)
            assert "bytes" not in str(refused.value), (name, str(refused.value))
