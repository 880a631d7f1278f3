"""A hook imports what it needs, when it needs it (charm.py's docstring; issue 24).

Every hook is a fresh process, so what ``import charm`` pulls in is paid by every hook of every
unit. The access engine serves only the actions; the Kubernetes client (lightkube and its HTTP
client) only the units that talk to Kubernetes: the leader's reconcile and the last unit's
teardown. Each test runs in a fresh process, as ``dispatch`` does, and reads ``sys.modules``.
The same process then runs hooks through ops.testing, so a test also proves that the modules do
load where they are needed (the check looks for the right names).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import APP

SRC = Path(__file__).resolve().parents[3] / "charms" / "beacon" / "src"
#: Top-level modules a hook should import only when it needs them.
WATCHED = (
    "lightkube",
    "httpx2",
    "httpx",
    "httpcore2",
    "access",
    "reconciler",
    "kubernetes_client",
    "cosl",
)
#: A cluster nobody serves: the leader builds its client (and its HTTP transport), then fails
#: to connect.
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}
users:
- name: nobody
  user: {token: nobody}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: nobody, namespace: m}
current-context: nowhere
"""

PROBE = """\
import json, os, sys

WATCHED = {watched!r}


def loaded():
    # A None entry is a module made unimportable, not one loaded.
    names = {{name.split(".")[0] for name, module in sys.modules.items() if module is not None}}
    return sorted(names & set(WATCHED))


import charm  # a hook's start, as dispatch runs it

seen = {{"start": loaded()}}
# ops.testing sets the hook's environment itself.
for name in ("JUJU_UNIT_NAME", "JUJU_CHARM_DIR"):
    os.environ.pop(name)
from ops import testing

ctx = testing.Context(charm.IstioBeaconCharm, app_name={app!r})
mesh = testing.Relation("service-mesh", remote_app_name="consumer")
metrics = testing.Relation("metrics-endpoint", remote_app_name="prometheus")
peers = testing.PeerRelation("peers", peers_data={{1: {{}}}})
follower = testing.State(leader=False, relations=[mesh, metrics, peers])
for event in (
    ctx.on.config_changed(),
    ctx.on.update_status(),
    ctx.on.relation_changed(mesh),
    ctx.on.relation_joined(peers, remote_unit=1),
    ctx.on.leader_elected(),
):
    out = ctx.run(event, follower)
    assert out.unit_status == testing.ActiveStatus("standby"), out.unit_status
seen["follower"] = loaded()
leader = testing.State(leader=True, relations=[mesh, metrics, peers])
out = ctx.run(ctx.on.config_changed(), leader)
# No API server here: the leader's reconcile reports it, having imported the client.
assert "cannot reach Kubernetes" in out.unit_status.message, out.unit_status
seen["leader"] = loaded()
try:
    ctx.run(ctx.on.action("access-map"), follower)
except testing.ActionFailed as failed:
    assert "cannot reach Kubernetes" in failed.message, failed.message
else:
    raise AssertionError("access-map answered without an API server")
seen["action"] = loaded()
print(json.dumps(seen))
"""


def run_probe(tmp_path: Path) -> dict[str, list[str]]:
    """Start a hook's process in ``tmp_path`` (its charm folder), then run hooks in it."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    env = {
        **os.environ,
        "JUJU_CHARM_DIR": str(tmp_path),
        "JUJU_UNIT_NAME": f"{APP}/1",
        # Nowhere to reach: a leader's reconcile must fail to connect, not find a cluster.
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(watched=WATCHED, app=APP)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_imports_follow_what_each_hook_needs(tmp_path: Path) -> None:
    seen = run_probe(tmp_path)

    # Every hook's start: neither the Kubernetes client nor the access engine.
    assert seen["start"] == []
    # A non-leader unit's hooks (reconcile, status, relations) never talk to Kubernetes.
    assert seen["follower"] == []
    # The leader's reconcile does, and imports the client to do it.
    assert {"lightkube", "httpx2", "httpcore2", "kubernetes_client", "reconciler"} <= set(
        seen["leader"]
    )
    assert "access" not in seen["leader"]
    # The actions import the access engine.
    assert "access" in seen["action"]
