"""The quick start passes only when every expected row came back and matched; never under sudo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
REPORT = REPO / "scripts" / "quickstart_report.py"
CASES = [
    "sender/0|GET|http://receiver:8080/foo|200",
    "sender/0|DELETE|http://receiver:8080/foo|403",
    "stranger/0|GET|http://receiver:8080/foo|denied",
]


def report(tmp_path: Path, observed: list[str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "cases").write_text("\n".join(CASES) + "\n")
    (tmp_path / "observed").write_text("".join(f"{line}\n" for line in observed))
    return subprocess.run(
        [sys.executable, str(REPORT), str(tmp_path / "cases"), str(tmp_path / "observed")],
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_row_back_and_matching_passes(tmp_path: Path):
    done = report(
        tmp_path,
        [
            f"{CASES[0]}|response|200",
            f"{CASES[1]}|response|403",
            f"{CASES[2]}|reset|None",
        ],
    )
    assert done.returncode == 0, done.stdout
    assert "every request behaved as expected" in done.stdout


def test_a_sender_whose_probe_did_not_run_fails(tmp_path: Path):
    # stranger's `juju run` failed: its row never came back, and the others all match.
    done = report(tmp_path, [f"{CASES[0]}|response|200", f"{CASES[1]}|response|403"])
    assert done.returncode == 1
    assert "stranger/0  GET http://receiver:8080/foo" in done.stdout
    assert "no result" in done.stdout
    assert "1 request(s) missing or different" in done.stdout


def test_a_differing_row_fails(tmp_path: Path):
    done = report(
        tmp_path,
        [f"{CASES[0]}|response|200", f"{CASES[1]}|response|200", f"{CASES[2]}|refused|None"],
    )
    assert done.returncode == 1
    assert "<-- differs" in done.stdout


def test_a_row_twice_fails(tmp_path: Path):
    rows = [f"{CASES[0]}|response|200", f"{CASES[1]}|response|403", f"{CASES[2]}|reset|None"]
    done = report(tmp_path, [*rows, rows[0]])
    assert done.returncode == 1
    assert "2 results" in done.stdout


def test_under_sudo_the_quick_start_refuses_and_says_what_to_run(tmp_path: Path):
    # What `sudo bash scripts/quickstart.sh` looks like to the script: uid 0 (a stand-in `id` on
    # PATH, so that this runs as any user), SUDO_USER set, and an Ubuntu 24.04 os-release (the OS
    # check comes first), through a copy of the script that reads its os-release from tmp_path.
    script = (REPO / "scripts" / "quickstart.sh").read_text()
    release = tmp_path / "os-release"
    release.write_text('ID=ubuntu\nVERSION_ID="24.04"\nPRETTY_NAME="Ubuntu 24.04"\n')
    copy = tmp_path / "scripts" / "quickstart.sh"
    copy.parent.mkdir()
    copy.write_text(script.replace("/etc/os-release", str(release)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(
        '#!/bin/sh\n[ "$1" = -u ] && echo 0 && exit 0\nexec /usr/bin/id "$@"\n'
    )
    (bin_dir / "id").chmod(0o755)
    done = subprocess.run(
        ["bash", "scripts/quickstart.sh"],
        cwd=tmp_path,
        env={**os.environ, "SUDO_USER": "alice", "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "do not run this script through sudo" in done.stderr
    assert done.stderr.rstrip().endswith(
        "Run it as alice, without sudo (it uses\nsudo itself for the steps that need root):\n"
        "    bash scripts/quickstart.sh"
    )
    assert "Preparing MicroK8s" not in done.stdout
