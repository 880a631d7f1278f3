"""authorization-mode=dry-run on real Envoy: nothing denied, every would-be denial counted.

The beacon's policies for the reference scenario are built the production way with the dry-run
mode on (tests/envoy/beacon_path.py); istiod's own builder turns them into the waypoint's RBAC
(tools/istio-check), which real Envoy runs in front of the echo backend. Every row of the traffic
matrix is sent: each one enforcement denies must reach the backend (200), and Envoy's shadow
counters (per port ``rbac.istio_dry_run_allow_.shadow_denied`` and ``...shadow_allowed``) count
exactly the rows enforcement denies and allows. Switched back to enforce, the 403s return.

The ztunnel side is istiod's translation (no ztunnel runs), recorded with istiod's
``AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY`` off and on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from beacon_path import BEACON, beacon_manifests
from kube_names import DRY_RUN_ANNOTATION
from policies import is_dry_run
from support.envoy_waypoint import Waypoint, run_waypoint, waypoint_stat_prefix
from support.istio_check import IstioCheck, problems
from traffic_scenario import MODEL, SERVICE_PORTS, SERVICES, WAYPOINT_ROWS, Row, consumers
from waypoint import waypoint_name

SHADOW_PREFIX = "istio_dry_run_allow_"


def _manifests(dry_run: bool) -> list[dict[str, Any]]:
    built, refusals = beacon_manifests(MODEL, consumers(), SERVICES, dry_run=dry_run)
    assert refusals == []
    return built


def _rbac(istio: IstioCheck, manifests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return istio.waypoint(
        manifests, services=sorted(SERVICE_PORTS), waypoint=waypoint_name(MODEL, BEACON)
    )


@pytest.fixture(scope="module")
def dry() -> list[dict[str, Any]]:
    return _manifests(dry_run=True)


@pytest.fixture(scope="module")
def dry_waypoint(istio: IstioCheck, dry: list[dict[str, Any]]) -> Iterator[Waypoint]:
    with run_waypoint(_rbac(istio, dry), SERVICE_PORTS) as running:
        yield running


def test_dry_run_only_adds_the_annotation_to_the_app_policies(dry: list[dict[str, Any]]):
    enforced = _manifests(dry_run=False)
    assert [m["metadata"]["name"] for m in dry] == [m["metadata"]["name"] for m in enforced]
    for before, after in zip(enforced, dry, strict=True):
        assert after["spec"] == before["spec"]
        annotations = dict(after["metadata"].get("annotations") or {})
        is_app_policy = "targetRefs" in after["spec"]
        assert is_dry_run(after) is is_app_policy
        annotations.pop(DRY_RUN_ANNOTATION, None)
        assert annotations == (before["metadata"].get("annotations") or {})
    assert sum(is_dry_run(m) for m in dry) == 6  # two app policies per receiver


def _by_name(verdicts: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in verdicts["objects"]}


def test_istio_accepts_every_dry_run_object_with_the_flag_off_and_on(
    istio: IstioCheck, dry: list[dict[str, Any]]
):
    for flag in (False, True):
        verdicts = istio.check(dry, ambient_dry_run=flag)
        assert [p for v in verdicts["objects"] for p in problems(v)] == [], flag
        for verdict in verdicts["objects"]:
            assert verdict["crd_errors"] == []
            assert verdict["webhook"] == {"allowed": True, "errors": [], "warnings": []}


def test_what_istiod_hands_ztunnel_with_the_flag_off_and_on(
    istio: IstioCheck, dry: list[dict[str, Any]]
):
    """The record (docs/envoy-tier.md): ztunnel never gets an app policy; L4 is unchanged."""
    off = _by_name(istio.check(dry, ambient_dry_run=False))
    on = _by_name(istio.check(dry, ambient_dry_run=True))
    enforced = _by_name(istio.check(_manifests(dry_run=False)))
    for manifest in dry:
        name = manifest["metadata"]["name"]
        if is_dry_run(manifest):
            # Flag off: held back, with a status condition saying why (istiod checks the
            # annotation before it sees that the policy is a waypoint's).
            assert off[name]["ztunnel"]["for_waypoint"] is True
            assert off[name]["ztunnel"]["applies"] is True
            assert off[name]["ztunnel"]["authorization"] is None
            assert off[name]["ztunnel"]["status"]["reason"] == "UnsupportedValue"
            assert "dry-run" in off[name]["ztunnel"]["status"]["message"]
            # Flag on: a waypoint policy, so not for ztunnel at all (as when enforced).
            assert on[name]["ztunnel"]["applies"] is False
            assert on[name]["ztunnel"]["authorization"] is None
        else:
            # Unit policies, the waypoint's access, the model operator: enforced, the same
            # Authorization whatever the flag, and the same as in enforce mode.
            for verdicts in (off, on):
                z = verdicts[name]["ztunnel"]
                assert z["applies"] is True
                assert z["status"] is None
                assert z["dry_run"] is False
                assert z["authorization"] == enforced[name]["ztunnel"]["authorization"]


def test_why_the_beacon_never_dry_runs_a_unit_policy(istio: IstioCheck):
    """Were the L4 policies dry-run: flag off, ztunnel gets nothing; flag on, marked dry-run.

    Either way the pods would keep only istiod's enforced ALLOW from the waypoint
    (auto-allow-waypoint-policy, on in istio-k8s), so the unit policy's sender would be refused.
    """
    l4 = []
    for manifest in _manifests(dry_run=False):
        if "selector" in manifest["spec"] and manifest["metadata"]["name"].startswith("receiver1"):
            annotated = {**manifest, "metadata": dict(manifest["metadata"])}
            annotated["metadata"]["annotations"] = {
                **(manifest["metadata"].get("annotations") or {}),
                DRY_RUN_ANNOTATION: "true",
            }
            l4.append(annotated)
    assert len(l4) == 2  # receiver1's unit policy and its waypoint access
    off = _by_name(istio.check(l4, ambient_dry_run=False))
    on = _by_name(istio.check(l4, ambient_dry_run=True))
    for manifest in l4:
        name = manifest["metadata"]["name"]
        assert off[name]["ztunnel"]["authorization"] is None
        assert off[name]["ztunnel"]["status"]["reason"] == "UnsupportedValue"
        assert on[name]["ztunnel"]["status"] is None
        assert on[name]["ztunnel"]["dry_run"] is True
        assert on[name]["ztunnel"]["authorization"]["dryRun"] is True


def test_the_dry_run_rbac_has_shadow_rules_and_no_enforced_rules(
    istio: IstioCheck, dry: list[dict[str, Any]]
):
    for entry in _rbac(istio, dry)["services"]:
        if not entry["policies"]:
            assert entry["http_filters"] == []
            continue
        (http_filter,) = entry["http_filters"]
        config = http_filter["typedConfig"]
        assert "rules" not in config, entry["service"]
        assert config["shadowRulesStatPrefix"] == SHADOW_PREFIX
        assert len(config["shadowRules"]["policies"]) >= len(entry["policies"])


@pytest.mark.parametrize("row", WAYPOINT_ROWS, ids=[row.id for row in WAYPOINT_ROWS])
def test_every_row_reaches_the_backend(dry_waypoint: Waypoint, row: Row):
    reply = dry_waypoint.request(
        row.sender, f"{MODEL}/{row.service}", row.port, row.method, row.path, row.host
    )
    assert (reply.status, reply.from_backend) == (200, True), reply.body


def test_the_shadow_counters_count_exactly_the_would_be_denials(dry_waypoint: Waypoint):
    # Counted afresh: every row once more, after whatever ran before on this Envoy.
    start = dry_waypoint.counters("rbac.")
    for row in WAYPOINT_ROWS:
        reply = dry_waypoint.request(
            row.sender, f"{MODEL}/{row.service}", row.port, row.method, row.path, row.host
        )
        assert reply.status == 200, row.id
    counters = dry_waypoint.counters("rbac.")
    # As on Istio's waypoint, the HTTP stats are per port (every Service on a port shares them).
    denied: Counter[int] = Counter()
    allowed: Counter[int] = Counter()
    for row in WAYPOINT_ROWS:
        if row.service == "bystander":
            continue  # no policy, no RBAC filter: nothing to observe
        (denied if row.expected == 403 else allowed)[row.port] += 1
    for port in sorted({port for ports in SERVICE_PORTS.values() for port in ports}):
        prefix = f"http.{waypoint_stat_prefix(port)}.rbac."

        def delta(name: str, prefix: str = prefix) -> int:
            return counters.get(prefix + name, 0) - start.get(prefix + name, 0)

        # Envoy puts a dot after istiod's shadow stat prefix.
        assert delta(SHADOW_PREFIX + ".shadow_denied") == denied[port], port
        assert delta(SHADOW_PREFIX + ".shadow_allowed") == allowed[port], port
        assert delta("denied") == 0, port
    assert sum(denied.values()) == sum(1 for row in WAYPOINT_ROWS if row.expected == 403)


def test_back_to_enforce_the_403s_return(istio: IstioCheck):
    with run_waypoint(_rbac(istio, _manifests(dry_run=False)), SERVICE_PORTS) as running:
        for row in WAYPOINT_ROWS:
            reply = running.request(
                row.sender, f"{MODEL}/{row.service}", row.port, row.method, row.path, row.host
            )
            assert reply.status == row.expected, row.id
            if row.expected == 403:
                assert reply.body == "RBAC: access denied"
        assert not any("shadow" in name for name in running.counters("rbac."))
