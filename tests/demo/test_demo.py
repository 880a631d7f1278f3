"""The local demo is a test: the observed table must be the expected one (docs/demo.md).

It runs the whole demo (``demo.run``): the packed charms through their ``dispatch`` on a real API
server, Istio's waypoint RBAC built from the beacon's policies, real Envoy in front of the
receiver's real servers, each sender's ``probe`` through Envoy with its own identity. A missing
part (packed charm, API server, istio-check, Envoy, root) fails it; nothing is skipped.
"""

from __future__ import annotations

import sys

import demo


def test_the_demo_observes_the_expected_table():
    # Not pytest's tmp_path: a Pebble socket path inside it would pass AF_UNIX's 108 bytes.
    with demo.demo_folder() as workdir:
        result = demo.run(workdir, lambda message: print(message, file=sys.stderr))
    demo.render(result, sys.stdout)
    # The dry-run pass: every request enforcement denies reached the receiver, and Envoy's
    # shadow counter counted each one as a would-be denial.
    dry = [(o.row.sender, o.row.method, o.row.url, o.observed) for o in result.dry_run.rows]
    assert dry == [(r.sender, r.method, r.url, "200") for r in demo.WOULD_DENY]
    assert len(dry) == 6
    assert result.dry_run.shadow_denied == len(dry)
    assert {o.predicted for o in result.dry_run.rows} == {demo.WOULD_DENY_VERDICT}
    assert result.dry_run.status.startswith("dry-run: ")
    table = [(o.row.sender, o.row.method, o.row.url, o.observed) for o in result.rows]
    expected = [(r.sender, r.method, r.url, r.expected) for r in demo.EXPECTED]
    assert table == expected
    assert demo.mismatched(result) == []
    # The beacon's own view agrees and says why the denied row is denied.
    assert result.explanation["verdict"] == "deny"
    assert "receiver1-app-from-sender1" in result.access_map
    assert "receiver1-app-from-sender4-demo-other" in result.access_map
