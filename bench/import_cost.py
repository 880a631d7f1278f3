"""What a fresh process pays to import the library: paired runs against ``import ops`` alone.

Every hook is a new Python process, so what the library costs at import (and what a consumer's
declarations cost to build) is paid on every hook of every consumer charm. Each pair runs
``python -c "import ops"`` and ``python -c "import ops; <import the library; build declarations>"``
in alternating order, and measures each child's user + system CPU time with ``os.wait4``.

A hook of the beacon starts with ``import charm`` (``charms/beacon/src/charm.py``): that is
measured too, in a hook's environment (``JUJU_UNIT_NAME``, ``JUJU_CHARM_DIR``), unrelated and
related over ``charm-tracing``, against ``import ops`` with ``ops_tracing`` blocked: what ops
costs a charm without tracing (with ``ops-tracing`` installed, ``import ops`` imports it, see
charms/beacon/src/tracing_gate.py). ``import charm`` is every unit's start, and all a non-leader
imports in most hooks. The leader's reconcile then imports the Kubernetes client and builds one:
``import charm`` followed by that (``LEADER``, from a kubeconfig that names an unreachable server,
since no request is made) is what a leader's hook pays before its first request.

Byte code is cached in a private folder (``PYTHONPYCACHEPREFIX``) after one unmeasured warm-up of
each command, as it is on a unit after the first hook: the figures are for a warm cache.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BASELINE = "import ops"
LIBRARY = """\
import ops
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy, Endpoint, Method, ServiceMeshConsumer, UnitPolicy,
)
policies = [
    AppPolicy(
        relation="data",
        endpoints=[Endpoint(ports=[8080], methods=[Method.get, Method.post], paths=["/api/*"])],
    ),
    AppPolicy(relation="admin", endpoints=[Endpoint(ports=[9000], methods=[Method.get])]),
    UnitPolicy(relation="metrics", ports=[9090]),
]
assert ServiceMeshConsumer is not None
"""
#: ``import ops`` as a charm without ops-tracing pays it.
OPS_WITHOUT_TRACING = "import sys; sys.modules['ops_tracing'] = None; import ops"
#: ``import ops`` as ops imports itself with ops-tracing installed (``ops_tracing`` included).
OPS_WITH_TRACING = "import ops"
CHARM = "import charm"
#: What a leader's hook does before its first Kubernetes request: charm.py's _reconciler().
LEADER = (
    "import charm, reconciler, kubernetes_client; kubernetes_client.make_client('beacon', 'm')"
)
#: A kubeconfig for LEADER: the client reads it, never connects. Like lightkube's in-pod
#: configuration (the service account's ``ca.crt`` and token): the cluster's CA from a file,
#: so the client's TLS context trusts that CA alone. (An insecure kubeconfig would take
#: another path, which loads the system's CA bundle: about 20 ms that no unit pays.)
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster: {server: "https://127.0.0.1:9", certificate-authority: ca.crt}
users:
- name: bench
  user: {token: bench}
contexts:
- name: bench
  context: {cluster: bench, user: bench, namespace: m}
current-context: bench
"""
#: The CA of that kubeconfig: a self-signed certificate made for the benchmark (no key kept).
CLUSTER_CA = """\
-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUeBl0mW8MxPaHeFTp/7eQ9YT4JFowCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQYmVuY2gtY2x1c3Rlci1jYTAeFw0yNjEyMDcxMjI1MzBaFw0z
NjEyMDQxMjI1MzBaMBsxGTAXBgNVBAMMEGJlbmNoLWNsdXN0ZXItY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAASnsr9YPehtaZXyvf+puWiScdKSo64iDsVbRmPn
Te5KdsaOsquWej7WJfS0c/4Bt2KQP0h51SqUbgHUhjh10vguo1MwUTAdBgNVHQ4E
FgQUZeuAmUfqxYZkcB8/3M8pMIoZ1GgwHwYDVR0jBBgwFoAUZeuAmUfqxYZkcB8/
3M8pMIoZ1GgwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAoMlN
nu70TS92WWNlSGCi7QD6iMpPK7KEhs6prs2b62MCIBKazJ2nxbR1JMozS8szuvTe
vtSg/Mj/m/4K4nIeMf0V
-----END CERTIFICATE-----
"""


@dataclass(frozen=True)
class ImportCost:
    """Medians of child CPU time (user + system), in seconds."""

    pairs: int
    ops_only_s: float
    ops_and_library_s: float
    ops_only_samples: list[float]
    ops_and_library_samples: list[float]
    lightkube_imported: bool
    ops_without_tracing_s: float = float("nan")
    charm_s: float = float("nan")
    charm_traced_s: float = float("nan")
    ops_with_tracing_s: float = float("nan")
    charm_modules: tuple[str, ...] = ()
    leader_s: float = float("nan")
    leader_modules: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        """Library process over ``import ops`` process."""
        return self.ops_and_library_s / self.ops_only_s

    @property
    def charm_ratio(self) -> float:
        """A beacon hook's start (unrelated to tracing) over ``import ops`` without tracing."""
        return self.charm_s / self.ops_without_tracing_s

    @property
    def traced_ratio(self) -> float:
        """A beacon hook's start related to tracing over ``import ops`` as ops imports itself.

        With ``ops-tracing`` installed, ``import ops`` imports ``ops_tracing``: the cost of ops
        for a charm that traces, which is what a unit related over ``charm-tracing`` needs.
        """
        return self.charm_traced_s / self.ops_with_tracing_s

    @property
    def leader_ratio(self) -> float:
        """A leader's hook up to its first request over ``import ops`` without tracing."""
        return self.leader_s / self.ops_without_tracing_s

    def to_dict(self) -> dict[str, object]:
        """JSON-ready figures."""
        return {
            "pairs": self.pairs,
            "ops_only_cpu_s": self.ops_only_s,
            "ops_and_library_cpu_s": self.ops_and_library_s,
            "ratio": self.ratio,
            "lightkube_imported_by_library": self.lightkube_imported,
            "ops_only_samples_s": self.ops_only_samples,
            "ops_and_library_samples_s": self.ops_and_library_samples,
            "ops_without_tracing_cpu_s": self.ops_without_tracing_s,
            "charm_cpu_s": self.charm_s,
            "charm_ratio": self.charm_ratio,
            "charm_related_to_tracing_cpu_s": self.charm_traced_s,
            "ops_with_tracing_cpu_s": self.ops_with_tracing_s,
            "charm_related_to_tracing_ratio": self.traced_ratio,
            "heavy_modules_charm_imports": list(self.charm_modules),
            "leader_until_first_request_cpu_s": self.leader_s,
            "leader_ratio": self.leader_ratio,
            "heavy_modules_leader_imports": list(self.leader_modules),
        }


#: Packages worth naming when a hook's start imports them.
HEAVY = (
    "ops_tracing",
    "opentelemetry.sdk",
    "pydantic",
    "lightkube",
    "httpx2",
    "httpcore2",
    "httpx",
    "cosl",
    "access",
)


def _child_cpu(code: str, env: dict[str, str]) -> float:
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{sys.executable} -c {code!r} exited with {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def measure_import_cost(
    lib_dir: Path, pairs: int = 30, charm_src: Path | None = None
) -> ImportCost:
    """Run ``pairs`` alternating pairs of fresh processes and return the medians.

    With ``charm_src``, also time the beacon's hook start (``import charm`` from there).
    """
    with tempfile.TemporaryDirectory(prefix="bench-pycache-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPATH"] = str(lib_dir)
        env["PYTHONPYCACHEPREFIX"] = cache
        for code in (BASELINE, LIBRARY):  # warm the byte-code cache, unmeasured
            _child_cpu(code, env)
        probe = LIBRARY + "import sys; sys.exit(1 if 'lightkube' in sys.modules else 0)\n"
        lightkube_imported = (
            subprocess.run([sys.executable, "-c", probe], env=env, check=False).returncode != 0
        )
        baseline: list[float] = []
        library: list[float] = []
        for i in range(pairs):
            order = [(BASELINE, baseline), (LIBRARY, library)]
            if i % 2:
                order.reverse()
            for code, samples in order:
                samples.append(_child_cpu(code, env))
        charm = _charm_start(env, charm_src, pairs) if charm_src else None
    nan = float("nan")
    return ImportCost(
        pairs=pairs,
        ops_only_s=statistics.median(baseline),
        ops_and_library_s=statistics.median(library),
        ops_only_samples=baseline,
        ops_and_library_samples=library,
        lightkube_imported=lightkube_imported,
        ops_without_tracing_s=charm.ops_s if charm else nan,
        charm_s=charm.charm_s if charm else nan,
        charm_traced_s=charm.traced_s if charm else nan,
        ops_with_tracing_s=charm.traced_ops_s if charm else nan,
        charm_modules=charm.modules if charm else (),
        leader_s=charm.leader_s if charm else nan,
        leader_modules=charm.leader_modules if charm else (),
    )


@dataclass(frozen=True)
class _CharmStart:
    ops_s: float
    traced_ops_s: float
    charm_s: float
    traced_s: float
    modules: tuple[str, ...]
    leader_s: float
    leader_modules: tuple[str, ...]


def _heavy_modules(code: str, env: dict[str, str]) -> tuple[str, ...]:
    """Which of :data:`HEAVY` ``code`` leaves imported."""
    probe = code + f"\nimport sys; print(' '.join(m for m in {HEAVY!r} if sys.modules.get(m)))"
    return tuple(
        subprocess.run(
            [sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True
        ).stdout.split()
    )


def _charm_start(env: dict[str, str], charm_src: Path, pairs: int) -> _CharmStart:
    """Medians of ``import charm`` (unrelated, related to tracing), a leader's start, and ops."""
    with tempfile.TemporaryDirectory(prefix="bench-charm-dir-") as charm_dir:
        kubeconfig = Path(charm_dir) / "kubeconfig"
        kubeconfig.write_text(KUBECONFIG)
        (Path(charm_dir) / "ca.crt").write_text(CLUSTER_CA)
        hook = {
            **env,
            "PYTHONPATH": os.pathsep.join([str(charm_src), env["PYTHONPATH"]]),
            "JUJU_UNIT_NAME": "beacon/0",
            "JUJU_CHARM_DIR": charm_dir,
            "KUBECONFIG": str(kubeconfig),
        }
        traced_dir = Path(charm_dir) / "traced"
        traced_dir.mkdir()
        (traced_dir / ".charm-tracing-related").write_text("related\n")
        traced = {**hook, "JUJU_CHARM_DIR": str(traced_dir)}
        commands = [
            (OPS_WITHOUT_TRACING, hook),
            (CHARM, hook),
            (CHARM, traced),
            (LEADER, hook),
            (OPS_WITH_TRACING, traced),
        ]
        for code, code_env in commands:  # warm the byte-code cache, unmeasured
            _child_cpu(code, code_env)
        modules = _heavy_modules(CHARM, hook)
        leader_modules = _heavy_modules(LEADER, hook)
        samples: list[list[float]] = [[] for _ in commands]
        for i in range(pairs):
            order = list(zip(commands, samples, strict=True))
            if i % 2:
                order.reverse()
            for (code, code_env), into in order:
                into.append(_child_cpu(code, code_env))
    return _CharmStart(
        ops_s=statistics.median(samples[0]),
        charm_s=statistics.median(samples[1]),
        traced_s=statistics.median(samples[2]),
        modules=modules,
        leader_s=statistics.median(samples[3]),
        leader_modules=leader_modules,
        traced_ops_s=statistics.median(samples[4]),
    )
