"""Bootstrap of the bench scripts: makes the test suite's helpers importable.

The bench scripts measure with the same harness and pipelines the tests use
(``reliability.harness``, ``helpers.*`` under ``tests/``) rather than copies of them. They run as
``python bench/X.py``, so ``bench/`` is on ``sys.path`` and ``import _paths`` (first, before any
import from ``reliability`` or ``helpers``) puts ``tests/`` there too. Child processes of a bench
get the same through ``child_pythonpath()`` (or ``reliability.harness.child_env()``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
SRC = ROOT / "src"

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def child_pythonpath(*first: Path) -> str:
    """``PYTHONPATH`` for a child process: ``first`` (e.g. ``SRC``), ``tests/``, then the inherited one."""
    parts = [*map(str, first), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)
