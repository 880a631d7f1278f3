"""The access map (pure) and its formats."""

from __future__ import annotations

import json
from typing import Any

import pytest
from access.map import ANYONE, build_access_map, grants_of
from access.model import Model, Requested, Workload, principal
from access.parsing import parse_policy
from access.report import format_dot, format_map, format_mermaid, format_table, safe_text
from test_access_decide import MESH, NS, WAYPOINT, app_policy, model, unit_policy, workload

OWNER = "m.beacon"


def foreign(spec: dict[str, Any], name: str = "theirs") -> Any:
    return parse_policy({"metadata": {"name": name, "namespace": NS}, "spec": spec}, OWNER)


SELECT_RECEIVER = {"matchLabels": {"app.kubernetes.io/name": "receiver"}}
ON_RECEIVER = [{"group": "", "kind": "Service", "name": "receiver"}]


def test_the_beacons_grants_carry_their_provenance():
    m = model(app_policy(ports=[8080], methods=["GET"]), unit_policy(ports=[9090]))
    grants = build_access_map(m).grants
    assert [(g.source, g.source_model, g.target, g.level, g.ports, g.methods) for g in grants] == [
        ("sender", NS, "receiver", "app", ("8080",), ("GET",)),
        ("sender", NS, "receiver", "unit", ("9090",), ()),
    ]
    assert all((g.requested_by, g.relation_id, g.endpoint) == ("receiver", 3, "service-mesh")
               for g in grants)  # fmt: skip
    assert not any(g.foreign or g.caveats for g in grants)


@pytest.mark.parametrize(
    ("rule", "sources"),
    [
        ({}, [(ANYONE, "")]),
        ({"from": [{"source": {"namespaces": ["prod-*"]}}]}, [("any app in model prod-*", "")]),
        ({"from": [{"source": {"principals": ["cluster.local/ns/x/*"]}}]},
         [("principal cluster.local/ns/x/*", "")]),
        ({"from": [{"source": {"serviceAccounts": ["a", "o/b"]}}]}, [("a", NS), ("b", "o")]),
        ({"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}, [("callers by ipBlocks", "")]),
        ({"from": [{"source": {"notNamespaces": ["bad"]}}]}, [(ANYONE, "")]),
    ],
)  # fmt: skip
def test_foreign_sources_in_words(rule: dict[str, Any], sources: list[tuple[str, str]]):
    policy = foreign({"targetRefs": ON_RECEIVER, "rules": [rule]})
    grants = grants_of(model(policy), 0)
    assert [(g.source, g.source_model) for g in grants] == sources
    assert all(g.foreign for g in grants)


def test_exclusions_and_conditions_are_shown():
    policy = foreign(
        {
            "targetRefs": ON_RECEIVER,
            "rules": [
                {
                    "from": [{"source": {"notNamespaces": ["bad"]}}],
                    "to": [{"operation": {"notPaths": ["/admin"]}}],
                    "when": [{"key": "request.headers[x]", "values": ["1"]}],
                }
            ],
        }
    )
    (grant,) = grants_of(model(policy), 0)
    assert grant.excluded == ("not models bad", "not paths /admin")
    assert "only when request.headers[x] match" in grant.caveats


def test_caveats_say_when_a_grant_is_void():
    off = workload("receiver", pods={"app.kubernetes.io/name": "receiver"})
    (grant,) = build_access_map(model(app_policy(), workloads=(off,))).grants
    assert grant.caveats == ("not enforced: receiver is not on the mesh (anyone may reach it)",)
    (grant,) = build_access_map(model(app_policy(), waypoint_ready=False)).grants
    assert grant.caveats == (f"not enforced: the waypoint {WAYPOINT} is not ready",)
    unit_with_methods = foreign(
        {"selector": SELECT_RECEIVER, "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}
    )
    (grant,) = build_access_map(model(unit_with_methods)).grants
    assert grant.caveats[0].startswith("allows nothing: ztunnel cannot check methods")
    custom = foreign({"action": "CUSTOM", "targetRefs": ON_RECEIVER}, name="ext")
    (grant,) = build_access_map(model(app_policy(), custom)).grants
    assert grant.caveats == ("an external authorizer also decides (CUSTOM policy ext)",)


@pytest.mark.parametrize(
    ("spec", "effect", "targets", "detail"),
    [
        ({"targetRefs": ON_RECEIVER, "rules": [{}]}, "widens", ("receiver",), "grants access"),
        ({"selector": SELECT_RECEIVER, "rules": [{}]}, "widens", ("receiver",),
         "the pods now refuse whatever no ALLOW policy allows"),
        ({"action": "DENY", "rules": [{}]}, "narrows", ("sender", "receiver"), "at the pods"),
        ({"action": "CUSTOM", "targetRefs": ON_RECEIVER}, "delegates", ("receiver",),
         "external authorizer"),
        ({"action": "CUSTOM", "selector": SELECT_RECEIVER}, "none", ("receiver",),
         "ztunnel ignores it"),
        ({"action": "AUDIT", "rules": [{}]}, "none", ("sender", "receiver"), "AUDIT only logs"),
        ({"selector": {"matchLabels": {"app": "nothing"}}}, "none", (), "applies to no app"),
        ({"rules": "bad"}, "unreadable", (), "cannot be read"),
    ],
)  # fmt: skip
def test_foreign_policies_are_flagged(
    spec: dict[str, Any], effect: str, targets: tuple[str, ...], detail: str
):
    (flagged,) = build_access_map(model(app_policy(), foreign(spec))).foreign
    assert (flagged.effect, flagged.targets) == (effect, targets)
    assert detail in flagged.detail


def test_pending_and_filtering_by_app():
    m = model(
        app_policy(),
        requested=(
            Requested("receiver", 3, "missing-policy", "sender", NS),
            Requested("third", 5, "other-policy", "x", NS),
        ),
    )
    access = build_access_map(m)
    assert len(access.pending) == 2
    assert access.pending[0].startswith("missing-policy (asked for by receiver over relation 3)")
    only = build_access_map(m, "sender")
    assert [g.target for g in only.grants] == ["receiver"]
    assert len(only.pending) == 1
    assert [a.app for a in only.apps] == ["sender"]
    assert build_access_map(m, "nobody").grants == ()


def test_enrolment_in_words():
    other = {**MESH, "istio.io/use-waypoint": "theirs"}
    apps = (
        workload("a"),
        workload("b", pods={"istio.io/dataplane-mode": "ambient"}, service={}),
        workload("c", pods=other),
        workload("d", service=None),
        workload("e", pods={}),
    )
    access = build_access_map(Model(NS, {}, apps, WAYPOINT, False))
    assert [(a.app, a.on_mesh, a.waypoint) for a in access.apps] == [
        ("a", True, "Service bound to the waypoint, which is not ready"),
        ("b", True, "Service not bound to a waypoint"),
        ("c", True, f"Service bound to waypoint {NS}/theirs (not this beacon's)"),
        ("d", True, "no Service"),
        ("e", False, "off the mesh: nothing enforced"),
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain", "plain"),
        ("tab\there", "tab\\x09here"),
        ("\x1b[2J", "\\x1b[2J"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("back\\slash", "back\\slash"),
        ("é and ü", "é and ü"),
    ],
)
def test_safe_text_escapes(value: str, shown: str):
    assert safe_text(value) == shown


def test_safe_text_bounds():
    text = safe_text("y" * 1000, 50)
    assert len(text) <= 50
    assert text.startswith("yyy")
    assert text.endswith("more)")


def _hostile_model() -> Model:
    name = 'x"]; evil[" <b>#1'
    policy = foreign(
        {
            "targetRefs": ON_RECEIVER,
            "rules": [{"from": [{"source": {"principals": [principal("other", name)]}}]}],
        },
    )
    return model(policy, workloads=(workload("receiver"), Workload(name, {}, None, {})))


def test_mermaid_escapes_labels_and_marks_foreign_and_off_mesh():
    text = format_mermaid(build_access_map(_hostile_model()))
    assert text.splitlines()[0] == "flowchart LR"
    assert '"]; evil["' not in text
    assert "#quot;" in text
    assert "#lt;b#gt;" in text
    assert "-.->" in text
    assert "class n1 offmesh" in text


def test_dot_escapes_quotes():
    text = format_dot(build_access_map(_hostile_model()))
    assert '\\"]; evil[\\"' in text
    assert "style=dashed" in text


def test_every_format_through_one_entry():
    access = build_access_map(model(app_policy()))
    for fmt in ("table", "json", "mermaid", "dot"):
        assert format_map(access, fmt)
    assert json.loads(format_map(access, "json"))["model"] == NS
    assert "(none)" in format_table(build_access_map(model()))
    with pytest.raises(ValueError, match="format must be one of"):
        format_map(access, "svg")


def test_istios_own_conditions_show_next_to_the_grants():
    manifest = {
        "metadata": {"name": "theirs", "namespace": NS, "generation": 2},
        "spec": {"targetRefs": ON_RECEIVER, "rules": [{}]},
        "status": {
            "conditions": [
                {"type": "WaypointAccepted", "status": "False", "reason": "AncestorNotBound",
                 "message": "not bound", "observedGeneration": 2},
                {"type": "ZtunnelAccepted", "status": "False", "reason": "Old",
                 "observedGeneration": 1},  # about an older version: left out
                {"type": "WaypointAccepted", "status": "True", "observedGeneration": 2},
                "not a condition",
            ]
        },
    }  # fmt: skip
    policy = parse_policy(manifest, OWNER)
    assert policy.not_enforced == (
        "Istio says the waypoint does not enforce it: AncestorNotBound: not bound",
    )
    (grant,) = build_access_map(model(policy)).grants
    assert grant.caveats[0] == policy.not_enforced[0]
