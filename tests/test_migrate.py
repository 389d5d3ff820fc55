"""``tether migrate --to postgresql://...`` and ``tether.store.migrate``: a SQLite store (a real
file, real runs, a child process killed mid-run) copied into a throwaway PostgreSQL cluster, then
used there through ``tether.configure(db=URL)``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tether
from helpers import checkpoint_pipelines
from helpers.checkpoint_pipelines import Children, first_line, lines
from helpers.util import raw, wait_until, write
from tether import cli, owner
from tether.store import SQLiteStore, migrate
from tether.workspace import Workspace

BIG = 300_000  # float64s: 2.4 MB, above the row limit (a value file beside the SQLite database)


@tether.pipeline(phases=["load", "map"])
def chatty(ctx: tether.Context, n: int, label: str = "x") -> dict[str, Any]:
    """Logs, map items (checkpoints), and a large array result (a value file)."""
    ctx.phase("load")
    for i in range(3):
        ctx.log(f"{label} line {i}")
    squares = ctx.map(lambda i: i * i, range(n), name="sq")
    ctx.phase("map")
    return {"squares": squares, "arr": np.arange(BIG, dtype=np.float64) + n}


@pytest.fixture
def children(child_env: dict[str, str], tmp_path: Path) -> Iterator[Children]:
    kids = Children(child_env, tmp_path)
    yield kids
    kids.close()


def migrate_cli(db: Path, url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", "migrate", "--to", url, "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def counts(url: str) -> tuple[int, ...]:
    return tuple(
        raw(url, f"SELECT count(*) FROM {table}")[0][0]
        for table in ("runs", "events", "checkpoints", "tether_files")
    )


def killed_mid_step(db: Path, children: Children, log: str) -> str:
    """A run whose process was SIGKILLed inside step s1 (prepare and s0 stored): its id."""
    proc = children.spawn(pipeline="steps", params={"log": log, "n": 3, "hang_at": 1})
    run_id = str(first_line(proc)["id"])
    wait_until(lambda: "s1" in lines(log), what="s1 in flight")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert raw(db, "SELECT status FROM runs WHERE id = ?", run_id) == [("running",)]
    return run_id


def snapshot(run: tether.Run) -> dict[str, Any]:
    return {
        "status": str(run.status),
        "key": run.snapshot().key,
        "params": run.snapshot().decoded("params"),  # (value, damage): damaged params too
        "phases_done": run.phases_done,
        "logs": run.logs(),
        "events": [(e.seq, e.kind) for e in run.events()],
        "checkpoints": run.store.checkpoints(run.id),
    }


def test_a_copy_on_postgresql_has_the_same_runs_results_logs_checkpoints_and_files(
    pg_url: str, workspace: Workspace, db: Path, child_env: dict[str, str], children: Children, tmp_path: Path
) -> None:
    done = chatty.start(n=5, label="ok").wait(timeout=60)
    assert done.status == "succeeded"
    failed = checkpoint_pipelines.steps.start(log=str(tmp_path / "failed.log"), n=2, fail_attempt=1)
    with pytest.raises(tether.RunFailed):
        failed.result(timeout=60)
    cancelled = chatty.start(n=1, label="cancelled", detach=True).cancel()
    waiting = chatty.start(n=2, label="waiting", detach=True)  # pending: no worker yet
    log = str(tmp_path / "steps.log")
    killed = killed_mid_step(db, children, log)
    # a damaged row the target takes as it is (params that are not JSON), and one it refuses
    # (text in a REAL column)
    write(db, "UPDATE runs SET params = 'not json' WHERE id = ?", cancelled.id)
    write(
        db,
        "INSERT INTO runs (id, key, attempt, pipeline, params, status, created_at, updated_at) "
        "VALUES ('bad-row', 'bad', 1, 'p', '{}', 'failed', 'yesterday', 0)",
    )
    files = sorted(p for p in Path(f"{db}.artifacts").glob("*/*"))
    assert len(files) == 1  # the array of `done`
    before = {r.id: snapshot(r) for r in (done, failed, cancelled, waiting)}

    out = migrate_cli(db, pg_url, child_env)
    assert out.returncode == 1, out.stderr  # one run could not be copied
    assert f"{killed} interrupted (recovered before the copy): its owner process" in out.stdout
    first = out.stdout.splitlines()
    copied = next(line for line in first if line.startswith("copied "))
    assert copied.startswith("copied 5 run(s), ")
    assert f"1 value file(s) ({files[0].stat().st_size} bytes) from {db} to " in copied
    assert "1 pending run(s) no process owns were copied as pending" in out.stdout
    assert "not copied: bad-row: " in out.stdout and "double precision" in out.stdout
    n_events = raw(db, "SELECT count(*) FROM events WHERE run_id <> 'bad-row'")[0][0]
    n_checkpoints = raw(db, "SELECT count(*) FROM checkpoints")[0][0]
    assert f"{n_events} event(s), {n_checkpoints} checkpoint(s)" in copied
    assert counts(pg_url) == (5, n_events, n_checkpoints, 1)

    # a second migrate copies nothing, and says so
    again = migrate_cli(db, pg_url.replace("tether@", "tether:s3cret@"), child_env)  # trust: any password
    assert again.returncode == 1 and "nothing new to copy" in again.stdout, again.stderr
    assert "s3cret" not in again.stdout and f"to {pg_url.split('?')[0]}" in again.stdout
    assert "skipped 5 run(s) already there with the same content" in again.stdout
    assert counts(pg_url) == (5, n_events, n_checkpoints, 1)

    workspace.close()
    workspace.configure(db=pg_url)
    assert {r.id for r in tether.runs()} == {done.id, failed.id, cancelled.id, waiting.id, killed}
    for run_id, was in before.items():
        assert snapshot(tether.get_run(run_id)) == was
    assert tether.get_run(cancelled.id).damaged  # copied as it was: still damaged, still shown
    result = tether.get_run(done.id).result(timeout=30)
    assert result["squares"] == [0, 1, 4, 9, 16]
    assert np.array_equal(result["arr"], np.arange(BIG, dtype=np.float64) + 5)
    assert tether.get_run(killed).status == "interrupted"

    # the interrupted run resumes on PostgreSQL from its stored steps
    resumed = tether.get_run(killed).resume()
    out_values = resumed.result(timeout=60)["values"]
    assert [(v["name"], v["attempt"]) for v in out_values] == [
        ("prepare", 1),
        ("s0", 1),
        ("s1", 2),
        ("s2", 2),
    ]
    assert lines(log) == ["prepare", "s0", "s1", "s1", "s2"]  # prepare and s0 did not run again


def test_a_run_there_with_other_content_stops_the_copy_before_anything_is_written(
    pg_url: str, workspace: Workspace, db: Path
) -> None:
    from tether.store.postgres import PostgresStore

    first = chatty.start(n=1, label="a").wait(timeout=60)
    src = SQLiteStore(db)
    dst = PostgresStore(pg_url)
    try:
        report = migrate(src, dst, owner.gone_reason)
        assert (report.runs, report.present, report.files) == (1, 0, 1)
        # changed there since (as a pending run a worker there executes): the same run, skipped
        write(
            pg_url,
            "UPDATE runs SET message = 'changed there', updated_at = updated_at + 1 WHERE id = ?",
            first.id,
        )
        again = migrate(src, dst, owner.gone_reason)
        assert (again.runs, again.present) == (0, 1)
        # changed in the file since (its row newer than the copy), or another run under its id
        write(db, "UPDATE runs SET updated_at = updated_at + 5 WHERE id = ?", first.id)
        later = chatty.start(n=2, label="b").wait(timeout=60)
        before = counts(pg_url)
        with pytest.raises(tether.StoreError) as info:
            migrate(src, dst, owner.gone_reason)
        assert f"{first.id} (differs in message, updated_at)" in str(info.value)
        assert counts(pg_url) == before
        write(db, "UPDATE runs SET updated_at = updated_at - 5 WHERE id = ?", first.id)
        write(pg_url, "UPDATE runs SET params = '{\"n\": 7}' WHERE id = ?", first.id)
        with pytest.raises(tether.StoreError) as info:
            migrate(src, dst, owner.gone_reason)
        assert f"{first.id} (differs in params, message, updated_at)" in str(info.value)
        assert "nothing was copied" in str(info.value) and "empty database" in str(info.value)
        assert counts(pg_url) == before
        assert raw(pg_url, "SELECT count(*) FROM runs WHERE id = ?", later.id) == [(0,)]
    finally:
        dst.close()
        src.close()


def test_an_active_run_with_a_live_owner_refuses_naming_it_and_the_fix(
    pg_url: str, workspace: Workspace, db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tether.store.postgres import PostgresStore

    gate = tmp_path / "gate"
    run = checkpoint_pipelines.spin.start(log=str(tmp_path / "spin.log"), gate=str(gate))
    wait_until(lambda: run.status == "running", what="the run running")
    try:
        code = cli.main(["migrate", "--to", pg_url, "--db", str(db)])
        err = capsys.readouterr().err
        assert code == 1
        assert f"{run.id} ({run.pipeline}, running, pid {os.getpid()})" in err
        assert "tether cancel ID" in err and "migrate again" in err
        assert not PostgresStore(pg_url).exists()  # nothing was created there
        assert raw(db, "SELECT status FROM runs WHERE id = ?", run.id) == [("running",)]
    finally:
        gate.touch()
    run.wait(timeout=60)
    assert cli.main(["migrate", "--to", pg_url, "--db", str(db)]) == 0
    assert "copied 1 run(s)" in capsys.readouterr().out


def test_migrate_wants_a_postgresql_url_and_an_existing_sqlite_file(
    pg_url: str, workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.db"
    assert cli.main(["migrate", "--to", str(tmp_path / "other.db"), "--db", str(missing)]) == 1
    assert "--to must be a postgresql:// URL" in capsys.readouterr().err
    assert cli.main(["migrate", "--to", pg_url, "--db", str(missing)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()
    from tether.store.postgres import PostgresStore

    there = PostgresStore(pg_url)
    there.conn()  # its tables made
    there.close()
    assert cli.main(["migrate", "--to", pg_url, "--db", pg_url]) == 1
    assert "is not a SQLite file" in capsys.readouterr().err


def test_a_value_file_missing_beside_the_sqlite_file_is_reported_and_its_run_still_copied(
    pg_url: str, workspace: Workspace, db: Path
) -> None:
    from tether.store.postgres import PostgresStore

    run = chatty.start(n=1, label="lost").wait(timeout=60)
    [path] = Path(f"{db}.artifacts").glob("*/*")
    path.unlink()
    src, dst = SQLiteStore(db), PostgresStore(pg_url)
    try:
        report = migrate(src, dst, owner.gone_reason)
        digest = path.parent.name + path.name
        assert (report.runs, report.files) == (1, 0)
        assert report.skipped == [(f"file {digest}", f"run {run.id} refers to it, and it is missing")]
        with pytest.raises(tether.StoreError, match="missing"):
            dst.get(run.id).result  # noqa: B018  (the reference came along; its value did not)
    finally:
        dst.close()
        src.close()


def test_a_live_worker_serving_the_sqlite_file_refuses_and_one_whose_lease_ran_out_does_not(
    pg_url: str, workspace: Workspace, db: Path
) -> None:
    from tether.store.postgres import PostgresStore

    chatty.start(n=1, label="w").wait(timeout=60)
    src, dst = SQLiteStore(db), PostgresStore(pg_url)
    me = owner.current()
    try:
        src.register_worker(me, ["etl.daily"], time.time() + 60)
        with pytest.raises(tether.StoreError) as info:
            migrate(src, dst, owner.gone_reason)
        assert f"tether worker pid {me.pid} on {me.host} (pipeline etl.daily)" in str(info.value)
        assert not dst.exists()
        src.register_worker(me, ["etl.daily"], time.time() - 1)  # its lease ran out: not serving
        assert migrate(src, dst, owner.gone_reason).runs == 1
    finally:
        src.unregister_worker(me)
        dst.close()
        src.close()
