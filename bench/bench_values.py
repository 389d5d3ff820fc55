"""Values benchmark: a large numpy array and a large DataFrame as run results, against numpy's and
pyarrow's own files on the same disk.

    python bench/bench_values.py            # full run (~1 min): 200 MB array, 1,000,000-row frame
    python bench/bench_values.py --quick    # smoke run (< 20 s): 50 MB, 250,000 rows
    python bench/bench_values.py --json OUT.json   # also write the rows for bench/run.py

Figures (section 10 of docs/performance.md; a markdown table with PASS/MISS is printed at the end,
exit status 0 either way):

10a. A float64 array result (200 MB): a run whose body returns a prepared array, timed from
     ``start()`` until the run has ended (encode, SHA-256, the value file written and renamed, the
     row committed), then ``tether.get_run(id).result()`` (a fresh record: the file read whole into
     a new array and checked against its SHA-256). Baseline: ``np.save(allow_pickle=False)`` to a
     new file in the same folder + ``np.load``. Each repetition changes one element, so every
     write is a new file (no sharing with the previous content). Speed ratio = baseline time /
     tether time, median of interleaved repetitions. Goal: >= 0.5.
10b. A 1,000,000-row DataFrame (int64, float64, string, datetime64[ns], categorical) the same way,
     against ``pq.write_table(pa.Table.from_pandas(df))`` + ``pq.read_table().to_pandas()`` (Parquet,
     pyarrow's defaults, snappy) in the same folder. Goal: >= 0.5.
10c. The database file (+ its WAL) after both: goal < 1 MiB (values over 1 MiB live in files).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import CpuWatch, Row, machine, report, version_of

import tether

pc = time.perf_counter
FULL = {"array_mb": 200, "rows": 1_000_000, "reps": 5}
QUICK = {"array_mb": 50, "rows": 250_000, "reps": 3}
VALUE: dict[str, Any] = {}  # what the pipeline returns, prepared outside the timing


@tether.pipeline
def give(ctx: tether.Context, rep: int, kind: str) -> Any:
    return VALUE[kind]


def _tether_round(kind: str, rep: int) -> tuple[float, float, Any]:
    t0 = pc()
    run = give.start(rep=rep, kind=kind)
    run.wait(timeout=600)
    wrote = pc() - t0
    if run.status != "succeeded":
        raise RuntimeError(f"the run failed: {run.error}")
    t0 = pc()
    out = tether.get_run(run.id).result()
    return wrote, pc() - t0, out


def bench_array(sizes: dict[str, int], folder: Path) -> list[Row]:
    import numpy as np

    n = sizes["array_mb"] * 1_000_000 // 8
    arr = np.arange(n, dtype=np.float64)
    t_ours, t_base, w_ours, r_ours, w_base, r_base = [], [], [], [], [], []
    for rep in range(sizes["reps"]):
        arr[0] = rep + 0.5  # new content: a new file each time
        VALUE["array"] = arr
        wrote, read, out = _tether_round("array", rep)
        assert out.dtype == arr.dtype and out.shape == arr.shape and out[0] == arr[0]
        del out
        w_ours.append(wrote)
        r_ours.append(read)
        t_ours.append(wrote + read)
        path = folder / f"baseline-{rep}.npy"
        t0 = pc()
        np.save(path, arr, allow_pickle=False)
        t1 = pc()
        back = np.load(path)
        t2 = pc()
        assert back[0] == arr[0]
        del back
        os.unlink(path)
        w_base.append(t1 - t0)
        r_base.append(t2 - t1)
        t_base.append(t2 - t0)
    ours, base = statistics.median(t_ours), statistics.median(t_base)
    return [
        Row(
            "10a",
            f"float64 array result of {sizes['array_mb']} MB: `start()` -> ended, then "
            f"`get_run(id).result()` (median of {sizes['reps']}, a new file each time)",
            f"{ours:.2f} s (write {statistics.median(w_ours):.2f} s, read {statistics.median(r_ours):.2f} s)",
            f"`np.save` + `np.load` {base:.2f} s (write {statistics.median(w_base):.2f} s, read "
            f"{statistics.median(r_base):.2f} s)",
            base / ours,
            "speed ratio >= 0.5",
            base / ours >= 0.5,
        )
    ]


def bench_frame(sizes: dict[str, int], folder: Path) -> list[Row]:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sizes["rows"]
    frame = pd.DataFrame(
        {
            "id": np.arange(rows, dtype=np.int64),
            "x": np.linspace(0, 1, rows),
            "name": [f"user{i % 10_000}" for i in range(rows)],
            "when": pd.date_range("2024-01-01", periods=rows, freq="s"),
            "kind": pd.Categorical(np.array(["a", "b", "c"])[np.arange(rows) % 3]),
        }
    )
    t_ours, t_base, w_ours, r_ours, w_base, r_base = [], [], [], [], [], []
    for rep in range(sizes["reps"]):
        frame.iloc[0, 0] = rep  # new content: a new file each time
        VALUE["frame"] = frame
        wrote, read, out = _tether_round("frame", rep)
        assert out.shape == frame.shape and out.iloc[0, 0] == rep
        del out
        w_ours.append(wrote)
        r_ours.append(read)
        t_ours.append(wrote + read)
        path = folder / f"baseline-{rep}.parquet"
        t0 = pc()
        pq.write_table(pa.Table.from_pandas(frame), path)
        t1 = pc()
        back = pq.read_table(path).to_pandas()
        t2 = pc()
        assert back.shape == frame.shape
        del back
        os.unlink(path)
        w_base.append(t1 - t0)
        r_base.append(t2 - t1)
        t_base.append(t2 - t0)
    ours, base = statistics.median(t_ours), statistics.median(t_base)
    return [
        Row(
            "10b",
            f"DataFrame result of {rows:,} rows x 5 columns (int, float, str, datetime, "
            f"category): `start()` -> ended, then `get_run(id).result()` (median of "
            f"{sizes['reps']})",
            f"{ours:.2f} s (write {statistics.median(w_ours):.2f} s, read {statistics.median(r_ours):.2f} s)",
            f"Parquet via pyarrow (`write_table` + `read_table().to_pandas()`) {base:.2f} s "
            f"(write {statistics.median(w_base):.2f} s, read {statistics.median(r_base):.2f} s)",
            base / ours,
            "speed ratio >= 0.5",
            base / ours >= 0.5,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 20 s")
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON (for bench/run.py)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    info = machine()
    for name in ("numpy", "pandas", "pyarrow"):
        info[name] = version_of(name) or "not installed"
    print(f"# tether values benchmark ({'quick' if args.quick else 'full'})\n")
    print("\n".join(f"- **{k}**: {v}" for k, v in info.items()), flush=True)
    watch = CpuWatch()
    start = pc()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-values-") as tmp:
        db = Path(tmp) / "runs.db"
        tether.configure(db=db)
        try:
            rows += bench_array(sizes, Path(tmp))
            VALUE.clear()
            rows += bench_frame(sizes, Path(tmp))
            VALUE.clear()
        finally:
            tether.workspace.default().close()
        size = sum(os.path.getsize(p) for p in (db, Path(f"{db}-wal")) if p.exists())
        files = sum(f.stat().st_size for f in Path(f"{db}.artifacts").glob("*/*"))
        rows.append(
            Row(
                "10c",
                "database size (file + WAL) after 10a and 10b; the values' files beside it",
                f"{size / 1024:.0f} KiB (files: {files / 1e6:,.0f} MB)",
                "",
                None,
                "< 1 MiB",
                size < 1 << 20,
            )
        )
    report(rows, info, watch, pc() - start, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
