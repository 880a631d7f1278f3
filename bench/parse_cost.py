"""What reading one hostile ``policies`` value costs, at the size limit.

A benchmark, not a test: it reports figures, and exits non-zero only when a value that must be
refused was accepted (or one that must be accepted was refused). The provider parses every
relation's request in one hook, so one value that is slow to refuse delays every relation's
policies; the property that makes the scan before parsing linear is tested in
``tests/unit/lib/test_parsing_properties.py`` (``test_the_string_scan_before_parsing_is_linear``).

For each shape of value, at sizes up to ``MAX_POLICIES_BYTES``, it measures the CPU time of
``parse_policies`` (``time.process_time``, median of ``--repeat``) and prints it per MiB, so that
a cost that grows faster than the text shows as a rising column.

Run it with ``tox -e bench`` or ``python bench/parse_cost.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

from charms.istio_beacon_k8s.v0.service_mesh import (
    MAX_POLICIES_BYTES,
    MeshDataError,
    parse_policies,
)

MIB = 1_048_576


def _policy(index: int) -> dict[str, object]:
    return {
        "source_namespace": "mesh-model",
        "source_app_name": f"sender{index}",
        "target_namespace": "mesh-model",
        "target_app_name": "receiver",
        "target_selector_labels": None,
        "target_service": None,
        "target_type": "app",
        "endpoints": [{"hosts": None, "ports": [8080], "methods": ["GET"], "paths": ["/api/*"]}],
    }


def _valid(size: int) -> str:
    """As many honest policies as fit in ``size`` characters (accepted)."""
    one = len(json.dumps(_policy(0))) + 2
    return json.dumps([_policy(i) for i in range(max(1, min(1000, size // one)))])


#: Shape name -> (text of about ``size`` characters, whether it must be accepted).
SHAPES: dict[str, tuple[Callable[[int], str], bool]] = {
    "unterminated string of escaped quotes": (lambda size: '"' + '\\"' * (size // 2 - 1), False),
    "the same, ending in a lone backslash": (
        lambda size: '"' + '\\"' * (size // 2 - 2) + "\\",
        False,
    ),
    "brackets nested past the limit": (lambda size: "[" * (size // 2) + "]" * (size // 2), False),
    "a number past the digit limit": (lambda size: '[{"n": ' + "9" * (size - 10) + "}]", False),
    "a string of backslash escapes": (lambda size: '["' + "\\\\" * (size // 2 - 3) + '"]', False),
    "honest policies (up to 1000)": (_valid, True),
}


def measure(text: str, repeat: int) -> tuple[float, bool]:
    """Median CPU seconds of ``parse_policies(text)``, and whether it was accepted."""
    samples: list[float] = []
    accepted = False
    for _ in range(repeat):
        start = time.process_time()
        try:
            parse_policies(text)
            accepted = True
        except MeshDataError:
            accepted = False
        samples.append(time.process_time() - start)
    return statistics.median(samples), accepted


def main(argv: list[str] | None = None) -> int:
    """Print the table; 1 if a value was accepted or refused against its shape's expectation."""
    parser = argparse.ArgumentParser(description="What reading one hostile policies value costs.")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [MAX_POLICIES_BYTES // 16, MAX_POLICIES_BYTES // 4, MAX_POLICIES_BYTES]
    print(f"parse_policies CPU, median of {args.repeat} (ms; in brackets: ms per MiB)")
    print(f"{'value':<40}" + "".join(f"{size // 1024:>16} KiB" for size in sizes))
    wrong = False
    for name, (make, must_accept) in SHAPES.items():
        cells: list[str] = []
        for size in sizes:
            text = make(size)
            cpu, accepted = measure(text, args.repeat)
            if accepted != must_accept:
                wrong = True
                cells.append(f"{'ACCEPTED' if accepted else 'REFUSED':>20}")
                continue
            cells.append(f"{cpu * 1000:>10.1f} ({cpu * 1000 * MIB / len(text):>6.1f})")
        print(f"{name:<40}" + "".join(cells))
    if wrong:
        print("FAILED: a value was accepted or refused against its shape's expectation")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
