"""The example notebooks are stored clean, and are written to be executed by nbval.

Stored clean: no outputs, no execution counts, no widget state (``metadata.widgets`` is what an
executed notebook gains, including each widget's JavaScript), and the ``python3`` kernelspec.
CI executes them with ``pytest --nbval-lax notebooks/``; their ``assert`` cells are what checks
behaviour there, and each writes its database under a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _load(path: Path) -> dict[str, Any]:
    nb: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return nb


def _code(nb: dict[str, Any]) -> list[str]:
    return [
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in nb["cells"]
        if c["cell_type"] == "code"
    ]


def test_there_are_example_notebooks() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {
        "01_quickstart.ipynb",
        "02_idempotency_and_policies.ipynb",
        "03_crash_and_recover.ipynb",
        "05_async_and_fan_out.ipynb",
        "06_control.ipynb",
        "07_values_and_artifacts.ipynb",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_outputs_and_no_widget_state(path: Path) -> None:
    nb = _load(path)
    assert nb["nbformat"] == 4
    assert "widgets" not in nb["metadata"], (
        f"{path.name} holds widget state (metadata.widgets); clear it, e.g. "
        "jupyter nbconvert --clear-output --inplace, then delete metadata.widgets"
    )
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb["cells"]):
        where = f"{path.name}, cell {i}"
        assert "widgets" not in cell.get("metadata", {}), f"{where}: widget state in metadata"
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs") == [], f"{where}: stored outputs"
        assert cell.get("execution_count") is None, f"{where}: stored execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_checks_itself_on_a_temporary_database(path: Path) -> None:
    code = "\n".join(_code(_load(path)))
    assert "assert " in code, f"{path.name} has no assert cell: nbval --nbval-lax would check nothing"
    assert "tempfile.mkdtemp(" in code and "tether.configure(db=" in code, (
        f"{path.name} must write its database under a temporary folder "
        "(tempfile.mkdtemp() + tether.configure(db=...)), not into ./.tether"
    )
