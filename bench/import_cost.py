"""What a fresh process pays to import the library: paired runs against ``import ops`` alone.

Every hook is a new Python process, so what the library costs at import (and what a consumer's
declarations cost to build) is paid on every hook of every consumer charm. Each pair runs
``python -c "import ops"`` and ``python -c "import ops; <import the library; build declarations>"``
in alternating order, and measures each child's user + system CPU time with ``os.wait4``.

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


@dataclass(frozen=True)
class ImportCost:
    """Medians of child CPU time (user + system), in seconds."""

    pairs: int
    ops_only_s: float
    ops_and_library_s: float
    ops_only_samples: list[float]
    ops_and_library_samples: list[float]
    lightkube_imported: bool

    @property
    def ratio(self) -> float:
        """Library process over ``import ops`` process."""
        return self.ops_and_library_s / self.ops_only_s

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
        }


def _child_cpu(code: str, env: dict[str, str]) -> float:
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{sys.executable} -c {code!r} exited with {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def measure_import_cost(lib_dir: Path, pairs: int = 30) -> ImportCost:
    """Run ``pairs`` alternating pairs of fresh processes and return the medians."""
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
    return ImportCost(
        pairs=pairs,
        ops_only_s=statistics.median(baseline),
        ops_and_library_s=statistics.median(library),
        ops_only_samples=baseline,
        ops_and_library_samples=library,
        lightkube_imported=lightkube_imported,
    )
