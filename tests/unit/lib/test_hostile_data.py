"""Relation data written to hurt: the library never raises on it, and never widens access.

Each test names the class of failure of issue 12 it proves (see docs/contributing/security.md).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    MAX_ITEMS_PER_FIELD,
    MAX_POLICIES_BYTES,
    MAX_POLICIES_PER_RELATION,
    AppPolicy,
    CMRData,
    Endpoint,
    MeshDataError,
    _display_text,
    parse_policies,
)
from juju_objects import KUBE_MODEL, pod_template_labels, seed_app, service_labels
from mesh_charms import (
    CONSUMER,
    MESH_LABELS,
    MODEL,
    consumer_context,
    mesh_relation,
    provider_databag,
    published_policies,
    state,
)
from ops import testing
from support.fake_kube import FakeKubeServer

# Istio reads the waypoint labels on the Service and the dataplane mode on the pods.
ON_SERVICE = {k: v for k, v in MESH_LABELS.items() if k != "istio.io/dataplane-mode"}
OTHER_MODEL_UUID = "5b0e8b3e-4c2f-4b7e-9d35-0123456789ab"
HTTP = Endpoint(ports=[8080])


def _policy(**fields: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "source_namespace": "mesh-model",
        "source_app_name": "sender",
        "target_namespace": "mesh-model",
        "target_app_name": "receiver",
        "target_selector_labels": None,
        "target_service": None,
        "target_type": "app",
        "endpoints": [{"hosts": None, "ports": [8080], "methods": None, "paths": None}],
    }
    policy.update(fields)
    return policy


def _nest(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


# -- class 1: any data, no exception out of the parser ------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,  # deeper than Python's recursion limit
        json.dumps([_policy(extra={"a": _nest(40)})]),
        json.dumps([_policy()])[:-2] + ', "deep": ' + "[" * 5000 + "]" * 5000 + "}]",
        json.dumps([_policy()]).replace("8080", "9" * 5000),  # beyond int's digit limit
        json.dumps([_policy()]).replace("8080", "1e999999"),  # a float that overflows
        json.dumps([_policy()]).replace("8080", "NaN"),
    ],
    ids=["nested", "nested-unknown-key", "deep-unknown-key", "digits", "float", "nan"],
)
def test_hostile_json_is_a_refusal_not_a_crash(raw: str):
    """Class 1: nesting and huge numbers become a MeshDataError naming the limit."""
    with pytest.raises(MeshDataError):
        parse_policies(raw)


@pytest.mark.parametrize(
    "raw",
    [
        '"' + '\\"' * 32_000,  # an unterminated string of escaped quotes
        '"' + '\\"' * 32_000 + "\\",  # the same, ending in a lone backslash
        '["' + '\\"' * 32_000 + "]",
    ],
    ids=["escaped-quotes", "trailing-backslash", "in-a-list"],
)
def test_an_unterminated_string_is_refused_as_invalid_json(raw: str):
    """Class 1: the scan before parsing reads it once (test_parsing_properties has the proof)."""
    with pytest.raises(MeshDataError, match="policies: not valid JSON") as refused:
        parse_policies(raw)
    assert " at at " not in str(refused.value)  # json's "Unterminated string starting at"


def test_the_size_limits_are_checked_before_parsing():
    """Class 8: too many bytes, policies, endpoints or items are refused, naming the limit."""
    big = json.dumps([_policy()] * (MAX_POLICIES_BYTES // 200))
    with pytest.raises(MeshDataError, match=f"limit of {MAX_POLICIES_BYTES} bytes"):
        parse_policies(big)
    many = json.dumps([_policy()] * (MAX_POLICIES_PER_RELATION + 1))
    with pytest.raises(MeshDataError, match=f"limit of {MAX_POLICIES_PER_RELATION} policies"):
        parse_policies(many)
    ports = json.dumps([_policy(endpoints=[{"ports": list(range(1, MAX_ITEMS_PER_FIELD + 2))}])])
    with pytest.raises(MeshDataError, match=f"limit of {MAX_ITEMS_PER_FIELD}"):
        parse_policies(ports)


@pytest.mark.parametrize(
    "fields",
    [
        {"source_app_name": "*"},
        {"source_app_name": "sender/*"},
        {"source_app_name": "Sender"},
        {"source_namespace": "*"},
        {"source_namespace": "a/sa/b"},
        {"target_namespace": "Not A NS!"},
        {"source_app_name": "\ud800"},
        {"endpoints": [{"paths": ["/\udfff"]}]},
        {
            "target_selector_labels": {"app.kubernetes.io/name": "a b"},
            "target_type": "unit",
            "target_app_name": None,
        },
        {
            "target_selector_labels": {"bad key!": "x"},
            "target_type": "unit",
            "target_app_name": None,
        },
        {
            # A valid DNS name of 254 characters is one too many for a label key's prefix.
            "target_selector_labels": {"a" * 63 + ("." + "b" * 61) * 3 + ".cdef/x": "y"},
            "target_type": "unit",
            "target_app_name": None,
        },
    ],
    ids=[
        "star",
        "pattern",
        "upper",
        "ns-star",
        "ns-slash",
        "target-ns",
        "surrogate",
        "path-surrogate",
        "label-value",
        "label-key",
        "label-prefix-254",
    ],
)
def test_every_string_is_checked_for_its_field(fields: dict[str, Any]):
    """Classes 3 and 5: names are Juju names, labels are labels, text is valid UTF-8."""
    with pytest.raises(MeshDataError):
        parse_policies(json.dumps([_policy(**fields)]))


def test_cmr_data_names_must_be_juju_names():
    """Class 5: ``*`` or any pattern can never become a source."""
    claims = [{"app_name": "*", "juju_model_name": "m"}, {"app_name": "a", "juju_model_name": "*"}]
    for claim in claims:
        with pytest.raises(MeshDataError):
            CMRData.from_dict(claim)


# -- class 4: what people see is quoted, escaped and cut ----------------------------------------


def test_display_text_quotes_escapes_and_cuts():
    assert _display_text("plain") == '"plain"'
    shown = _display_text("a\nb\x1b[31mc\u202e\ud800")
    assert shown.isprintable()
    shown.encode("utf-8")  # no lone surrogate survives
    long = _display_text("x" * 1_000_000)
    assert len(long) <= 64
    assert "more" in long


# -- consumer side: provider data, cmr_data, labels ---------------------------------------------


def _cross_model(app: str, claim: object, **kwargs: Any) -> testing.Relation:
    text = claim if isinstance(claim, str) else json.dumps(claim)
    return testing.Relation(
        "provide-cmr-mesh",
        "cross_model_mesh",
        remote_app_name=app,
        remote_app_data={"cmr_data": text},
        remote_model_uuid=kwargs.get("uuid", OTHER_MODEL_UUID),
    )


def _sources(out: testing.State, mesh: testing.Relation) -> list[tuple[str, str]]:
    return sorted(
        (p["source_namespace"], p["source_app_name"]) for p in published_policies(out, mesh)
    )


def test_a_wildcard_cmr_identity_never_becomes_a_source():
    """Class 5: cmr_data naming ``*`` is refused; the sender keeps its local alias."""
    ctx = consumer_context([AppPolicy(relation="inbound", endpoints=[HTTP])])
    mesh = mesh_relation()
    inbound = testing.Relation("inbound", remote_app_name="remote-abc")
    cmr = _cross_model("remote-abc", {"app_name": "*", "juju_model_name": "other"})
    out = ctx.run(ctx.on.relation_changed(cmr), state(mesh, inbound, cmr))
    assert _sources(out, mesh) == [(MODEL, "remote-abc")]


def test_cmr_data_counts_only_across_models():
    """Class 6: on a same-model relation, Juju's own app name wins over any claim."""
    ctx = consumer_context([AppPolicy(relation="inbound", endpoints=[HTTP])])
    mesh = mesh_relation()
    inbound = testing.Relation("inbound", remote_app_name="neighbour")
    same_model = testing.Relation(
        "provide-cmr-mesh",
        "cross_model_mesh",
        remote_app_name="neighbour",
        remote_app_data={"cmr_data": json.dumps({"app_name": "admin", "juju_model_name": "ops"})},
    )
    out = ctx.run(ctx.on.relation_changed(same_model), state(mesh, inbound, same_model))
    assert _sources(out, mesh) == [(MODEL, "neighbour")]


def test_colliding_identity_claims_are_refused():
    """Class 6: two apps claiming one identity, or a local app's identity, get neither."""
    ctx = consumer_context([AppPolicy(relation="inbound", endpoints=[HTTP])])
    mesh = mesh_relation()
    claim = {"app_name": "sender", "juju_model_name": "model-a"}
    relations = [
        testing.Relation("inbound", remote_app_name="remote-one"),
        testing.Relation("inbound", remote_app_name="remote-two"),
        testing.Relation("inbound", remote_app_name="remote-three"),
        testing.Relation("inbound", remote_app_name="local-app"),
        _cross_model("remote-one", claim),
        _cross_model("remote-two", claim),
        _cross_model("remote-three", {"app_name": "local-app", "juju_model_name": MODEL}),
    ]
    out = ctx.run(ctx.on.relation_changed(relations[4]), state(mesh, *relations))
    assert _sources(out, mesh) == sorted(
        [
            (MODEL, "remote-one"),
            (MODEL, "remote-two"),
            (MODEL, "remote-three"),
            (MODEL, "local-app"),
        ]
    )
    logged = "\n".join(line.message for line in ctx.juju_log)
    assert "model-a" in logged
    assert "claimed by" in logged


@pytest.mark.parametrize(
    "claim",
    ["[" * 100_000, '{"app_name": ' + "[" * 3000 + "]" * 3000 + "}", "9" * 10_000],
    ids=["unclosed", "nested", "digits"],
)
def test_hostile_cmr_data_fails_no_hook(claim: str):
    """Class 9: nested cmr_data is ignored, not a failed hook of the receiver."""
    ctx = consumer_context([AppPolicy(relation="inbound", endpoints=[HTTP])])
    mesh = mesh_relation()
    inbound = testing.Relation("inbound", remote_app_name="remote-abc")
    cmr = _cross_model("remote-abc", claim)
    out = ctx.run(ctx.on.relation_changed(cmr), state(mesh, inbound, cmr))
    assert _sources(out, mesh) == [(MODEL, "remote-abc")]


@pytest.mark.parametrize(
    "labels",
    [
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"istio.io/dataplane-mode": {"nested": ["ambient"]}}),
        json.dumps({"istio.io/dataplane-mode": "\ud800"}),
    ],
    ids=["deep", "nested-value", "surrogate"],
)
def test_hostile_provider_labels_fail_no_hook(kube: FakeKubeServer, labels: str):
    """Class 9: the consumer ignores provider data it cannot use."""
    seed_app(kube, CONSUMER, KUBE_MODEL)
    ctx = consumer_context(auto_join=True)
    mesh = mesh_relation(remote_app_data={"labels": labels, "mesh_type": '"istio"'})
    out = ctx.run(ctx.on.relation_changed(mesh), state(mesh, model=KUBE_MODEL))
    assert out.app_status == testing.UnknownStatus()
    assert pod_template_labels(kube, CONSUMER) == {"app.kubernetes.io/name": CONSUMER}


def test_only_the_mesh_label_keys_are_taken_from_the_provider(kube: FakeKubeServer):
    """Class 9: a provider cannot set app.kubernetes.io/name, or thousands of labels."""
    seed_app(kube, CONSUMER, KUBE_MODEL)
    ctx = consumer_context(auto_join=True)
    hostile = {**MESH_LABELS, "app.kubernetes.io/name": "victim", "team": "red"}
    mesh = mesh_relation(remote_app_data=provider_databag(hostile))
    out = ctx.run(ctx.on.leader_elected(), state(mesh, model=KUBE_MODEL))
    assert service_labels(kube, CONSUMER) == {"app.kubernetes.io/name": CONSUMER, **ON_SERVICE}

    # Invalid or too many labels: the provider's data is not used, and nothing changes.
    invalid = {**MESH_LABELS, "istio.io/use-waypoint": "bad value!"}
    mesh = mesh_relation(remote_app_data=provider_databag(invalid))
    ctx.run(ctx.on.leader_elected(), dataclasses.replace(out, relations=[mesh]))
    assert service_labels(kube, CONSUMER) == {"app.kubernetes.io/name": CONSUMER, **ON_SERVICE}
    flood = {f"istio.io/x{i}": "a" for i in range(5000)}
    mesh = mesh_relation(remote_app_data=provider_databag({**MESH_LABELS, **flood}))
    ctx.run(ctx.on.leader_elected(), dataclasses.replace(out, relations=[mesh]))
    assert "istio.io/x1" not in service_labels(kube, CONSUMER)
    assert service_labels(kube, CONSUMER) == {"app.kubernetes.io/name": CONSUMER, **ON_SERVICE}
    assert pod_template_labels(kube, CONSUMER) == {
        "app.kubernetes.io/name": CONSUMER,
        "istio.io/dataplane-mode": "ambient",
    }


def test_null_provider_labels_keep_the_app_on_the_mesh(kube: FakeKubeServer):
    """Class 9: ``null`` is not ``{}`` (the whole model on the mesh): the labels stay."""
    seed_app(kube, CONSUMER, KUBE_MODEL)
    ctx = consumer_context(auto_join=True)
    mesh = mesh_relation(remote_app_data=provider_databag())
    out = ctx.run(ctx.on.leader_elected(), state(mesh, model=KUBE_MODEL))
    on_mesh = pod_template_labels(kube, CONSUMER)
    assert on_mesh["istio.io/dataplane-mode"] == "ambient"

    mesh = mesh_relation(remote_app_data={"labels": "null", "mesh_type": '"istio"'})
    ctx.run(ctx.on.relation_changed(mesh), dataclasses.replace(out, relations=[mesh]))
    assert pod_template_labels(kube, CONSUMER) == on_mesh
    assert service_labels(kube, CONSUMER) == {"app.kubernetes.io/name": CONSUMER, **ON_SERVICE}
    assert any("got null" in line.message for line in ctx.juju_log)


def test_a_label_there_before_the_library_is_never_taken_over(kube: FakeKubeServer):
    """Class 9: an admin's mesh label stays when the app leaves the mesh, and keeps its value."""
    admin = {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "admins-waypoint"}
    seed_app(kube, CONSUMER, KUBE_MODEL, extra_labels=admin)
    ctx = consumer_context(auto_join=True)
    mesh = mesh_relation(remote_app_data=provider_databag())
    out = ctx.run(ctx.on.leader_elected(), state(mesh, model=KUBE_MODEL))
    juju = {"app.kubernetes.io/name": CONSUMER}
    assert pod_template_labels(kube, CONSUMER) == {**juju, **admin}

    ctx.run(ctx.on.relation_broken(out.get_relations("service-mesh")[0]), out)
    assert pod_template_labels(kube, CONSUMER) == {**juju, **admin}
    assert service_labels(kube, CONSUMER) == {**juju, **admin}


def test_before_juju_3_6_2_only_an_offer_alias_counts_as_cross_model():
    """Class 6: without relation-model-get, the alias Juju gives an offer's consumer decides."""
    ctx = consumer_context([AppPolicy(relation="inbound", endpoints=[HTTP])])
    ctx.juju_version = "3.5.4"
    alias = "remote-" + "0123456789abcdef" * 2
    claim = {"app_name": "sender", "juju_model_name": "model-a"}
    mesh = mesh_relation()
    relations = [
        testing.Relation("inbound", remote_app_name=alias),
        testing.Relation("inbound", remote_app_name="neighbour"),
        _cross_model(alias, claim),
        _cross_model("neighbour", {"app_name": "admin", "juju_model_name": "ops"}),
    ]
    out = ctx.run(ctx.on.relation_changed(relations[2]), state(mesh, *relations))
    assert _sources(out, mesh) == [("model-a", "sender"), (MODEL, "neighbour")]


def test_identity_notes_are_logged_once_per_change():
    """Every mapping used is visible in the log, once, not on every hook."""
    ctx = consumer_context([AppPolicy(relation="inbound", endpoints=[HTTP])])
    mesh = mesh_relation()
    inbound = testing.Relation("inbound", remote_app_name="remote-abc")
    cmr = _cross_model("remote-abc", {"app_name": "sender", "juju_model_name": "model-a"})
    out = ctx.run(ctx.on.relation_changed(cmr), state(mesh, inbound, cmr))
    assert any("remote-abc is sender in model model-a" in line.message for line in ctx.juju_log)

    ctx.juju_log.clear()
    ctx.run(ctx.on.update_status(), out)
    ctx.run(ctx.on.leader_elected(), out)
    assert not any("cross-model source" in line.message for line in ctx.juju_log)
