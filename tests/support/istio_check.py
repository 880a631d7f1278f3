"""Ask Istio's own code about AuthorizationPolicies, through tools/istio-check (a Go program).

The tool is built from the istio.io/istio module by ``tools/istio-check/build.sh`` (cached by
version; the first build takes 10-15 minutes). It runs in-process what istiod runs on a cluster:
the CRD schema and CEL rules, the validating webhook, the translation for ztunnel, and the Envoy
RBAC filter for the waypoint. See docs/contributing/envoy-tier.md.

Usage::

    tool = IstioCheck.build()
    verdicts = tool.check(manifests)          # {"ok": bool, "objects": [...]}
    rbac = tool.waypoint(manifests)           # {"services": [{"service", "http_filters", ...}]}
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "istio-check" / "build.sh"


class IstioCheckError(RuntimeError):
    """The tool could not be built or did not complete a run."""


@dataclass(frozen=True)
class IstioCheck:
    """A built istio-check: the binary and the CRD file of the same Istio version."""

    folder: Path

    @property
    def binary(self) -> Path:
        """The istio-check executable."""
        return self.folder / "istio-check"

    @classmethod
    def build(cls) -> IstioCheck:
        """Build the tool, or find it in the cache; fails (never skips) when it cannot be built."""
        return _built()

    def run(self, args: Sequence[str], objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Run ``istio-check ARGS -`` with ``objects`` as JSON on stdin; return its JSON answer."""
        payload = json.dumps(list(objects))
        done = subprocess.run(
            [str(self.binary), *args, "-"],
            input=payload,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise IstioCheckError(
                f"istio-check {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
            )
        # Istio's packages log a few lines to stdout while they initialize, before main runs;
        # the answer is the one JSON document after them, which starts with a line "{".
        start = re.search(r"^\{$", done.stdout, re.MULTILINE)
        if start is None:
            raise IstioCheckError(f"istio-check printed no JSON:\n{done.stdout[-2000:]}")
        return json.loads(done.stdout[start.start() :])

    def check(self, objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Istio's validation (CRD + CEL, webhook) and ztunnel translation of every object."""
        return self.run(["check"], objects)

    def waypoint(
        self,
        objects: Iterable[Mapping[str, Any]],
        services: Sequence[str] = (),
        waypoint: str = "waypoint",
    ) -> dict[str, Any]:
        """The waypoint's RBAC HTTP filters per Service (``NS/NAME``; default: every target)."""
        args = ["waypoint", "--waypoint", waypoint]
        for service in services:
            args += ["--service", service]
        return self.run(args, objects)


@functools.cache
def _built() -> IstioCheck:
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=3600, check=False
    )
    if done.returncode != 0:
        raise IstioCheckError(
            f"tools/istio-check/build.sh failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    folder = Path(done.stdout.strip().splitlines()[-1])
    tool = IstioCheck(folder)
    if not tool.binary.is_file():
        raise IstioCheckError(f"build.sh printed {folder}, which holds no istio-check binary")
    return tool


def problems(verdict: Mapping[str, Any]) -> list[str]:
    """Every error and warning Istio reported for one object of ``check``'s answer, as text."""
    name = f"{verdict['kind']} {verdict['namespace']}/{verdict['name']}"
    found = [f"{name}: CRD: {error}" for error in verdict["crd_errors"]]
    webhook = verdict["webhook"]
    if not webhook["allowed"]:
        found.append(f"{name}: webhook refused: {'; '.join(webhook['errors'])}")
    found += [f"{name}: webhook warning: {warning}" for warning in webhook["warnings"]]
    ztunnel = verdict.get("ztunnel")
    if ztunnel and ztunnel["applies"]:
        if ztunnel["status"]:
            found.append(f"{name}: ztunnel: {ztunnel['status']['message']}")
        if ztunnel["dropped_rules"]:
            found.append(f"{name}: ztunnel dropped {ztunnel['dropped_rules']} rule(s)")
        if ztunnel["deny_all"]:
            found.append(f"{name}: ztunnel gets an ALLOW policy with no rule: deny all")
        if ztunnel["namespace_wide"]:
            found.append(f"{name}: ztunnel applies it to the whole namespace ({ztunnel['scope']})")
    return found


#: Istio's own bootstrap for an ambient proxy (a waypoint), as Istio's bootstrap tests pin it: the
#: output of its bootstrap generator (pkg/bootstrap) for ambient, in the istio.io/istio module
#: that tools/istio-check is built against.
AMBIENT_BOOTSTRAP = "pkg/bootstrap/testdata/ambient_golden.json"


@functools.cache
def istio_module_dir() -> Path:
    """The istio.io/istio module tools/istio-check builds against, in Go's module cache.

    Asks Go (``go mod download``, which reads the cache or the module proxy); fails, never skips,
    when Go cannot tell.
    """
    done = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio"],
        cwd=BUILD_SCRIPT.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "GOWORK": "off", "GOFLAGS": "-mod=readonly"},
    )
    folder = Path(done.stdout.strip()) if done.returncode == 0 else None
    if folder is None or not folder.is_dir():
        raise IstioCheckError(f"go list -m istio.io/istio failed: {done.stderr.strip()}")
    return folder


def istio_stats_config() -> dict[str, Any]:
    """The ``stats_config`` Istio's bootstrap gives an ambient proxy (a waypoint).

    Its ``stats_tags`` are how Istio's proxies name their stats in Prometheus (which parts of a
    stat's name become labels: ``http_conn_manager_prefix``, ``authz_enforce_result``,
    ``authz_dry_run_action``, ``authz_dry_run_result``...), its ``stats_matcher`` which stats
    they export at all.
    """
    bootstrap = json.loads((istio_module_dir() / AMBIENT_BOOTSTRAP).read_text())
    return bootstrap["stats_config"]
