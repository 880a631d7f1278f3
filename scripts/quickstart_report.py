"""The quick start's table: every expected row, what was observed for it, and whether it matched.

Usage: python3 quickstart_report.py CASES OBSERVED

CASES has one `unit|method|url|expected` line per request the quick start sends (expected: an
HTTP status, or `denied` for a refused or reset connection); OBSERVED one
`unit|method|url|expected|outcome|status` line per result that came back. Exit status 0 only
when every case has exactly one result and it matched: a row missing (its sender's probe did not
run) is a failure, never a smaller table that passes.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _rows(path: str, width: int) -> list[list[str]]:
    rows = [line.rstrip("\n").split("|") for line in Path(path).read_text().splitlines()]
    return [row for row in rows if row != [""] and len(row) == width]


def verdict(outcome: str, status: str) -> str:
    """An observed outcome in words."""
    if outcome == "response":
        known = {"200": "allowed (200)", "403": "denied by the waypoint (403)"}
        return known.get(status, f"HTTP {status}")
    if outcome in ("refused", "reset"):
        return f"denied by ztunnel ({outcome})"
    return outcome


def matches(expected: str, outcome: str, status: str) -> bool:
    """Whether an observed outcome is the expected one."""
    if expected == "denied":
        return outcome in ("refused", "reset")
    return outcome == "response" and status == expected


def main(argv: list[str]) -> int:
    """Print the table; return 1 when a row is missing, repeated or differs."""
    cases_path, observed_path = argv
    cases = _rows(cases_path, 4)
    observed: dict[tuple[str, str, str], list[list[str]]] = {}
    for row in _rows(observed_path, 6):
        observed.setdefault((row[0], row[1], row[2]), []).append(row)
    problems = 0
    print(f"{'from':<11} {'request':<82} {'observed':<34} expected")
    for unit, method, url, expected in cases:
        want = "denied (refused/reset)" if expected == "denied" else expected
        found = observed.get((unit, method, url), [])
        if len(found) != 1:
            problems += 1
            seen = "no result" if not found else f"{len(found)} results"
            print(f"{unit:<11} {method + ' ' + url:<82} {seen:<34} {want}   <-- missing")
            continue
        outcome, status = found[0][4], found[0][5]
        ok = matches(expected, outcome, status)
        problems += not ok
        mark = "" if ok else "   <-- differs"
        print(f"{unit:<11} {method + ' ' + url:<82} {verdict(outcome, status):<34} {want}{mark}")
    print()
    if not cases:
        print("no expected rows: nothing was checked")
        return 1
    if problems:
        print(f"{problems} request(s) missing or different from the expectation")
        return 1
    print("every request behaved as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
