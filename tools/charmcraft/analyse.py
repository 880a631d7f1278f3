"""Run ``charmcraft analyse`` on packed charms; fail when any check says error or fatal.

Usage: ``python tools/charmcraft/analyse.py CHARM [CHARM ...]`` with the pinned charmcraft on PATH
(``tox -e analyse`` runs it through ``tools/charmcraft/env.sh``). Prints every check of every charm
and exits 1 when one of them is an error (or the tool could not run).

One known crash is not counted: charmcraft 4.5's ``pydeps`` linter looks for
``venv/lib/python*/site-packages``, which the charm plugin does not make (it flattens
site-packages into ``venv/``), so on these charms it always ends in an uncaught ``StopIteration``
reported as fatal. That result (and only that one) is shown as not counted; ``tests/dispatch``
checks what it would have (every PYDEPS of every library in the packed charm is satisfied by the
packed venv). Any other pydeps result counts like every other check.
"""

from __future__ import annotations

import json
import subprocess
import sys

FAILING = frozenset({"error", "fatal"})


def known_crash(check: dict[str, str]) -> bool:
    """Whether ``check`` is pydeps' crash on a flattened venv (see the module docstring)."""
    return check["name"] == "pydeps" and "StopIteration" in check.get("text", "")


def analyse(charm: str) -> list[str]:
    """Analyse one charm; print its checks; return the failing ones as printable lines."""
    result = subprocess.run(
        ["charmcraft", "analyse", "--format=json", charm],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        checks = json.loads(result.stdout)
    except json.JSONDecodeError:
        return [f"{charm}: charmcraft analyse exited {result.returncode}:\n{result.stderr}"]
    failures: list[str] = []
    print(f"{charm}:")
    for check in checks:
        line = f"  {check['name']}: [{check['result'].upper()}] {check.get('text', '')}".rstrip()
        if known_crash(check):
            print(f"{line} (not counted: the linter cannot read the charm plugin's venv)")
            continue
        print(line)
        if check["result"].lower() in FAILING:
            failures.append(f"{charm}: {line.strip()}")
    if not checks:
        failures.append(f"{charm}: charmcraft analyse ran no check")
    return failures


def main(charms: list[str]) -> int:
    """Analyse every charm given; return the exit code."""
    if not charms:
        print("usage: analyse.py CHARM [CHARM ...]", file=sys.stderr)
        return 2
    failures = [line for charm in charms for line in analyse(charm)]
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
