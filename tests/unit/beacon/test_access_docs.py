"""docs/access.md shows what the actions really answer (scripts/access_docs.py regenerates it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "access_docs.py"


def test_the_examples_in_docs_access_md_are_current(monkeypatch):
    spec = importlib.util.spec_from_file_location("access_docs", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("KUBECONFIG", "")  # the script points it at its own fake API server
    assert module.main(["--check"]) == 0, (
        "docs/access.md is stale: run PYTHONPATH=lib:tests:charms/beacon/src "
        ".tox/unit/bin/python scripts/access_docs.py"
    )
