"""Workspaces: each holds its own database, settings, runner and pipelines; the module-level API
works on the default one."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import tether
from helpers.util import wait_until
from tether.workspace import Workspace, default


def test_two_workspaces_keep_their_own_database_runner_and_pipelines(
    workspace: Workspace, tmp_path: Path
) -> None:
    assert workspace is default()
    other = Workspace(db=tmp_path / "other.db", max_concurrency=2)
    try:

        @other.pipeline(name="test_workspace.double")
        def double(ctx: tether.Context, n: int) -> int:
            return 2 * n

        run = double.start(n=4)
        assert run.result(timeout=20) == 8
        assert run.workspace is other and run.store.path == tmp_path / "other.db"
        assert [r.id for r in other.runs()] == [run.id] and other.get_run(run.id) == run
        assert tether.runs() == []  # the default workspace's database has none
        assert other.lookup("test_workspace.double") is double
        assert workspace.lookup("test_workspace.double") is None
        assert other.runner() is not workspace.runner()
        assert other.settings.max_concurrency == 2 != workspace.settings.max_concurrency
    finally:
        other.close()


def test_close_stops_its_runner_and_the_next_use_opens_the_store_again(tmp_path: Path) -> None:
    ws = Workspace(db=tmp_path / "runs.db")
    go = threading.Event()

    @ws.pipeline(name="test_workspace.held")
    def held(ctx: tether.Context) -> str:
        while not go.is_set():
            ctx.advance(0)  # sees the stop
            go.wait(0.01)
        return "done"

    try:
        run = held.start()
        wait_until(lambda: run.status == "running", timeout=20)
        ws.close()  # its unfinished run ends interrupted, as at interpreter exit
        assert ws.get_run(run.id).status == "interrupted"  # the store opened again
    finally:
        go.set()
        ws.close()


def test_a_workspace_checks_its_settings_like_configure(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown option"):
        Workspace(db=tmp_path / "x.db", max_concurency=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"tether\.Settings"):
        Workspace().settings = {"db": "x.db"}  # type: ignore[assignment]
