"""Declarations Istio would refuse, or accept and never match, are refused where they are written.

Each refused shape was put through Istio's own validation and translation (tools/istio-check, see
docs/contributing/envoy-tier.md): either the admission webhook rejects it, or nothing can ever
match it (a silent deny), or it widens to the whole namespace. Each accepted shape passes Istio
with no error and no warning (tests/envoy/test_corpus.py checks the corpus against Istio itself).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    Endpoint,
    MeshDataError,
    MeshPolicy,
    PolicyTargetType,
    UnitPolicy,
    parse_policies,
)

GOOD_PATHS = [
    "/",
    "/foo",
    "/bar/",
    "/api/*",
    "*.js",
    "*",
    "/api/{*}",
    "/api/{**}",
    "/api/{*}/items/{**}",
    "/a/{*}/b/",
    "/a/.*",
    "*./x",
    "/a/..*",
    "/%E2%82%AC",
    "/a%2Fb",
    "/a:b@c=d;e,f+g!h$i&j'k(l)m~n.o_p-q",
]

BAD_PATHS = [
    ("/api/{*}{**}", "segment"),  # Istio's webhook: braces beyond a supported template
    ("/x/{foo}", "segment"),
    ("/x/{**}/y", "after"),
    ("/x/{**}/{*}", "after"),
    ("{*}/x", "does not start with '/'"),
    ("foo", "does not start with '/'"),  # never matches: request paths start with '/'
    ("api/*", "does not start with '/'"),
    ("/a/*/b", "not its first or last character"),  # exact match on a literal '*'
    ("*/a/*", "not its first or last character"),
    ("/a b", "space"),
    ("/a?b=1", "'\\?'"),
    ("/a#frag", "'#'"),
    ("/caf\u00e9", "non-ASCII"),
    ("/a/../b", "'\\.\\.' segment"),
    ("/a/./b", "'\\.\\.' segment"),
    ("/a/../b*", "'\\.\\.' segment"),
    ("*/./b", "'\\.\\.' segment"),
    ("/a/{*}/b c", "space"),
    ("/%7Euser", 'percent-encodes "%7E"'),  # Envoy decodes it to "~" first: never matches
    ("/api/{*}/%41", "percent-encodes"),
]

GOOD_HOSTS = [
    "a.example.com",
    "receiver1",
    "receiver1:8080",
    "*.example.com",
    "app.*",
    "*",
    "[::1]:80",
]
BAD_HOSTS = ["a b", "http://a.example", "a.example/x", "a*b", "**", "a:port", "caf\u00e9.example"]


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_paths_istio_can_match_are_kept(path: str):
    assert Endpoint(paths=[path]).paths == [path]


@pytest.mark.parametrize(("path", "problem"), BAD_PATHS)
def test_paths_istio_refuses_or_never_matches_are_refused_naming_the_field_and_fix(
    path: str, problem: str
):
    with pytest.raises(MeshDataError, match=rf"^Endpoint\.paths\[1\]: .*{problem}.*; use an"):
        Endpoint(paths=["/ok", path])


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_hosts_a_host_header_can_hold_are_kept(host: str):
    assert Endpoint(hosts=[host]).hosts == [host]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_hosts_no_host_header_can_hold_are_refused(host: str):
    with pytest.raises(MeshDataError, match=r"^Endpoint\.hosts\[0\]: .* can never match"):
        Endpoint(hosts=[host])


def test_the_wire_form_is_checked_the_same_way_and_names_the_policy():
    raw = json.dumps(
        [
            {
                "source_namespace": "m",
                "source_app_name": "s",
                "target_namespace": "m",
                "target_app_name": "r",
                "target_type": "app",
                "endpoints": [{"paths": ["/x/{foo}"]}],
            }
        ]
    )
    with pytest.raises(MeshDataError, match=r"^policies\[0\]\.endpoints\[0\]\.paths\[0\]: "):
        parse_policies(raw)


@pytest.mark.parametrize(
    "service", ["Receiver", "my_service", "1st", "svc-", "a.b", "s" * 64, " svc"]
)
def test_a_service_name_kubernetes_cannot_hold_is_refused(service: str):
    with pytest.raises(MeshDataError, match=r"^AppPolicy\.service: .* not a Kubernetes Service"):
        AppPolicy(relation="r", service=service)
    with pytest.raises(MeshDataError, match=r"target_service: .* not a Kubernetes Service name"):
        _mesh(target_service=service)


def test_an_app_policy_without_target_service_needs_a_valid_app_service_name():
    with pytest.raises(
        MeshDataError, match=r"target_app_name \(its Service\): .* not a Kubernetes"
    ):
        _mesh(target_app_name="a" * 64)
    assert _mesh(target_app_name="a" * 63).target_app_name == "a" * 63


def _mesh(**kwargs: Any) -> MeshPolicy:
    fields: dict[str, Any] = {
        "source_namespace": "src",
        "source_app_name": "sender",
        "target_namespace": "dst",
        "target_app_name": "receiver",
        **kwargs,
    }
    return MeshPolicy(**fields)


@pytest.mark.parametrize("labels", [None, {}])
def test_a_unit_policy_with_no_target_is_refused_because_it_would_be_namespace_wide(
    labels: dict[str, str] | None,
):
    with pytest.raises(MeshDataError, match="every pod in the namespace"):
        _mesh(
            target_type=PolicyTargetType.unit, target_app_name=None, target_selector_labels=labels
        )


@pytest.mark.parametrize(
    "labels",
    [
        {"app": "has space"},
        {"app": "v" * 64},
        {"app": "-x"},
        {"bad key": "x"},
        {"Example.com/x": "y"},
        {"/x": "y"},
        {"a/b/c": "y"},
    ],
)
def test_a_selector_no_pod_label_can_match_is_refused(labels: dict[str, str]):
    with pytest.raises(MeshDataError, match=r"target_selector_labels: invalid (value|label key)"):
        _mesh(
            target_type=PolicyTargetType.unit, target_app_name=None, target_selector_labels=labels
        )


def test_valid_selectors_are_kept():
    labels = {"app.kubernetes.io/name": "receiver", "tier": "db.v1_2", "x": ""}
    policy = _mesh(
        target_type=PolicyTargetType.unit, target_app_name=None, target_selector_labels=labels
    )
    assert policy.target_selector_labels == labels


def test_a_unit_policy_target_app_must_be_a_label_value():
    with pytest.raises(MeshDataError, match=r"target_app_name \(a pod label value\)"):
        _mesh(target_type=PolicyTargetType.unit, target_app_name="r" * 64)


def test_declarations_that_were_accepted_before_are_still_accepted():
    assert UnitPolicy(relation="r", ports=[80]).ports == [80]
    assert AppPolicy(relation="r", service="my-svc", endpoints=[Endpoint(paths=["/a/*"])]).service
