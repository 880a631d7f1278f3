"""The access engine against Istio itself: real Envoy at the waypoint, istiod's ztunnel conversion.

For many seeded policy sets and requests (tests/support/access_cases.py), the engine's decision at
the waypoint must equal what real Envoy answers when it runs the RBAC filter istiod builds for the
Service (tools/istio-check), and its decision at the pods must equal istiod's conversion of the
same policies for ztunnel, read with ztunnel's rules. Every case has its own Service, so one Envoy
and one istio-check run serve them all.
"""

from __future__ import annotations

import pytest
from support.access_cases import (
    compare_with_envoy,
    compare_with_istiod,
    waypoint_cases,
    ztunnel_cases,
)
from support.envoy_waypoint import run_waypoint
from support.istio_check import IstioCheck, problems

CASES = 60  # x 24 requests each


def test_generated_policies_pass_istio_validation(istio: IstioCheck):
    cases = waypoint_cases(CASES) + ztunnel_cases(CASES, l7_at_pods=True)
    verdicts = istio.check([m for case in cases for m in case.manifests])["objects"]
    refused = [p for v in verdicts for p in problems(v) if "refused" in p or ": CRD:" in p]
    assert refused == []


def test_the_engine_decides_like_envoy_at_the_waypoint(istio: IstioCheck):
    seen = compare_with_envoy(istio, run_waypoint, waypoint_cases(CASES))
    assert seen.asked == CASES * 24
    assert seen.answers == {"200", "403"}
    assert seen.mismatches == ()


@pytest.mark.parametrize("l7_at_pods", [False, True])
def test_the_engine_decides_like_istiods_ztunnel_conversion(istio: IstioCheck, l7_at_pods: bool):
    seen = compare_with_istiod(istio, ztunnel_cases(CASES, l7_at_pods=l7_at_pods))
    assert seen.asked == CASES * 24
    assert seen.answers == {"allow", "deny"}
    assert seen.mismatches == ()
