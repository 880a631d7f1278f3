"""Pure builders: MeshPolicies from declarations, AuthorizationPolicies from MeshPolicies."""

from __future__ import annotations

import re
from typing import Any

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    Endpoint,
    MeshDataError,
    MeshPolicy,
    Method,
    PolicyTargetType,
    UnitPolicy,
    UnitPolicyError,
    authorization_policy_name,
    build_authorization_policies,
    build_authorization_policy,
    build_mesh_policies,
    get_default_labels,
)

DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")

L7 = Endpoint(hosts=["receiver.example"], ports=[8080, 8081], methods=[Method.get], paths=["/foo"])


def app_policy(**kwargs: Any) -> MeshPolicy:
    fields: dict[str, Any] = {
        "source_namespace": "src-model",
        "source_app_name": "sender",
        "target_namespace": "dst-model",
        "target_app_name": "receiver",
        "endpoints": [L7],
        **kwargs,
    }
    return MeshPolicy(**fields)


def unit_policy(**kwargs: Any) -> MeshPolicy:
    fields: dict[str, Any] = {
        "source_namespace": "src-model",
        "source_app_name": "sender",
        "target_namespace": "dst-model",
        "target_type": PolicyTargetType.unit,
        "endpoints": [Endpoint(ports=[8080])],
        **kwargs,
    }
    if "target_selector_labels" not in kwargs:
        fields.setdefault("target_app_name", "receiver")
    return MeshPolicy(**fields)


FROM_SENDER = [{"source": {"principals": ["cluster.local/ns/src-model/sa/sender"]}}]


def test_build_mesh_policies_refuses_an_undeclared_relation():
    with pytest.raises(MeshDataError, match="names relation 'nope'"):
        build_mesh_policies({}, "receiver", "model", [UnitPolicy(relation="nope")])


def test_build_mesh_policies_without_relations_is_empty():
    assert build_mesh_policies({"rela": []}, "receiver", "model", [AppPolicy("rela")]) == []


def test_app_policy_targets_the_service_of_the_app():
    policy = app_policy()
    manifest = build_authorization_policy(policy)
    assert manifest == {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": authorization_policy_name(policy), "namespace": "dst-model"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "receiver"}],
            "rules": [
                {
                    "from": FROM_SENDER,
                    "to": [
                        {
                            "operation": {
                                "ports": ["8080", "8081"],
                                "hosts": ["receiver.example"],
                                "methods": ["GET"],
                                "paths": ["/foo"],
                            }
                        }
                    ],
                }
            ],
        },
    }


@pytest.mark.parametrize("target_app_name", ["receiver", None])
def test_app_policy_with_a_service_targets_that_service(target_app_name: str | None):
    manifest = build_authorization_policy(
        app_policy(target_app_name=target_app_name, target_service="ingress")
    )
    assert manifest["spec"]["targetRefs"] == [{"group": "", "kind": "Service", "name": "ingress"}]
    assert "selector" not in manifest["spec"]


def test_one_operation_per_endpoint_with_only_what_is_set():
    endpoints = [
        Endpoint(hosts=[], ports=[80], methods=[], paths=[]),
        Endpoint(methods=[Method.post, Method.delete]),
        Endpoint(paths=["/api/*"], hosts=["a.example"]),
    ]
    manifest = build_authorization_policy(app_policy(endpoints=endpoints))
    assert manifest["spec"]["rules"] == [
        {
            "from": FROM_SENDER,
            "to": [
                {"operation": {"ports": ["80"]}},
                {"operation": {"methods": ["POST", "DELETE"]}},
                {"operation": {"hosts": ["a.example"], "paths": ["/api/*"]}},
            ],
        }
    ]


@pytest.mark.parametrize(
    "endpoints",
    [[], [Endpoint()], [Endpoint(ports=[80]), Endpoint(hosts=[], ports=[], methods=[], paths=[])]],
)
def test_an_endpoint_that_restricts_nothing_allows_everything_from_the_source(
    endpoints: list[Endpoint],
):
    manifest = build_authorization_policy(app_policy(endpoints=endpoints))
    assert manifest["spec"]["rules"] == [{"from": FROM_SENDER}]


@pytest.mark.parametrize(
    ("kwargs", "selector"),
    [
        (
            {"target_app_name": "receiver"},
            {"selector": {"matchLabels": {"app.kubernetes.io/name": "receiver"}}},
        ),
        (
            {"target_selector_labels": {"app": "receiver", "tier": "db"}},
            {"selector": {"matchLabels": {"app": "receiver", "tier": "db"}}},
        ),
    ],
)
def test_unit_policy_selects_pods_and_allows_only_ports(
    kwargs: dict[str, Any], selector: dict[str, Any]
):
    manifest = build_authorization_policy(
        unit_policy(endpoints=[Endpoint(ports=[8080, 8081]), Endpoint(ports=[9090])], **kwargs)
    )
    assert manifest["spec"] == {
        **selector,
        "rules": [
            {
                "from": FROM_SENDER,
                "to": [
                    {"operation": {"ports": ["8080", "8081"]}},
                    {"operation": {"ports": ["9090"]}},
                ],
            }
        ],
    }


def test_unit_policy_without_ports_allows_every_port():
    manifest = build_authorization_policy(unit_policy(target_app_name="receiver", endpoints=[]))
    assert manifest["spec"]["rules"] == [{"from": FROM_SENDER}]


def test_a_unit_policy_with_l7_rules_never_reaches_a_manifest():
    policy = unit_policy(target_app_name="receiver")
    # Validation refuses this at construction; the builder still guards against it.
    object.__setattr__(policy, "endpoints", [Endpoint(ports=[80], methods=[Method.get])])
    with pytest.raises(UnitPolicyError, match="ztunnel can only restrict ports"):
        build_authorization_policy(policy)


def test_metadata_labels_and_annotations():
    manifest = build_authorization_policy(
        app_policy(), labels={"owner": "beacon"}, annotations={"requested-by": "receiver"}
    )
    assert manifest["metadata"]["labels"] == {"owner": "beacon"}
    assert manifest["metadata"]["annotations"] == {"requested-by": "receiver"}


def test_names_are_stable():
    assert authorization_policy_name(app_policy()) == authorization_policy_name(app_policy())
    assert authorization_policy_name(app_policy()) == authorization_policy_name(
        MeshPolicy.from_dict(app_policy().to_dict())
    )
    name = authorization_policy_name(app_policy())
    assert name.startswith("receiver-app-from-sender-src-model-")


@pytest.mark.parametrize(
    "other",
    [
        app_policy(endpoints=[Endpoint(ports=[8080])]),
        app_policy(endpoints=[]),
        app_policy(source_app_name="sender2"),
        app_policy(source_namespace="other-model"),
        app_policy(target_service="receiver"),
        unit_policy(target_app_name="receiver"),
    ],
)
def test_different_requests_have_different_names(other: MeshPolicy):
    assert authorization_policy_name(other) != authorization_policy_name(app_policy())


@pytest.mark.parametrize(
    "policy",
    [
        app_policy(source_namespace="my_model", target_namespace="my_model"),
        app_policy(source_app_name="s" * 300, target_app_name="t" * 63),
        app_policy(source_namespace="Model_With.Dots_", target_service="s" * 63),
        unit_policy(source_app_name="-x-", target_selector_labels={"a": "b"}),
        unit_policy(source_app_name="a" * 250, source_namespace="b_" * 40),
        # Relation data is written by the remote app: whatever it says, the name stays valid.
        app_policy(source_app_name="x."),
        app_policy(source_app_name=".x", source_namespace="a..b"),
        app_policy(source_app_name="a.-b", target_service="svc-1"),
        app_policy(source_app_name="...", source_namespace="é"),
        app_policy(source_app_name="a" * 240 + ".b"),
    ],
)
def test_names_are_valid_dns_1123_subdomains(policy: MeshPolicy):
    name = authorization_policy_name(policy)
    assert len(name) <= 253
    assert DNS_1123_SUBDOMAIN.match(name), name


def test_long_names_still_differ():
    long_app = "a" * 300
    one = authorization_policy_name(app_policy(source_app_name=long_app + "1"))
    two = authorization_policy_name(app_policy(source_app_name=long_app + "2"))
    assert one != two


def test_build_authorization_policies_drops_duplicates():
    manifests = build_authorization_policies(
        [app_policy(), app_policy(), unit_policy()], labels={"owner": "me"}
    )
    assert [m["spec"].get("targetRefs") is not None for m in manifests] == [True, False]
    assert all(m["metadata"]["labels"] == {"owner": "me"} for m in manifests)


@pytest.mark.parametrize(
    ("app", "model"),
    [("receiver", "model"), ("r" * 80, "m" * 80), ("app", "my_model"), ("a", "-weird.-")],
)
def test_default_ownership_labels_are_valid_label_values(app: str, model: str):
    labels = get_default_labels(app, model)
    assert set(labels) == {"app.kubernetes.io/name", "kubernetes-resource-handler-scope"}
    for value in labels.values():
        assert len(value) <= 63
        assert LABEL_VALUE.match(value), value
    assert get_default_labels(app, model) == labels


def test_default_ownership_labels_differ_per_app_and_model():
    assert get_default_labels("a", "m")["app.kubernetes.io/name"] == "a-m"
    assert get_default_labels("r" * 80, "m1") != get_default_labels("r" * 80, "m2")
    assert get_default_labels("a", "m", scope="x")["kubernetes-resource-handler-scope"] == "x"
