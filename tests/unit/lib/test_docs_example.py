"""Every Python block of docs/library.md runs as written, and the tests it shows pass.

Each block runs on its own (its own imports, its own names), like a charm author pasting it; the
``test_*`` functions a block defines are then called. So the guide cannot show code that does not
import, does not run, or whose assertions are wrong.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "library.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_the_guide_has_its_examples():
    assert len(BLOCKS) >= 5
    assert any("def test_" in block and "use_kubernetes_client" in block for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_block_runs_as_written(block: str):
    module = types.ModuleType("library_guide_example")
    exec(compile(block, str(GUIDE), "exec"), module.__dict__)
    tests = [value for name, value in vars(module).items() if name.startswith("test_")]
    for test in tests:
        test()
