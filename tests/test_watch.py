"""`tether watch`: a run executed by another process, watched by a third one, for real.

The run's process (``helpers.watch_pipelines.child``) is driven step by step with gate files; the
watcher runs under a pseudo-terminal (pexpect.spawn: a TTY, so frames are redrawn in place) or on
pipes (pexpect.popen_spawn: no TTY, so plain lines without escape codes).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import watch_pipelines
from helpers.util import raw
from tether import cli

pexpect = pytest.importorskip("pexpect")
from pexpect.popen_spawn import PopenSpawn  # noqa: E402

# pexpect's PopenSpawn calls Thread.setDaemon()
pytestmark = pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning")

WATCH = [sys.executable, "-m", "tether.cli", "watch"]
TIMEOUT = 30


class Child:
    """A process executing one run of ``helpers.watch_pipelines``; gates open its next step."""

    def __init__(self, env: dict[str, str], gates: Path, pipeline: str, **params: Any) -> None:
        self.gates = gates
        if pipeline != "busy":  # the one without gates
            params = {"gates": str(gates), **params}
        spec = {"pipeline": pipeline, "params": params}
        self.proc = subprocess.Popen(
            [sys.executable, *watch_pipelines.CHILD, json.dumps(spec)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.id = self.proc.stdout.readline().strip()
        assert self.id, self.proc.stderr.read() if self.proc.stderr else ""

    def open(self, gate: str) -> None:
        (self.gates / gate).touch()

    def end(self) -> int:
        return self.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def child(child_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Child]]:
    made: list[Child] = []

    def make(pipeline: str = "gated", **params: Any) -> Child:
        gates = tmp_path / f"gates{len(made)}"
        gates.mkdir()
        made.append(Child(child_env, gates, pipeline, **params))
        return made[-1]

    yield make
    for c in made:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


def tty(env: dict[str, str], *args: str, rows: int = 30, cols: int = 100) -> Any:
    return pexpect.spawn(WATCH[0], [*WATCH[1:], *args], env=env, dimensions=(rows, cols), timeout=TIMEOUT)


def plain(env: dict[str, str], *args: str) -> Any:
    return PopenSpawn([*WATCH, *args], env=env, timeout=TIMEOUT)


def ended(w: Any) -> tuple[int, bytes]:
    """Wait for the watcher's end: (exit code, everything it wrote)."""
    w.expect(pexpect.EOF)
    out = w.before if isinstance(w.before, bytes) else b""
    if isinstance(w, PopenSpawn):
        return w.wait(), out
    w.close()
    return w.exitstatus, out


def row(db: Path, run_id: str) -> tuple[Any, ...]:
    """What a watcher could change: the run's state and its events (not its owner's lease)."""
    state = raw(
        db, "SELECT status, phase, done, total, last_seq, cancel_requested FROM runs WHERE id = ?", run_id
    )
    return (*state, raw(db, "SELECT seq, kind, data FROM events WHERE run_id = ? ORDER BY seq", run_id))


def test_tty_view_follows_a_run_of_another_process_to_success(child, child_env):
    c = child()
    w = tty(child_env, c.id)
    seen = b""
    w.expect(rb"load  \[.*\]  2/4 \(50%\)")  # the phase and its bar
    seen += w.before + w.after
    w.expect("loaded two of four")
    c.open("a")
    w.expect(rb"crunch  \[.*\]  5/10 \(50%\)")  # redrawn in place: the next phase
    seen += w.before + w.after
    w.expect(r"\\x1b\]0;pwned\\x07")  # the escape-laden log line, shown escaped
    c.open("b")
    code, rest = ended(w)
    seen += rest
    assert code == 0
    assert c.end() == 0
    assert b"\x1b[1;32m" in rest and b"succeeded" in rest  # the last frame
    assert rest.endswith(b"\x1b[?25h")  # the cursor is shown again
    assert b"\x1b[8A" in seen or re.search(rb"\x1b\[\d+A", seen)  # frames overwrite each other
    # the log line's sequences reached the terminal as text only
    for raw_seq in (b"\x1b]0;pwned", b"\x07", b"\x1b[31mred", b"\x08"):
        assert raw_seq not in seen
    assert tether.get_run(c.id).status == "succeeded"


def test_plain_output_has_no_escape_bytes_and_few_lines(child, child_env):
    c = child()
    w = plain(child_env, c.id)
    got = b""
    w.expect("load 2/4")
    got += w.before + w.after
    c.open("a")
    w.expect("crunch 5/10")
    got += w.before + w.after
    c.open("b")
    code, rest = ended(w)
    got += rest
    assert code == 0, got
    assert b"\x1b" not in got and b"\x07" not in got and b"\r" not in got
    lines = got.decode().splitlines()
    assert lines[0] == f"watching helpers.watch_pipelines.gated #1 id={c.id}"
    assert any("running · load 2/4 (50%)" in x for x in lines), lines
    assert any("running · crunch 5/10 (50%)" in x for x in lines), lines
    assert lines[-1].startswith("succeeded in ") and lines[-1].endswith('result: {"ok": true}')
    # one line per change (pending, running, each phase, a new message), not one per read (4 a second)
    assert len(lines) <= 8, lines


def test_plain_lines_are_rate_limited_on_a_busy_run(child, child_env):
    c = child("busy", seconds=3.0)
    w = plain(child_env, c.id)
    started = time.monotonic()
    code, out = ended(w)
    took = time.monotonic() - started
    assert code == 0
    lines = out.decode().splitlines()
    progress = [x for x in lines if " · running · spin " in x]
    # ~1,000 updates and ~50 log lines a second, read 4 times a second: at most a line a second
    assert 2 <= len(progress) <= took + 2, lines
    assert lines[-1].startswith("succeeded in ")


@pytest.mark.parametrize("how", ["fail", "cancel", "kill"])
def test_exit_codes_failed_cancelled_interrupted(child, child_env, how):
    c = child(fail=how == "fail")
    w = plain(child_env, c.id)
    w.expect("load 2/4")
    if how == "fail":
        c.open("a")
        c.open("b")
    elif how == "cancel":
        tether.get_run(c.id).cancel()
    else:
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait()
    code, rest = ended(w)
    text = rest.decode()
    expected = {
        "fail": (1, "failed after"),
        "cancel": (2, "cancelled after"),
        "kill": (2, "interrupted after"),
    }
    assert (code, expected[how][1] in text) == (expected[how][0], True), text
    if how == "fail":
        assert "ValueError: boom at the gate" in text
    if how == "cancel":
        assert "cancelled by run.cancel()" in text


def test_ctrl_c_stops_watching_and_leaves_the_run_alone(child, child_env, db):
    c = child()
    w = tty(child_env, c.id)
    w.expect(r"2/4 \(50%\)")
    w.expect("Ctrl-C stops watching")
    before = row(db, c.id)
    w.send("\x03")
    code, rest = ended(w)
    assert code == 130
    assert b"stopped watching; run " + c.id.encode() + b" goes on" in rest
    assert rest.endswith(b"goes on\r\n") and rest.count(b"\x1b[?25h") == 1
    assert row(db, c.id) == before  # nothing written: not a cancel, not an event
    assert c.proc.poll() is None  # the run goes on...
    c.open("a")
    c.open("b")
    assert c.end() == 0  # ...to its end
    assert tether.get_run(c.id).status == "succeeded"


def test_retrying_run_shows_its_next_try(child, child_env):
    c = child("retrying")
    w = tty(child_env, c.id)
    w.expect("try 2 of 4 — next in \\d+ s".encode())
    p = plain(child_env, c.id)
    p.expect("running · work .* · try 2 of 4 — next in \\d+ s".encode())
    tether.get_run(c.id).cancel()
    assert ended(w)[0] == 2
    assert ended(p)[0] == 2


def test_parent_and_children_are_named(child, child_env):
    c = child("family")
    w = tty(child_env, c.id)
    w.expect(b"children 2: 1 succeeded, 1 failed")
    kid = tether.get_run(c.id).children()[0]
    k = tty(child_env, kid.id)
    k.expect(re.escape(f"parent {c.id} (helpers.watch_pipelines.family #1, running)".encode()))
    assert ended(k)[0] in (0, 1)  # a child that had ended: its outcome at once
    c.open("a")
    assert ended(w)[0] == 0


def test_pending_run_says_what_it_waits_for(db, child_env):
    run = watch_pipelines.quick.start(ok=True, detach=True)  # pending until a `tether worker` takes it
    w = plain(child_env, run.id)
    w.expect(b"pending .* waiting for a tether worker to take it; in a shell, run: tether worker helpers")
    run.cancel()  # a pending run ends cancelled at once
    code, out = ended(w)
    assert code == 2 and b"cancelled by run.cancel()" in out


def test_resize_redraws_at_the_new_width(child, child_env):
    c = child()
    w = tty(child_env, c.id, cols=120)
    w.expect(r"2/4 \(50%\)")
    w.setwinsize(30, 40)  # SIGWINCH
    w.expect(re.escape(b"\x1b[H\x1b[2J"))  # narrower: cleared, then drawn again
    w.expect("helpers.watch_pipelines.gated #1  runn…".encode())  # clipped to 39 columns
    w.expect(b"Ctrl-C stops watching")
    frame = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", w.before).decode()
    assert frame.splitlines() and max(len(line) for line in frame.splitlines()) <= 39, frame
    c.open("a")
    c.open("b")
    assert ended(w)[0] == 0


# -- which run: ID, --latest, --pipeline, and nothing to watch ---------------------------------


def watch_here(capsys: Any, *args: str) -> tuple[int, str, str]:
    """`tether watch` in this process (its stdout is not a terminal here): code, out, err."""
    code = cli.main(["watch", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_latest_and_pipeline_pick_the_right_run(db, tmp_path, capsys):
    tether.runs()  # the database exists, with no run in it
    code, _, err = watch_here(capsys, "--latest")
    assert code == 3 and "no runs in" in err
    first = watch_pipelines.quick.start(ok=False)
    first.wait()
    second = watch_pipelines.quick.start(ok=True)
    second.wait()
    gates = tmp_path / "open"
    gates.mkdir()
    (gates / "a").touch()
    (gates / "b").touch()
    third = watch_pipelines.gated.start(gates=str(gates), fail=True)
    third.wait()
    cases = [
        (["--latest"], third, 1),
        (["--pipeline", "helpers.watch_pipelines.quick"], second, 0),
        ([first.id], first, 1),
    ]
    for args, run, expected in cases:
        code, out, err = watch_here(capsys, *args)
        assert code == expected, (args, out, err)
        assert out.splitlines()[0] == f"watching {run.pipeline} #1 id={run.id}", (args, out)
    code, _, err = watch_here(capsys, "--pipeline", "nope")
    assert code == 3
    assert "no run of pipeline 'nope'" in err and "helpers.watch_pipelines.quick" in err
    code, _, err = watch_here(capsys, "nosuchid")
    assert code == 3 and "no run with id 'nosuchid'" in err, err
    code, _, err = watch_here(capsys, "--db", str(tmp_path / "typo.db"), "--latest")
    assert code == 3 and "does not exist" in err
    assert not (tmp_path / "typo.db").exists()
    with pytest.raises(SystemExit) as exc:
        cli.main(["watch"])
    assert exc.value.code == 2 and "one of the arguments" in capsys.readouterr().err  # argparse


def test_watching_takes_no_write_lock_and_makes_no_runner(child, child_env):
    c = child()
    code = (
        "import sys\nfrom tether import cli, workspace\n"
        f"code = cli.main(['watch', {c.id!r}])\n"
        "print('runners', len(workspace.default()._live_runners()))\nsys.exit(code)"
    )
    w = PopenSpawn([sys.executable, "-c", code], env=child_env, timeout=TIMEOUT)
    w.expect("load 2/4")
    c.open("a")
    c.open("b")
    status, out = ended(w)
    assert status == 0 and b"runners 0" in out  # no runner: nothing to mark at exit, no write lock


def test_watch_imports_no_widget_library(child_env):
    code = (
        "import sys, tether.cli, tether.watch\n"
        "print(sorted(m for m in ('anywidget', 'ipywidgets', 'IPython') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out
