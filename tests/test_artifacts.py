"""Large values in files beside the database (issue 13, item 2): content-addressed, 0600 in 0700
folders, shared between runs, collected by ``tether gc``; a missing, cut or altered file is a
StoreError naming the run and the file, never a wrong value; a 200 MB array result. See
docs/values.md.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tether
from helpers.util import raw, wait_until
from tether import codec
from tether.artifacts import TMP_GRACE_S


def files_of(db: Path) -> list[Path]:
    return sorted(p for p in Path(f"{db}.artifacts").glob("*/*") if not p.name.startswith("."))


def gc(db: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tether.cli", "gc", "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@tether.pipeline
def array_of(ctx: tether.Context, n: int, seed: int = 0, step: bool = False) -> Any:
    """``n`` float64s (arange + seed); with ``step``, made in a checkpointed step."""
    if step:
        return {"arr": ctx.step("make", lambda: np.arange(n, dtype=np.float64) + seed)}
    return {"arr": np.arange(n, dtype=np.float64) + seed, "n": n}


def expected(n: int, seed: int = 0) -> np.ndarray:
    return np.arange(n, dtype=np.float64) + seed


def test_a_large_result_lives_in_a_private_content_addressed_file(db: Path) -> None:
    run = array_of.start(n=500_000)
    out = run.result(timeout=60)
    assert out["arr"].dtype == np.float64 and np.array_equal(out["arr"], expected(500_000))
    [path] = files_of(db)
    data = expected(500_000).tobytes()
    digest = hashlib.sha256(data).hexdigest()
    assert (path.parent.name, path.name) == (digest[:2], digest[2:])
    assert path.stat().st_size == len(data)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(f"{db}.artifacts").stat().st_mode) == 0o700
    [(stored,)] = raw(db, "SELECT result FROM runs WHERE id = ?", run.id)
    assert len(stored) < 300 and digest in stored and '"n":500000' in stored
    assert not list(Path(f"{db}.artifacts").glob("*/.tmp-*"))  # nothing left half-written


def test_two_runs_with_the_same_content_share_one_file(db: Path) -> None:
    a = array_of.start(n=300_000)
    b = array_of.start(n=300_000, step=True)  # the same bytes, as a checkpoint
    c = array_of.start(n=300_000, seed=1)  # other bytes
    for run in (a, b, c):
        run.result(timeout=60)
    assert len(files_of(db)) == 2
    assert np.array_equal(tether.get_run(b.id).result()["arr"], expected(300_000))


def test_a_missing_truncated_or_altered_file_is_a_store_error_naming_run_and_file(db: Path) -> None:
    run = array_of.start(n=300_000)
    run.result(timeout=60)
    [path] = files_of(db)
    good = path.read_bytes()

    path.write_bytes(good[:-8])  # cut
    with pytest.raises(tether.StoreError) as info:
        tether.get_run(run.id).result()
    assert run.id in str(info.value) and str(path) in str(info.value)
    assert f"holds {len(good) - 8} bytes, not {len(good)}" in str(info.value)

    altered = bytearray(good)
    altered[1000] ^= 1  # one bit, same size: only the digest can tell
    path.write_bytes(bytes(altered))
    with pytest.raises(tether.StoreError, match="does not match its SHA-256") as info:
        tether.get_run(run.id).result()
    assert run.id in str(info.value) and str(path) in str(info.value)

    path.unlink()
    with pytest.raises(tether.StoreError, match="which is missing") as info:
        tether.get_run(run.id).result()
    assert run.id in str(info.value) and str(path) in str(info.value)
    assert tether.get_run(run.id).status == "succeeded"  # the row itself is intact

    path.write_bytes(good)  # restored from a backup: readable again
    assert np.array_equal(tether.get_run(run.id).result()["arr"], expected(300_000))


def test_a_damaged_checkpoint_file_is_a_store_error_on_resume_not_a_wrong_value(db: Path) -> None:
    @tether.pipeline
    def stepped(ctx: tether.Context) -> Any:
        arr = ctx.step("big", lambda: np.ones(300_000))
        if ctx.attempt == 1:
            raise RuntimeError("fail after the step")
        return float(arr.sum())

    first = stepped.start()
    with pytest.raises(tether.RunFailed):
        first.result(timeout=30)
    [path] = files_of(db)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(tether.RunFailed) as info:
        first.resume().result(timeout=30)
    assert info.value.error["type"] == "StoreError" and str(path) in info.value.error["message"]


def test_gc_removes_the_files_no_run_refers_to_and_says_how_many_bytes(
    db: Path, child_env: dict[str, str]
) -> None:
    keep = array_of.start(n=300_000)
    shared = array_of.start(n=300_000, step=True)  # same content as keep: one file
    drop = array_of.start(n=200_000, seed=7)
    stepped = array_of.start(n=250_000, seed=3, step=True)  # referenced by a checkpoint (and result)
    for run in (keep, shared, drop, stepped):
        run.result(timeout=60)
    assert len(files_of(db)) == 3
    out = gc(db, child_env)
    assert "removed 0 value file(s) no run refers to (0 bytes freed)" in out
    assert len(files_of(db)) == 3

    # a crashed writer's temporary file: removed once old, left while it may still be written
    folder = files_of(db)[0].parent
    (folder / ".tmp-1-old").write_bytes(b"x" * 10)
    os.utime(folder / ".tmp-1-old", (time.time() - TMP_GRACE_S - 5,) * 2)
    (folder / ".tmp-2-new").write_bytes(b"y" * 10)
    root_tmp = Path(f"{db}.artifacts") / ".tmp-3-old"  # where write() hashes a new file
    root_tmp.write_bytes(b"z" * 10)
    os.utime(root_tmp, (time.time() - TMP_GRACE_S - 5,) * 2)
    (Path(f"{db}.artifacts") / "README").write_text("not tether's: left alone")

    with closing(sqlite3.connect(db)) as conn:  # forget drop and keep (not shared: same file)
        for table, col in (("events", "run_id"), ("checkpoints", "run_id"), ("runs", "id")):
            conn.execute(f"DELETE FROM {table} WHERE {col} IN (?, ?)", (drop.id, keep.id))
        conn.commit()
    out = gc(db, child_env)
    assert f"removed 3 value file(s) no run refers to ({200_000 * 8 + 20} bytes freed)" in out
    assert len(files_of(db)) == 2
    assert (folder / ".tmp-2-new").exists() and not (folder / ".tmp-1-old").exists()
    assert not root_tmp.exists()
    assert (Path(f"{db}.artifacts") / "README").exists()
    assert np.array_equal(tether.get_run(shared.id).result()["arr"], expected(300_000))
    assert np.array_equal(tether.get_run(stepped.id).result()["arr"], expected(250_000, 3))


def test_a_file_removed_between_its_write_and_the_commit_is_written_again(db: Path) -> None:
    """gc deletes inside a write transaction; a writer checks its files again inside its own:
    here another connection holds the write lock while the file, already written, is removed
    (as a gc would); the commit that follows writes it again."""
    gate = threading.Event()

    @tether.pipeline
    def slow_step(ctx: tether.Context) -> Any:
        gate.wait(30)
        ctx.step("arr", lambda: np.full(300_000, 2.0))
        return "done"

    run = slow_step.start()
    wait_until(lambda: tether.get_run(run.id).status == "running", what="the run to start")
    locker = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        gate.set()
        path = wait_until(lambda: files_of(db) and files_of(db)[0], what="the step's file")
        path.unlink()
        locker.execute("COMMIT")
    finally:
        locker.close()
    assert run.result(timeout=30) == "done"
    assert np.array_equal(run.store.checkpoint(run.id, "step:arr")[1], np.full(300_000, 2.0))


def test_many_small_blobs_stay_in_the_row_and_a_huge_json_text_goes_to_a_file(db: Path) -> None:
    small = codec.encode({"a": np.zeros(1000), "b": b"x" * 1000})
    assert not getattr(small, "files", None) and '"b64":' in small
    # one JSON text over the row limit, no binary at all
    big = codec.encode([{"i": i, "name": f"row {i}"} for i in range(60_000)])
    assert len(big) < 300 and '"$tether":"json"' in big
    [(digest, data)] = big.files.items()
    assert hashlib.sha256(data).hexdigest() == digest and len(data) > codec.INLINE_MAX
    # many arrays whose sum is large: the largest go to files until the row is small
    many = codec.encode([np.full(100_000, i, dtype=np.float32) for i in range(10)])
    assert len(many) <= codec.INLINE_MAX and len(many.files) >= 7


def test_a_200_mb_array_result_round_trips_and_the_database_stays_small(db: Path) -> None:
    n = 25_000_000  # 200 MB of float64

    @tether.pipeline
    def big(ctx: tether.Context) -> Any:
        return np.arange(n, dtype=np.float64)

    t0 = time.perf_counter()
    run = big.start()
    run.wait(timeout=300)
    wrote = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = tether.get_run(run.id).result()
    read = time.perf_counter() - t0
    assert out.dtype == np.float64 and out.shape == (n,)
    assert out[0] == 0 and out[-1] == n - 1 and out[12_345_678] == 12_345_678
    assert float(out.sum()) == n * (n - 1) / 2
    del out
    [path] = files_of(db)
    assert path.stat().st_size == n * 8
    size = os.path.getsize(db) + (os.path.getsize(f"{db}-wal") if Path(f"{db}-wal").exists() else 0)
    assert size < 1 << 20, size
    print(f"200 MB array: start->ended {wrote:.2f} s, read {read:.2f} s")
