"""Load and races: many processes starting the same keys at once; readers hammering the database
while runs write. Only correctness is asserted here (no error reaches the user, exactly one run
per key, every event stored and seen); ``bench/scale.py`` prints the figures (start latency, flush
transaction time and event visibility p99) measured by the same code in ``reliability.harness``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability import harness

pytestmark = pytest.mark.slow


def test_16_processes_starting_the_same_200_keys_make_exactly_one_run_per_key(tmp_path: Path) -> None:
    # the database does not exist yet: the 16 processes also race to create and migrate it
    out = harness.start_race(tmp_path, procs=16, keys=200, hold=0.2)
    assert out["errors"] == []  # no "database is locked" (nor any other StoreError) reached start()
    assert out["keys_with_runs"] == 200 and out["runs"] == 200
    assert out["keys_with_more_than_one_run"] == []
    assert out["created"] == 200  # each run executed by the one process that created it
    assert out["not_succeeded"] == []
    assert out["bad_seq"] == [] and out["integrity"] == "ok"


def test_readers_hammering_the_database_while_8_runs_write(tmp_path: Path) -> None:
    lines = 300
    out = harness.readers_writers(
        tmp_path, runs=8, writer_procs=4, lines=lines, pace=0.005, pollers=2, dashboard=True, cli=True
    )
    assert out["errors"] == []  # writers, pollers, the dashboard query and `tether ls` alike
    assert out["runs"] == 8 and out["statuses"] == {"succeeded": 8}
    assert sorted(out["stored_logs"].values()) == [lines] * 8
    assert out["bad_seq"] == [] and out["integrity"] == "ok"
    assert len(out["reader_logs"]) == 2
    for seen in out["reader_logs"]:  # each poller saw every line of every run, once
        assert seen == out["stored_logs"]
    assert out["cli_runs"] >= 1
