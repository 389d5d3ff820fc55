"""Durability as a setting: ``tether.configure(durability="normal" | "full")`` (or
``TETHER_DURABILITY``) is SQLite's ``PRAGMA synchronous`` (1 NORMAL, 2 FULL) on every connection
the workspace's store opens: the main thread's, a run thread's, a worker process's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.errors import StoreError
from tether.workspace import Workspace

NORMAL, FULL = 1, 2


@tether.pipeline(name="test_durability.level")
def level(ctx: Any, tag: int = 0) -> int:
    """The ``PRAGMA synchronous`` of the connection this run thread writes through."""
    return int(ctx._runner.store.conn().execute("PRAGMA synchronous").fetchone()[0])


def main_thread_level(ws: Workspace) -> int:
    return int(ws.store().conn().execute("PRAGMA synchronous").fetchone()[0])


def test_the_default_is_normal_in_the_main_thread_and_a_run_thread(workspace: Workspace) -> None:
    assert workspace.settings.durability is None
    assert level.start().result(timeout=30) == NORMAL
    assert main_thread_level(workspace) == NORMAL


def test_full_applies_to_the_main_thread_and_to_run_threads(workspace: Workspace) -> None:
    assert tether.configure(durability="full").durability == "full"
    assert main_thread_level(workspace) == FULL
    assert level.start(tag=1).result(timeout=30) == FULL


def test_a_change_applies_to_connections_already_open(workspace: Workspace) -> None:
    assert level.start(tag=1).result(timeout=30) == NORMAL  # the store and its threads are open
    assert main_thread_level(workspace) == NORMAL
    tether.configure(durability="full")
    assert main_thread_level(workspace) == FULL
    assert level.start(tag=2).result(timeout=30) == FULL  # a run thread given back and reused
    tether.configure(durability="normal")
    assert main_thread_level(workspace) == NORMAL
    assert level.start(tag=3).result(timeout=30) == NORMAL


def python(env: dict[str, str], cwd: Path, durability: str, *args: str) -> str:
    """``python ARGS`` with TETHER_DURABILITY=durability; its stdout (exit status 0 asserted)."""
    proc = subprocess.run(
        [sys.executable, *args],
        env=dict(env, TETHER_DURABILITY=durability),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_worker_process_given_the_env_variable_full_commits_at_full(
    workspace: Workspace, child_env: dict[str, str], tmp_path: Path
) -> None:
    run = level.start(tag=4, detach=True)
    python(child_env, tmp_path, "full", "-m", "tether.cli", "worker", "test_durability", "--once")
    assert run.result(timeout=30) == FULL
    assert main_thread_level(workspace) == NORMAL  # this process did not ask for it


def test_a_child_process_given_the_env_variable_opens_at_its_level(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    code = (
        "import sys\nimport tether\n"
        "from test_durability import level\n"
        "s = tether.workspace.default().store()\n"
        "run = level.start(tag=int(sys.argv[1]))\n"
        "print(s.conn().execute('PRAGMA synchronous').fetchone()[0], run.result(timeout=30))\n"
    )
    for tag, (value, expected) in enumerate((("full", f"{FULL} {FULL}"), ("normal", f"{NORMAL} {NORMAL}"))):
        out = python(child_env, tmp_path, value, "-c", code, str(10 + tag))
        assert out.split() == expected.split()


@pytest.mark.parametrize("bad", ["FULL", "extra", "", 2, None])
def test_a_bad_level_is_a_value_error_naming_the_allowed_ones(workspace: Workspace, bad: Any) -> None:
    with pytest.raises(ValueError, match=r"durability=\.\.\.\) must be 'normal' or 'full'"):
        tether.configure(durability=bad)
    assert workspace.settings.durability is None  # nothing changed


def test_a_bad_env_variable_is_a_store_error_naming_the_allowed_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TETHER_DURABILITY", "paranoid")
    ws = Workspace(db=tmp_path / "runs.db")
    try:
        with pytest.raises(StoreError, match=r"TETHER_DURABILITY must be 'normal' or 'full', got 'paranoid'"):
            ws.store()
        ws.configure(durability="full")  # the setting wins over the variable
        assert main_thread_level(ws) == FULL
    finally:
        ws.close()
