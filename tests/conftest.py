"""Shared fixtures: every test gets its own SQLite file under tmp_path and a clean runtime."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.workspace import Workspace, default

TESTS = Path(__file__).parent  # on sys.path through pytest's ``pythonpath`` (pyproject.toml)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    """The default workspace pointed at a fresh database file (pipelines defined at import stay
    registered in it); afterwards its runners are stopped, its stores closed, its settings back."""
    ws = default()
    saved = ws.settings
    ws.configure(db=tmp_path / "runs.db")
    yield ws
    ws.close()
    ws.settings = saved


@pytest.fixture
def db(workspace: Workspace, tmp_path: Path) -> Path:
    """The fresh database file of ``workspace``."""
    return tmp_path / "runs.db"


@pytest.fixture
def child_env(db: Path) -> dict[str, str]:
    """Environment for child processes: same database, tests/ importable."""
    env = dict(os.environ)
    env["TETHER_DB"] = str(db)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env
