"""Shared fixtures: every test gets its own SQLite file under tmp_path and a clean runtime."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tether import config, runner

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # tests/helpers is importable here and in child processes


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    """Point tether at a fresh database file; stop the runner and close the store afterwards."""
    path = tmp_path / "runs.db"
    saved = config._settings
    tether.configure(db=path)
    yield path
    runner.shutdown_all()
    config._settings = saved
    config._stores.clear()


@pytest.fixture
def child_env(db: Path) -> dict[str, str]:
    """Environment for child processes: same database, tests/ importable."""
    env = dict(os.environ)
    env["TETHER_DB"] = str(db)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env
