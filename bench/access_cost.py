"""What the ``access-map`` and ``explain`` actions cost as related apps grow.

A benchmark, not a test: it reports figures, and exits non-zero when an action failed or the
reconcile before them did not make the expected AuthorizationPolicies (every request accepted).

For N related apps of K app policies (3 endpoints each, the hook-cost workload), every consumer
on the mesh with its StatefulSet, it runs one config-changed (the beacon creates the N x K
AuthorizationPolicies), then each action ``--repeat`` times through ops.testing and measures the
CPU time of ``ctx.run`` (``time.process_time``), its wall time and its Kubernetes requests; and,
apart, the pure part alone: building the access map (or a verdict) and formatting it from a model
already read. Figures are medians.

Run it with ``tox -e bench`` (after the hook-cost benchmark) or ``python bench/access_cost.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kube_backends import FakeBackend, KubeBackend, RealBackend, real_tier_folder
from ops import testing
from workload import (
    REPO_ROOT,
    Subject,
    beacon_subject,
    build_state,
    check_outcome,
    consumer_app,
    juju_objects,
    source_app,
)

RESULTS = REPO_ROOT / "bench" / "results"
MESH = "istio.io/dataplane-mode"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=200, help="N related apps")
    parser.add_argument("--policies", type=int, default=3, help="K app policies per app")
    parser.add_argument("--repeat", type=int, default=5, help="runs per action; medians")
    parser.add_argument("--fake", action="store_true", help="use the fake API server")
    parser.add_argument("--output", type=Path, default=RESULTS / "access.json")
    return parser.parse_args(argv)


def consumer_statefulsets(namespace: str, waypoint: str, apps: int) -> list[dict[str, Any]]:
    """A StatefulSet per consumer, on the mesh behind the waypoint (as the library labels it)."""
    result: list[dict[str, Any]] = []
    for i in range(apps):
        app = consumer_app(i)
        own = {"app.kubernetes.io/name": app}
        labels = {
            **own,
            MESH: "ambient",
            "istio.io/use-waypoint": waypoint,
            "istio.io/use-waypoint-namespace": namespace,
        }
        result.append(
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": app, "namespace": namespace, "labels": own},
                "spec": {
                    "selector": {"matchLabels": own},
                    "serviceName": f"{app}-endpoints",
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "charm", "image": "charm-base"}]},
                    },
                },
            }
        )
    return result


def _measure(run: Callable[[], object], repeat: int) -> dict[str, float]:
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(repeat):
        gc.collect()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        run()
        cpu.append(time.process_time() - cpu0)
        wall.append(time.perf_counter() - wall0)
    return {
        "cpu_ms": round(statistics.median(cpu) * 1000, 1),
        "wall_ms": round(statistics.median(wall) * 1000, 1),
    }


def open_backend(use_fake: bool) -> tuple[KubeBackend, str]:
    """The real tier when built, else the fake (said so in the report)."""
    if use_fake:
        return FakeBackend(), "fake API server (--fake)"
    folder, why_not = real_tier_folder()
    if folder is None:
        print(f"access bench: real tier not built ({why_not}); using the FAKE", file=sys.stderr)
        return FakeBackend(), f"FAKE API server: real tier not built ({why_not})"
    return RealBackend(folder), f"real kube-apiserver from {folder}"


def actions(apps: int) -> list[tuple[str, str, dict[str, Any]]]:
    """The actions to time: (row name, action, params), for a model of ``apps`` consumers."""
    first, last, source = consumer_app(0), consumer_app(apps - 1), source_app(0)
    return [
        ("access-map table", "access-map", {}),
        ("access-map json", "access-map", {"format": "json"}),
        ("access-map mermaid", "access-map", {"format": "mermaid"}),
        ("access-map app=", "access-map", {"app": first}),
        (
            "explain (allowed)",
            "explain",
            {"source": source, "target": first, "port": 8080, "method": "GET",
             "path": "/v0/api-0/x"},
        ),
        ("explain (nearest miss)", "explain", {"source": source, "target": last,
                                              "port": 9999, "method": "GET", "path": "/x"}),
    ]  # fmt: skip


def measure_actions(
    subject: Subject, backend: KubeBackend, namespace: str, args: argparse.Namespace
) -> tuple[dict[str, dict[str, Any]], int, bool]:
    """Seed the model, reconcile once, then time each action and the engine alone."""
    # The charm's modules are importable once beacon_subject() has put its src/ on the path.
    from access.cluster import read_model  # noqa: PLC0415
    from access.map import build_access_map, explain  # noqa: PLC0415
    from access.report import format_map  # noqa: PLC0415
    from kubernetes_client import make_client  # noqa: PLC0415
    from waypoint import waypoint_name  # noqa: PLC0415

    waypoint = waypoint_name(namespace, subject.app_name)
    backend.create_namespace(namespace)
    backend.seed(juju_objects(subject.app_name, namespace, args.apps))
    backend.seed(consumer_statefulsets(namespace, waypoint, args.apps))
    ctx = subject.make_context()
    state = ctx.run(
        ctx.on.config_changed(), build_state(subject, namespace, args.apps, args.policies)
    )
    error = check_outcome(subject, state, args.apps, args.policies, first=True)
    if error is not None:
        raise SystemExit(f"access bench: FAILED: the reconcile did not do its work: {error}")
    rows: dict[str, dict[str, Any]] = {}
    failed = False
    for name, action, params in actions(args.apps):
        before = backend.snapshot()

        def run(action: str = action, params: dict[str, Any] = params) -> None:
            context = subject.make_context()
            context.run(context.on.action(action, params=params), state)

        try:
            rows[name] = _measure(run, args.repeat)
        except testing.ActionFailed as error:
            print(f"access bench: {name} FAILED: {error.message}", file=sys.stderr)
            failed = True
            continue
        requests = backend.requests_since(before)
        rows[name]["api_requests"] = round(sum(requests.values()) / args.repeat, 1)
    with make_client(subject.app_name, namespace) as client:
        model = read_model(client, namespace, subject.app_name, waypoint, [])
    rows["engine only: map + table"] = _measure(
        lambda: format_map(build_access_map(model), "table"), args.repeat
    )
    rows["engine only: one verdict"] = _measure(
        lambda: explain(
            model, source_app(0), consumer_app(args.apps - 1), 9999, method="GET", path="/x"
        ),
        args.repeat,
    )
    return rows, len(model.policies), failed


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; 1 if an action failed."""
    args = parse_args(argv)
    subject = beacon_subject()
    if subject is None:
        print("access bench: no beacon charm", file=sys.stderr)
        return 2
    backend, label = open_backend(args.fake)
    os.environ["KUBECONFIG"] = str(backend.kubeconfig)
    namespace = f"bench-access-n{args.apps}-k{args.policies}"
    try:
        rows, policies, failed = measure_actions(subject, backend, namespace, args)
    finally:
        backend.close()
    result = {
        "api_server": label,
        "apps": args.apps,
        "policies_per_app": args.policies,
        "authorization_policies": policies,
        "repeat": args.repeat,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"Access actions at N={args.apps}, K={args.policies} ({policies} policies), {label}")
    print(f"{'':<28}{'cpu ms':>8}{'wall ms':>9}{'API requests':>14}")
    for name, row in rows.items():
        requests_text = f"{row['api_requests']:.0f}" if "api_requests" in row else "-"
        print(f"{name:<28}{row['cpu_ms']:>8.0f}{row['wall_ms']:>9.0f}{requests_text:>14}")
    print(f"\nJSON: {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
