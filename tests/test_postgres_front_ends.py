"""The front ends on a PostgreSQL store (issue 18 item 1): a run owned by another process, seen
through the panel's reader, the dashboard's table, `tether ls` (the lean process), `tether show`
and `tether watch`, all reading the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tether
from helpers.util import wait_until
from tether.view.reader import RunReader
from tether.workspace import Workspace

pytestmark = pytest.mark.parametrize("workspace", ["postgres"], indirect=True)

_OWNER = """
import sys, time, pathlib, tether
tether.configure(db=sys.argv[1])

@tether.pipeline(name="front_ends.watched")
def watched(ctx, gate: str) -> str:
    ctx.phase("work")
    ctx.log("hello from the owner")
    while not pathlib.Path(gate).exists():
        ctx.advance()
        time.sleep(0.02)
    return "done"

run = watched.start(gate=sys.argv[2])
print(run.id, flush=True)
print(run.result(timeout=120), flush=True)
"""


def _cli(env: dict[str, str], module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_every_front_end_reads_a_run_another_process_runs_on_postgresql(
    db: str, workspace: Workspace, child_env: dict[str, str], tmp_path: Path
) -> None:
    assert db.startswith("postgresql://")
    gate = tmp_path / "gate"
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, db, str(gate)], env=child_env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        run_id = owner.stdout.readline().strip()
        assert run_id, owner.communicate()
        run = workspace.get_run(run_id)

        # the panel's reader (polling the store: the run is another process's)
        reader = RunReader(run)
        rec = wait_until(
            lambda: (r := reader.read()).status == "running" and "hello from the owner" in reader.log and r,
            timeout=60,
            what="the owner's log line through the reader",
        )
        assert rec.phase == "work"

        # the dashboard's table
        table = tether.dashboard()
        try:
            rows = {r["id"]: r for r in table.table.rows}
            assert rows[run_id]["status"] == "running" and table.table.error == ""
        finally:
            table.close()

        # `tether ls` in its lean process, and `tether show`, from the server
        listed = _cli(child_env, "_tether_cli", "ls", "--db", db)
        assert listed.returncode == 0 and listed.stderr == "", listed
        assert run_id in listed.stdout and "running" in listed.stdout, listed.stdout
        shown = _cli(child_env, "tether.cli", "show", run_id, "--db", db)
        assert shown.returncode == 0 and "hello from the owner" in shown.stdout, shown

        # `tether watch` follows it to its end
        watch = subprocess.Popen(
            [sys.executable, "-m", "tether.cli", "watch", run_id, "--db", db],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        gate.touch()
        out, err = watch.communicate(timeout=120)
        assert watch.returncode == 0, (out, err)
        assert "succeeded" in out, out
        assert owner.communicate(timeout=120)[0].strip() == "done"
        assert reader.read().status == "succeeded" and run.result(timeout=30) == "done"
    finally:
        gate.touch()
        if owner.poll() is None:
            owner.kill()
            owner.communicate()
