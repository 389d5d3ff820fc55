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

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import Row, Section, section_args

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


Times = list[tuple[float, float]]  # (write, read) of each repetition


def _rounds(
    kind: str,
    reps: int,
    value_of: Callable[[int], Any],
    check: Callable[[Any, int], bool],
    baseline: tuple[Callable[[Path, Any], object], Callable[[Path], Any]],
    path_of: Callable[[int], Path],
) -> tuple[Times, Times]:
    """``reps`` interleaved repetitions of the value ``value_of(rep)`` (new content each time: a
    new file) through tether and through the baseline's (save, load) to ``path_of(rep)``; each
    value read back is checked."""
    save, load = baseline
    ours: Times = []
    base: Times = []
    for rep in range(reps):
        value = VALUE[kind] = value_of(rep)
        wrote, read, out = _tether_round(kind, rep)
        assert check(out, rep)
        del out
        ours.append((wrote, read))
        path = path_of(rep)
        t0 = pc()
        save(path, value)
        t1 = pc()
        back = load(path)
        t2 = pc()
        assert check(back, rep)
        del back
        os.unlink(path)
        base.append((t1 - t0, t2 - t1))
    return ours, base


def _row(ref: str, figure: str, ours: Times, base: Times, baseline: str) -> Row:
    """The figure's row: median totals, their write and read parts; speed ratio baseline / tether."""

    def medians(times: Times) -> tuple[float, str]:
        total = statistics.median(w + r for w, r in times)
        w, r = statistics.median(w for w, _ in times), statistics.median(r for _, r in times)
        return total, f"{total:.2f} s (write {w:.2f} s, read {r:.2f} s)"

    (t_ours, ours_text), (t_base, base_text) = medians(ours), medians(base)
    ratio = t_base / t_ours
    return Row(ref, figure, ours_text, f"{baseline} {base_text}", ratio, "speed ratio >= 0.5", ratio >= 0.5)


def bench_array(sizes: dict[str, int], folder: Path) -> list[Row]:
    import numpy as np

    n = sizes["array_mb"] * 1_000_000 // 8
    arr = np.arange(n, dtype=np.float64)

    def value_of(rep: int) -> Any:
        arr[0] = rep + 0.5
        return arr

    def check(out: Any, rep: int) -> bool:
        return bool(out.dtype == arr.dtype and out.shape == arr.shape and out[0] == rep + 0.5)

    ours, base = _rounds(
        "array",
        sizes["reps"],
        value_of,
        check,
        (lambda path, a: np.save(path, a, allow_pickle=False), np.load),
        lambda rep: folder / f"baseline-{rep}.npy",
    )
    figure = (
        f"float64 array result of {sizes['array_mb']} MB: `start()` -> ended, then "
        f"`get_run(id).result()` (median of {sizes['reps']}, a new file each time)"
    )
    return [_row("10a", figure, ours, base, "`np.save` + `np.load`")]


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

    def value_of(rep: int) -> Any:
        frame.iloc[0, 0] = rep
        return frame

    def check(out: Any, rep: int) -> bool:
        return bool(out.shape == frame.shape and out.iloc[0, 0] == rep)

    ours, base = _rounds(
        "frame",
        sizes["reps"],
        value_of,
        check,
        (
            lambda path, f: pq.write_table(pa.Table.from_pandas(f), path),
            lambda path: pq.read_table(path).to_pandas(),
        ),
        lambda rep: folder / f"baseline-{rep}.parquet",
    )
    figure = (
        f"DataFrame result of {rows:,} rows x 5 columns (int, float, str, datetime, "
        f"category): `start()` -> ended, then `get_run(id).result()` (median of "
        f"{sizes['reps']})"
    )
    baseline = "Parquet via pyarrow (`write_table` + `read_table().to_pandas()`)"
    return [_row("10b", figure, ours, base, baseline)]


def main(argv: list[str] | None = None) -> int:
    args = section_args(__doc__.splitlines()[0], "small sizes, < 20 s").parse_args(argv)
    sizes = QUICK if args.quick else FULL
    section = Section(
        f"# tether values benchmark ({'quick' if args.quick else 'full'})", ("numpy", "pandas", "pyarrow")
    )
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
    section.end(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
