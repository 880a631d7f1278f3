"""Every policy the project can build passes Istio's own checks with no error and no warning.

The corpus comes from the library's builders across every shape they accept, through the beacon's
own path (checks, manifests, model-operator policy, ownership labels). Istio judges it with its
CRD schema + CEL, its admission webhook, and istiod's translation for ztunnel. Shapes Istio refuses
are shown refused by Istio itself and by the library, at the source.
"""

from __future__ import annotations

import functools
import json
import random
from typing import Any

import pytest
from beacon_path import Consumer, beacon_manifests
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    CMRData,
    Endpoint,
    MeshDataError,
    MeshPolicy,
    Method,
    PolicyTargetType,
    UnitPolicy,
    build_authorization_policy,
)
from kube_names import APP_NAME_LABEL, REQUESTED_BY
from policies import waypoint_policy_name
from support.istio_check import IstioCheck, problems
from traffic_scenario import reference_receiver_policies

MODEL = "mesh-model"
LONG_APP = "r" + "x" * 61 + "1"  # 63 characters: the longest Service name Kubernetes takes
LONG_SENDER = "s" * 50 + "-" + "t" * 12
LONG_MODEL = "m" * 63

ACCEPTED_PATHS = [
    "/",
    "/foo",
    "/bar/",
    "/api/*",
    "*.js",
    "*",
    "/api/{*}",
    "/api/{**}",
    "/api/{*}/items/{**}",
    "/a/.*",
    "/%E2%82%AC/a%2Fb:c@d=e;f,g+h!i$j&k'l(m)n~o.p_q-r",
]
ACCEPTED_HOSTS = [
    "receiver.example.com",
    "receiver",
    "receiver:8080",
    "*.example.com",
    "rec*",
    "*",
]


def corpus_consumers() -> list[Consumer]:
    """Consumers declaring every shape the library accepts."""
    return [
        Consumer(  # the reference scenario's receiver
            "receiver1",
            reference_receiver_policies(),
            {"inbound": ["sender1", "remote"], "inbound-unit": ["sender2"]},
            {"remote": CMRData(app_name="sender-a", juju_model_name="other-model")},
        ),
        Consumer(
            "open",
            [
                AppPolicy(relation="any"),  # no endpoints: everything
                AppPolicy(relation="blank", endpoints=[Endpoint()]),  # an endpoint with nothing
                UnitPolicy(relation="pods"),  # no ports: every port
                UnitPolicy(relation="peers", ports=[1, 65535]),
            ],
            {"any": ["sender1"], "blank": ["sender2"], "pods": ["sender1"], "peers": ["open"]},
        ),
        Consumer(
            "shapes",
            [
                AppPolicy(
                    relation="web",
                    endpoints=[
                        Endpoint(ports=[80]),
                        Endpoint(methods=list(Method)),
                        Endpoint(paths=ACCEPTED_PATHS),
                        Endpoint(hosts=ACCEPTED_HOSTS),
                        Endpoint(
                            hosts=["a.example"], ports=[443, 8443], methods=["PUT"], paths=["/x"]
                        ),
                    ],
                ),
                AppPolicy(
                    relation="api",
                    endpoints=[Endpoint(ports=[9000], paths=["/v1/*"])],
                    service="shapes-api",
                ),
            ],
            {"web": ["sender1", "sender2", "cmr-alias"], "api": ["sender1"]},
            {"cmr-alias": CMRData(app_name=LONG_SENDER, juju_model_name=LONG_MODEL)},
        ),
        Consumer(
            LONG_APP,
            [
                AppPolicy(
                    relation="in", endpoints=[Endpoint(ports=[8080], paths=["/" + "p" * 200])]
                ),
                UnitPolicy(relation="in-unit", ports=[8080]),
            ],
            {"in": [LONG_SENDER], "in-unit": [LONG_SENDER]},
        ),
    ]


def selector_policy() -> MeshPolicy:
    """A unit policy selecting pods by labels (relation data may carry one)."""
    return MeshPolicy(
        source_namespace=MODEL,
        source_app_name="sender1",
        target_namespace=MODEL,
        target_selector_labels={APP_NAME_LABEL: "selected", "tier": "db.v1_2"},
        target_type=PolicyTargetType.unit,
        endpoints=[Endpoint(ports=[5432])],
    )


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    """The beacon's manifests for the corpus consumers, plus a selector policy."""
    consumers = corpus_consumers()
    services = {c.app: {APP_NAME_LABEL: c.app} for c in consumers}
    services["shapes-api"] = {APP_NAME_LABEL: "shapes"}
    manifests, refusals = beacon_manifests(MODEL, consumers, services)
    assert refusals == []
    manifests.append(build_authorization_policy(selector_policy(), labels={REQUESTED_BY: "x"}))
    return manifests


@pytest.fixture(scope="module")
def verdicts(istio: IstioCheck, corpus: list[dict[str, Any]]) -> dict[str, Any]:
    return istio.check(corpus)


def test_the_corpus_covers_every_shape(corpus: list[dict[str, Any]]):
    specs = [m["spec"] for m in corpus]
    text = json.dumps(specs)
    assert len(corpus) >= 15
    assert sum("targetRefs" in s for s in specs) >= 8
    assert sum("selector" in s for s in specs) >= 6
    for shape in [*ACCEPTED_PATHS, *ACCEPTED_HOSTS, "shapes-api", "other-model", LONG_MODEL]:
        assert json.dumps(shape)[1:-1] in text, shape
    assert any(s.get("rules") == [{}] for s in specs)  # the model-operator policy
    assert all(m["metadata"]["labels"] for m in corpus)


def test_istio_finds_no_error_and_no_warning_in_the_corpus(verdicts: dict[str, Any]):
    found = [problem for verdict in verdicts["objects"] for problem in problems(verdict)]
    assert found == []
    assert verdicts["ok"] is True


def test_every_unit_policy_reaches_ztunnel_as_ports_and_principal_only(
    corpus: list[dict[str, Any]], verdicts: dict[str, Any]
):
    by_name = {v["name"]: v for v in verdicts["objects"]}
    units = [m for m in corpus if "selector" in m["spec"]]
    for manifest in units:
        verdict = by_name[manifest["metadata"]["name"]]["ztunnel"]
        assert verdict["applies"], manifest["metadata"]["name"]
        assert verdict["scope"] == "WORKLOAD_SELECTOR"
        authorization = verdict["authorization"]
        assert authorization.get("action", "ALLOW") == "ALLOW"
        for group in authorization["groups"]:
            for rules in group.get("rules", []):
                for match in rules["matches"]:
                    # Only ports and principals: nothing L7 (no field ztunnel would drop).
                    assert set(match) <= {"destinationPorts", "principals"}, match


def test_app_policies_are_not_given_to_ztunnel(
    corpus: list[dict[str, Any]], verdicts: dict[str, Any]
):
    by_name = {v["name"]: v for v in verdicts["objects"]}
    for manifest in corpus:
        if "targetRefs" in manifest["spec"]:
            assert by_name[manifest["metadata"]["name"]]["ztunnel"]["applies"] is False


def test_every_targeted_service_gets_rbac_on_its_waypoint(
    istio: IstioCheck, corpus: list[dict[str, Any]]
):
    targets = {
        f"{m['metadata']['namespace']}/{m['spec']['targetRefs'][0]['name']}"
        for m in corpus
        if "targetRefs" in m["spec"]
    }
    answer = istio.waypoint(corpus)
    built = {entry["service"]: entry for entry in answer["services"]}
    assert set(built) == targets
    for service, entry in built.items():
        assert entry["policies"], service
        names = [f["name"] for f in entry["http_filters"]]
        assert names == ["envoy.filters.http.rbac"], (service, names)


# ---------------------------------------------------------------------------------------------
# What Istio refuses, and what it accepts but can never match: refused at the source too
# ---------------------------------------------------------------------------------------------


def _by_hand(name: str, operation: dict[str, Any], target: str = "receiver1") -> dict[str, Any]:
    """An app policy as build_authorization_policy writes it, but with a value we chose."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": MODEL},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": target}],
            "rules": [
                {
                    "from": [{"source": {"principals": [f"cluster.local/ns/{MODEL}/sa/sender1"]}}],
                    "to": [{"operation": operation}],
                }
            ],
        },
    }


@pytest.mark.parametrize("path", ["/api/{*}{**}", "/x/{foo}", "/x/{**}/{*}"])
def test_paths_istios_webhook_refuses_are_refused_by_the_library(istio: IstioCheck, path: str):
    verdict = istio.check([_by_hand("braces", {"paths": [path]})])["objects"][0]
    assert verdict["webhook"]["allowed"] is False
    assert "invalid or unsupported path" in " ".join(verdict["webhook"]["errors"])
    with pytest.raises(MeshDataError, match=r"Endpoint\.paths\[0\]: .*; use an absolute path"):
        Endpoint(paths=[path])


@pytest.mark.parametrize(
    ("operation", "target"),
    [
        ({"paths": ["foo"]}, "receiver1"),
        ({"paths": ["/a/*/b"]}, "receiver1"),
        ({"hosts": ["a b"]}, "receiver1"),
        ({"ports": ["8080"]}, "Not_A_Service"),
    ],
    ids=["path without /", "star inside a path", "host with a space", "invalid Service name"],
)
def test_shapes_istio_accepts_but_never_match_are_refused_by_the_library(
    istio: IstioCheck, operation: dict[str, Any], target: str
):
    verdict = istio.check([_by_hand("never", operation, target)])["objects"][0]
    assert problems(verdict) == []  # Istio is silent: the deny would be silent too
    if "paths" in operation:
        declare = functools.partial(Endpoint, paths=operation["paths"])
    elif "hosts" in operation:
        declare = functools.partial(Endpoint, hosts=operation["hosts"])
    else:
        declare = functools.partial(AppPolicy, relation="r", service=target)
    with pytest.raises(MeshDataError):
        declare()


def test_a_unit_policy_without_target_is_namespace_wide_for_istio_and_refused_by_the_library(
    istio: IstioCheck,
):
    manifest = build_authorization_policy(selector_policy())
    del manifest["spec"]["selector"]
    verdict = istio.check([manifest])["objects"][0]
    assert verdict["ztunnel"]["namespace_wide"] is True
    assert any("whole namespace" in p for p in problems(verdict))
    with pytest.raises(MeshDataError, match="every pod in the namespace"):
        MeshPolicy(
            source_namespace=MODEL,
            source_app_name="sender1",
            target_namespace=MODEL,
            target_type=PolicyTargetType.unit,
        )


def test_a_selector_value_with_a_space_is_refused_by_the_library(istio: IstioCheck):
    manifest = build_authorization_policy(selector_policy())
    manifest["spec"]["selector"]["matchLabels"]["tier"] = "has space"
    verdict = istio.check([manifest])["objects"][0]
    # Whatever Istio says of it, no pod can carry that label: the policy could never apply.
    assert verdict["kind"] == "AuthorizationPolicy"
    with pytest.raises(MeshDataError, match="invalid value"):
        MeshPolicy(
            source_namespace=MODEL,
            source_app_name="sender1",
            target_namespace=MODEL,
            target_selector_labels={"tier": "has space"},
            target_type=PolicyTargetType.unit,
        )


def test_the_beacon_refuses_such_a_request_as_invalid_data():
    wire = json.dumps(
        [
            {
                "source_namespace": MODEL,
                "source_app_name": "sender1",
                "target_namespace": MODEL,
                "target_app_name": "receiver1",
                "target_selector_labels": None,
                "target_service": None,
                "target_type": "app",
                "endpoints": [
                    {"hosts": None, "ports": [8080], "methods": None, "paths": ["/x/{foo}"]}
                ],
            }
        ]
    )
    bad = Consumer("receiver1", [], {}, raw_wire=wire)
    manifests, refusals = beacon_manifests(MODEL, [bad], model_on_mesh=False)
    # Only the waypoint's own access to the app's pods: nothing of what it asked for.
    assert [m["metadata"]["name"] for m in manifests] == [waypoint_policy_name("receiver1")]
    assert len(refusals) == 1
    assert refusals[0].reason.startswith("invalid data: policies[0].endpoints[0].paths[0]: ")


def _random_texts(seed: int, alphabet: str, count: int) -> list[str]:
    rng = random.Random(seed)
    texts = {
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(count)
    }
    return sorted(texts)


@pytest.mark.parametrize(
    ("field", "texts"),
    [
        ("paths", _random_texts(11, "//abcab*{}.?%~:-", 400)),
        ("paths", ["/" + t for t in _random_texts(12, "/ab*{}.", 300)]),
        ("hosts", _random_texts(13, "ab.*:-8[] /", 300)),
    ],
    ids=["paths", "paths from /", "hosts"],
)
def test_the_library_and_istio_agree_on_random_values(
    istio: IstioCheck, field: str, texts: list[str]
):
    """What the library accepts, Istio accepts cleanly; what Istio refuses, the library refuses."""

    def accepted(text: str) -> bool:
        try:
            if field == "paths":
                Endpoint(paths=[text])
            else:
                Endpoint(hosts=[text])
        except MeshDataError:
            return False
        return True

    manifests = [_by_hand(f"random-{i}", {field: [text]}) for i, text in enumerate(texts)]
    verdicts = istio.check(manifests)["objects"]
    kept = [text for text in texts if accepted(text)]
    assert 10 <= len(kept) < len(texts)  # the sample holds both kinds
    for text, verdict in zip(texts, verdicts, strict=True):
        if accepted(text):
            assert problems(verdict) == [], text
        if not verdict["webhook"]["allowed"]:
            assert not accepted(text), text
