"""Run the unit tests: each suite in its own pytest process, or only the suites a path names.

The suites cannot share one process: the beacon's and the tester's ``src/`` both hold a
``charm.py``, so each charm's tests run with only its own ``src/`` on the import path.

    python scripts/unit.py [--coverage] [--suites lib,beacon,...] [PYTEST ARGS...]

Arguments that name a file or folder under ``tests/unit`` (``tests/unit/beacon/test_x.py``,
``tests/unit/lib/test_y.py::test_z``) choose the suites to run and go only to theirs; every other
argument (``-k expr``, ``-x``) goes to each suite that runs. With ``--coverage`` (tox -e unit), the
charms' and the library's suites run under coverage; the library's coverage floor is checked only
on a whole run (no arguments), since one file cannot reach it. Run from the repository root, in an
environment with the test requirements (tox sets ``PYTHONPATH`` to ``lib`` and ``tests``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = "lib/charms/istio_beacon_k8s/v0/service_mesh.py"
LIBRARY_COVERAGE_FLOOR = 90


@dataclass(frozen=True)
class Suite:
    """One pytest process: a folder of tests and what it adds to the import path."""

    name: str
    pythonpath: tuple[str, ...] = ()
    covered: bool = True

    @property
    def folder(self) -> Path:
        """The suite's folder: ``tests/unit/<name>``."""
        return REPO / "tests" / "unit" / self.name


SUITES = (
    Suite("lib"),
    Suite("beacon", ("charms/beacon/src", "bench")),
    Suite("tester", ("charms/tester/src",)),
    # The integration tier's helpers (tests/integration), tested without Juju; not shipped code.
    Suite("integration_helpers", ("tests/integration", "charms/beacon/src"), covered=False),
)


def suite_of(argument: str) -> Suite | None:
    """The suite whose folder holds the file or folder ``argument`` names, if it names one."""
    path = Path(argument.split("::", 1)[0])
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists():
        return None
    path = path.resolve()
    for suite in SUITES:
        if path == suite.folder or suite.folder in path.parents:
            return suite
    return None


def main(argv: list[str]) -> int:
    """Run the chosen suites; the exit code is the first failure's, else 0."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--coverage", action="store_true", help="measure branch coverage")
    parser.add_argument(
        "--suites",
        default=",".join(s.name for s in SUITES),
        help="comma-separated suites to consider (default: all)",
    )
    known, rest = parser.parse_known_args(argv)
    allowed = {s.name for s in SUITES} & set(known.suites.split(","))

    targets: dict[str, list[str]] = {}
    options: list[str] = []
    for argument in rest:
        suite = suite_of(argument) if not argument.startswith("-") else None
        if suite is not None:
            targets.setdefault(suite.name, []).append(argument)
        elif not argument.startswith("-") and Path(argument.split("::", 1)[0]).exists():
            sys.stderr.write(
                f"unit.py: {argument} is not under tests/unit/{{{','.join(sorted(allowed))}}}; "
                "other tiers have their own tox environment (see tox.ini)\n"
            )
            return 2
        else:
            options.append(argument)
    chosen = [s for s in SUITES if s.name in allowed and (not targets or s.name in targets)]
    if targets and not chosen:
        sys.stderr.write(f"unit.py: no suite of {sorted(targets)} is run here ({known.suites})\n")
        return 2

    run_coverage = known.coverage
    if run_coverage:
        subprocess.run([sys.executable, "-m", "coverage", "erase"], cwd=REPO, check=True)
    codes: list[int] = []
    for suite in chosen:
        command = [sys.executable, "-m"]
        if run_coverage and suite.covered:
            command += ["coverage", "run", "-p", "-m"]
        command += ["pytest", *targets.get(suite.name, [str(suite.folder.relative_to(REPO))])]
        if suite.pythonpath:
            command += ["-o", "pythonpath=" + " ".join(suite.pythonpath)]
        command += options
        print("unit.py:", " ".join(command[1:]), flush=True)
        codes.append(subprocess.run(command, cwd=REPO, check=False).returncode)
    # A -k that selects nothing in one suite (pytest's 5) is fine when another suite ran tests.
    failure = next((c for c in codes if c not in {0, 5}), 0)
    if not failure and 5 in codes and (0 not in codes or targets):
        failure = 5
    # Only the covered suites leave coverage data: a run of the helpers' suite alone has none.
    if run_coverage and any(suite.covered for suite in chosen):
        report = [sys.executable, "-m", "coverage", "report"]
        subprocess.run([sys.executable, "-m", "coverage", "combine"], cwd=REPO, check=True)
        failure = failure or subprocess.run(report, cwd=REPO, check=False).returncode
        if not rest:
            floor = [*report, f"--include={LIBRARY}", f"--fail-under={LIBRARY_COVERAGE_FLOOR}"]
            failure = failure or subprocess.run(floor, cwd=REPO, check=False).returncode
    return failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
