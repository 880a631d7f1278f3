"""Property-based test of the beacon's reconcile: arbitrary data on one relation.

Beside an honest relation: no exception escapes, the honest app is still served, and no object
the beacon writes targets anything but the app that asked for it, for any source but a Juju name.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from charm import IstioBeaconCharm
from conftest import (
    REQUESTED_BY,
    beacon_state,
    mesh_relation,
    policies_in,
    seed_service,
    wire_policy,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ops import testing
from policies import MAX_STATUS_LENGTH
from support.fake_kube import FakeKubeServer

HONEST = "honest"
LIAR = "liar"
PRINCIPAL = re.compile(
    r"cluster\.local/ns/[a-z0-9][a-z0-9-]*/sa/[a-z][a-z0-9]*(?:-[a-z0-9]*[a-z][a-z0-9]*)*\Z"
)

TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from([HONEST, LIAR, f"{LIAR}-endpoints", "*", "\ud800", "\x1b[2J", "a\nb", ""]),
)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70000) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=12,
)


@st.composite
def hostile_databags(draw: st.DrawFn) -> str:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.text(max_size=100))
    if choice == 1:
        return json.dumps(draw(VALUES))
    policies: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from([LIAR, HONEST, None]))
        policy = wire_policy(
            draw(st.sampled_from(["sender", "*", "other"])),
            target,
            draw(st.sampled_from(["app", "unit"])),
        )
        keys = sorted(policy)
        for key in draw(st.sets(st.sampled_from(keys), max_size=3 if choice == 2 else 1)):
            policy[key] = draw(VALUES)
        policies.append(policy)
    return json.dumps(policies)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=hostile_databags())
def test_any_data_beside_an_honest_relation(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, raw: str
):
    for app in (HONEST, LIAR):
        if kube.get("services", "mesh-model", app) is None:
            seed_service(kube, app)
    honest = mesh_relation(HONEST, [wire_policy("sender", HONEST)])
    liar = mesh_relation(LIAR, raw)

    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[honest, liar]))

    policies = policies_in(kube)
    asked = {p["metadata"]["labels"].get(REQUESTED_BY) for p in policies.values()}
    assert HONEST in asked
    for policy in policies.values():
        requester = policy["metadata"]["labels"].get(REQUESTED_BY)
        if requester is None:
            continue  # the beacon's own (model operator)
        spec = policy["spec"]
        for ref in spec.get("targetRefs", []):
            owner = ref["name"].removesuffix("-endpoints")
            assert owner == requester, (requester, ref)
        if "selector" in spec:
            assert spec["selector"]["matchLabels"]["app.kubernetes.io/name"] == requester
        else:
            assert spec.get("targetRefs"), spec
        for rule in spec["rules"]:
            for source in rule["from"]:
                for principal in source["source"]["principals"]:
                    assert PRINCIPAL.match(principal), principal
    message = out.unit_status.message
    assert message.isprintable()
    assert len(message) <= MAX_STATUS_LENGTH
