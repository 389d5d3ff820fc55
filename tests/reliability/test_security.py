"""Security (issue 6): what tether creates is private to the user; the store never unpickles; the CLI
and the worker never execute code named by the database; run text stays text.

- Private files: tests/test_store.py checks 0700/0600 (with -wal and -shm) under the default umask;
  here under a permissive umask, in a child process, and for every folder tether creates.
- Never unpickles: a static check (no module of src/tether imports pickle & co., but the codec for
  the opt-in ``serializer="pickle"``, behind an owner check) AND a behavioural
  one: pickles that would create a marker file when loaded are stored as params, log lines, phase
  names, checkpoints, errors and results, and as raw BLOBs written behind tether's back, then read
  back through every read path (Run, runs(), events, checkpoints, the panel and dashboard
  snapshots, the CLI); the marker never appears.
- The CLI and the worker import only what the command line names: a pending detached run whose
  ``pipeline`` names a module that creates a marker when imported stays pending and the marker
  never appears, through ls/show/gc/cancel and a worker of another module.
- The panel renders run text as text: covered in a real browser by
  tests/ui/test_panel_browser.py::test_run_text_is_never_html and, for the static text/html, by
  tests/test_panel.py::test_static_renderings_escape_run_text (not repeated here). The terminal
  equivalent (control characters from run text reaching the terminal through the CLI) is here.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import pickletools
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import reliability_pipelines

SRC = Path(tether.__file__).parent

# -- helpers --------------------------------------------------------------------------------------


def raw(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(sql, args).fetchall()


def write(db: Path, sql: str, *args: Any) -> None:
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.execute(sql, args)
        conn.commit()


def cli(
    env: dict[str, str], db: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *args, "--db", str(db)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- private files --------------------------------------------------------------------------------

_MODES_CHILD = textwrap.dedent("""
    import json, os, stat, sys
    os.umask(0)
    import tether
    tether.configure(db=sys.argv[1])

    @tether.pipeline
    def job(ctx, n: int):
        ctx.log("hello")
        return n

    assert job.start(n=1).result(timeout=30) == 1
    top = sys.argv[2]
    modes = {}
    for folder, dirs, files in os.walk(top):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            modes[os.path.relpath(name, top)] = stat.S_IMODE(os.stat(name).st_mode)
    print(json.dumps(modes))
""")


def _modes_with_umask_0(db: Path, top: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _MODES_CHILD, str(db), str(top)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return {k: v for k, v in json.loads(out.stdout).items() if k != "."}


def test_database_folder_file_wal_and_shm_are_private_under_umask_0(tmp_path: Path) -> None:
    """umask 0 (some containers and shared JupyterHubs) must not make the run history readable."""
    top = tmp_path / "top"
    top.mkdir()
    modes = _modes_with_umask_0(top / "state" / "runs.db", top)
    assert modes == {
        "state": 0o700,
        "state/runs.db": 0o600,
        "state/runs.db-wal": 0o600,
        "state/runs.db-shm": 0o600,
    }, {k: oct(v) for k, v in modes.items()}


def test_every_folder_tether_creates_is_private(tmp_path: Path) -> None:
    """BUG (now): Store._create_file calls ``parent.mkdir(mode=0o700, parents=True)``, and
    pathlib creates the missing *intermediate* folders with the default mode: under umask 0 a
    folder tether created is world-writable (anyone can swap the 0700 folder inside it)."""
    top = tmp_path / "top"
    top.mkdir()
    modes = _modes_with_umask_0(top / "a" / "b" / "runs.db", top)
    folders = {k: oct(v) for k, v in modes.items() if not k.endswith(("db", "-wal", "-shm"))}
    assert folders == {"a": oct(0o700), "a/b": oct(0o700)}, folders


# -- never unpickle: static -----------------------------------------------------------------------

FORBIDDEN = {
    "pickle",
    "_pickle",
    "cPickle",
    "marshal",
    "shelve",
    "dill",
    "cloudpickle",
    "jsonpickle",
    "joblib",
}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_no_module_of_tether_imports_a_deserialiser_that_runs_code() -> None:
    """Only the codec imports pickle, for the opt-in ``serializer="pickle"`` (docs/values.md),
    and its one unpickling call comes after the check that the reader owns the database."""
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) >= 10
    found = {}
    for path in modules:
        bad = _imports(ast.parse(path.read_text(), str(path))) & FORBIDDEN
        if bad:
            found[str(path.relative_to(SRC))] = sorted(bad)
    assert found == {"codec/_decode.py": ["pickle"], "codec/_encode.py": ["pickle"]}
    tree = ast.parse((SRC / "codec" / "_decode.py").read_text())
    loads = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
            for call in calls:
                if (
                    call.func.attr in ("loads", "load", "Unpickler")
                    and isinstance(call.func.value, ast.Name)
                    and call.func.value.id == "pickle"
                ):
                    checks = [c.lineno for c in calls if c.func.attr == "check_pickle"]
                    loads[fn.name] = bool(checks) and min(checks) < call.lineno
    assert loads == {"_dec_pickle": True}


def test_only_the_worker_imports_modules_by_name_and_nothing_evaluates_code() -> None:
    """Dynamic imports (importlib, __import__) only in worker.py (modules named on its command
    line); no eval/exec/compile anywhere."""
    dynamic, evals = {}, {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        rel = str(path.relative_to(SRC))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                if name in (
                    "import_module",
                    "__import__",
                    "find_spec",
                    "spec_from_file_location",
                    "run_path",
                    "run_module",
                ):
                    dynamic.setdefault(rel, set()).add(name)
                if name in ("eval", "exec", "compile") and isinstance(fn, ast.Name):
                    evals.setdefault(rel, set()).add(name)
    assert evals == {}
    # _capture.py: a meta path finder that answers only for "tqdm.std" when the user imports it
    # (to wrap tqdm for runs); it delegates the import to the other finders, naming nothing
    assert dynamic == {"worker.py": {"import_module"}, "_capture.py": {"find_spec"}}


# -- never unpickle: behaviour --------------------------------------------------------------------


class _Plant:
    """Unpickling this creates ``path`` (io.open(path, "w"))."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _pickles(folder: Path) -> tuple[bytes, bytes, list[Path]]:
    m_bin, m_text = folder / "unpickled-binary", folder / "unpickled-text"
    binary = pickle.dumps(_Plant(m_bin), protocol=pickle.HIGHEST_PROTOCOL)
    text = f"cio\nopen\n(S'{m_text}'\nS'w'\ntR.".encode()
    for blob in (binary, text):
        pickletools.dis(blob, out=io.StringIO())  # both really are pickles
    return binary, text, [m_bin, m_text]


def payloads(tmp_path: Path) -> tuple[dict[str, str], list[Path]]:
    """Pickles that would create a marker file if loaded, as str (a binary one as latin-1)."""
    canary = tmp_path / "canary"  # the same pickles, aimed elsewhere, really do create files
    canary.mkdir()
    c_bin, c_text, c_markers = _pickles(canary)
    for blob in (c_bin, c_text):
        pickle.loads(blob).close()
    assert all(m.exists() for m in c_markers)
    binary, text, markers = _pickles(tmp_path)
    return {"binary": binary.decode("latin-1"), "text": text.decode()}, markers


@tether.pipeline(phases=["carry"])
def carrier(ctx: tether.Context, binary: str, text: str, fail: bool = False) -> dict[str, str]:
    ctx.phase("carry", total=2)
    ctx.phase(text)  # a phase name
    ctx.log(binary)
    ctx.log("%s|%s", text, binary)
    ctx.step("blob", lambda: {"binary": binary, "text": text})
    ctx.map(lambda x: x, [binary, text], name="items")
    ctx.advance(2)
    if fail:
        raise ValueError(binary + text)
    return {"binary": binary, "text": text}


def _read_everything(run_ids: list[str]) -> list[str]:
    """Every in-process read path, for every run; returns what raised (a tampered row may)."""
    from tether.view.reader import RunReader
    from tether.view.snapshot import build, html_snapshot, text_snapshot
    from tether.widget import dashboard, panel, repr_bundle

    store = tether.workspace.default().store()
    raised: list[str] = []

    def attempt(what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:
            raised.append(f"{what}: {type(exc).__name__}")

    attempt("runs", lambda: [r.snapshot() for r in tether.runs(limit=None)])
    for run_id in run_ids:

        def one(run_id: str = run_id) -> None:
            run = tether.get_run(run_id)
            for prop in (
                "status",
                "phase",
                "phases",
                "phases_done",
                "progress",
                "error",
                "message",
                "params",
                "version",
                "resumed_from",
            ):
                getattr(run, prop)
            run.events()
            run.logs()
            run.logs(2)
            run.attempts()
            repr(run)
            if run.status == "succeeded":
                run.result()

        attempt(f"run {run_id}", one)
        attempt(
            f"checkpoints {run_id}", lambda r=run_id: (store.checkpoints(r), store.checkpoint(r, "step:blob"))
        )
        attempt(f"events {run_id}", lambda r=run_id: (store.events(r), store.tail(r, "log", 5)))

        def widgets(run_id: str = run_id) -> None:
            run = tether.get_run(run_id)
            reader = RunReader(run)
            snap = build(reader.read(), mode="static", log=reader.log)
            text_snapshot(snap)
            html_snapshot(snap)
            repr_bundle(run)
            w = panel(run)
            _ = w.snapshot
            w.close()

        attempt(f"panel {run_id}", widgets)

    def board() -> None:
        d = dashboard()
        _ = d.table.rows
        d.close()

    attempt("dashboard", board)
    return raised


_CLI_BATCH = textwrap.dedent("""
    import contextlib, io, json, sys
    from tether.cli import main

    codes = []
    for args in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(args)
        except BaseException as exc:  # a crash (not a clean CLI error) is reported as such
            code = f"{type(exc).__name__}: {exc}"
        codes.append([args[0], code, err.getvalue()])
    print(json.dumps(codes))
""")


def _cli_everything(env: dict[str, str], db: Path, run_ids: list[str], strict: bool) -> None:
    """Every CLI command that reads runs, run by ``tether.cli.main`` in one child process (one
    interpreter start instead of 3 + 3 per run); ``strict``: each must exit 0 quietly."""
    commands = [["ls"], ["ls", "--json"], ["gc"]]
    for run_id in run_ids:
        commands += [["show", run_id, "--lines", "50"], ["show", run_id, "--json"], ["cancel", run_id]]
    commands = [[*args, "--db", str(db)] for args in commands]
    out = subprocess.run(
        [sys.executable, "-c", _CLI_BATCH, json.dumps(commands)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-800:]
    if strict:
        assert [c for c in json.loads(out.stdout) if c[1] != 0 or c[2]] == []


def test_pickles_stored_as_run_text_are_never_loaded(
    db: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    carried, markers = payloads(tmp_path)
    ok = carrier.start(**carried)
    assert ok.result(timeout=30) == carried
    bad = carrier.start(**carried, fail=True)
    with pytest.raises(tether.RunFailed):
        bad.result(timeout=30)
    assert ok.logs() == [carried["binary"], f"{carried['text']}|{carried['binary']}"]
    assert bad.error["message"] == carried["binary"] + carried["text"]
    assert tether.workspace.default().store().checkpoint(ok.id, "step:blob") == (True, carried)
    assert _read_everything([ok.id, bad.id]) == []
    _cli_everything(child_env, db, [ok.id, bad.id], strict=True)
    tether.workspace.default().close()  # and a fresh process reading them
    assert _read_everything([ok.id, bad.id]) == []
    assert [m for m in markers if m.exists()] == []


def test_pickles_written_as_blobs_behind_tethers_back_are_never_loaded(
    db: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    """Raw pickle bytes in every JSON column (another program, or an attacker with write access to
    the file): reading may fail (see test_bad_input's tampered-column test) but never unpickles."""
    carried, markers = payloads(tmp_path)
    blob = carried["binary"].encode("latin-1")
    ids = []
    for i in range(5):
        run = carrier.start(binary=f"b{i}", text=f"t{i}")
        run.wait(timeout=30)
        ids.append(run.id)
    tether.workspace.default().close()
    write(db, "UPDATE runs SET result = ? WHERE id = ?", blob, ids[0])
    write(db, "UPDATE runs SET params = ? WHERE id = ?", blob, ids[1])
    write(db, "UPDATE runs SET error = ?, phases = ? WHERE id = ?", blob, blob, ids[2])
    write(db, "UPDATE events SET data = ? WHERE run_id = ?", blob, ids[3])
    write(db, "UPDATE checkpoints SET value = ? WHERE run_id = ?", blob, ids[4])
    raised = _read_everything(ids)
    assert raised, "reading garbage JSON columns raised nothing at all?"
    _cli_everything(child_env, db, ids, strict=False)
    assert [m for m in markers if m.exists()] == []


# -- the CLI and the worker execute only what the command line names ------------------------------


def test_cli_and_worker_never_import_what_the_database_names(
    db: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    here = tmp_path / "cwd"  # the worker puts its cwd on sys.path: the evil module sits there
    here.mkdir()
    marker = tmp_path / "EVIL-IMPORTED"
    for name in ("evil_mod", "evil_pkg_mod"):
        (here / f"{name}.py").write_text(
            textwrap.dedent(f"""
            open({str(marker)!r}, "a").write({name!r} + " imported\\n")
            import tether

            @tether.pipeline(name="{name}.run")
            def run(ctx, tag: str, log: str = ""):
                open({str(marker)!r}, "a").write({name!r} + " executed\\n")
                return {{"pwned": True}}
        """)
        )
    env = dict(child_env, PYTHONPATH=os.pathsep.join([str(here), child_env["PYTHONPATH"]]))
    log = tmp_path / "benign.log"
    good = reliability_pipelines.benign.start(tag="good", log=str(log), detach=True)
    evil = reliability_pipelines.benign.start(tag="evil", log=str(log), detach=True)
    other = reliability_pipelines.benign.start(tag="other", log=str(log), detach=True)
    # the database (written by anyone) names modules: as a pipeline, with a function, as a key
    write(db, "UPDATE runs SET pipeline = 'evil_mod.run', key = 'evil_pkg_mod:run' WHERE id = ?", evil.id)
    write(db, "UPDATE runs SET pipeline = 'evil_pkg_mod:run' WHERE id = ?", other.id)

    for args in (["ls"], ["ls", "--json"], ["show", evil.id], ["show", other.id, "--json"], ["gc"]):
        out = cli(env, db, *args, cwd=here)
        assert out.returncode == 0, (args, out.stderr)
        assert evil.id in out.stdout or args == ["show", other.id, "--json"] or args == ["gc"]
        assert not marker.exists(), f"`tether {' '.join(args)}` imported a module named by the DB"

    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether.cli",
            "worker",
            "helpers.reliability_pipelines",
            "--once",
            "--poll",
            "0.05",
            "--db",
            str(db),
        ],
        env=env,
        cwd=here,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert worker.returncode == 0, worker.stderr
    assert "executed 1 run" in worker.stdout
    assert not marker.exists(), marker.read_text()
    assert log.read_text().split() == ["good"]
    assert good.result(timeout=30) == {"tag": "good"}
    assert evil.status == "pending" and other.status == "pending"  # nobody claimed them

    # cancel (CLI) and re-run (API) of those runs act on rows only
    out = cli(env, db, "cancel", evil.id, cwd=here)
    assert out.returncode == 0 and "cancelled" in out.stdout, out.stderr
    assert tether.get_run(evil.id).status == "cancelled"
    again = tether.get_run(evil.id).rerun()  # a detached run's new attempt is left to workers
    assert again.status == "pending" and again.pipeline == "evil_mod.run"
    assert not marker.exists()
    assert "evil_mod" not in sys.modules and "evil_pkg_mod" not in sys.modules


# -- run text stays text in a terminal ------------------------------------------------------------

ESCAPES = {
    "title": "\x1b]0;owned\x07",  # OSC: sets the terminal title (OSC 52 writes the clipboard)
    "clear": "\x1b[2J\x1b[H",  # CSI: clears the screen, hides what came before
    "color": "\x1b[8m",  # CSI: invisible text
    "bell": "\x07",
    "cr": "fake line\r",  # overwrites the line it is on
    "c1": "\x9b31m",  # a C1 CSI (8-bit terminals)
}


@tether.pipeline(name="esc\x1b[31m-pipeline")
def shouty(ctx: tether.Context, what: str) -> str:
    ctx.phase("phase" + ESCAPES["title"])
    ctx.log("log %s", ESCAPES[what] + "end")
    raise ValueError("error " + ESCAPES[what] + "end")


def test_cli_output_contains_no_terminal_control_characters_from_run_text(
    db: Path, child_env: dict[str, str]
) -> None:
    """BUG (now): `tether ls` / `tether show` print pipeline names, phases, log lines and error
    messages raw, so a run's text can drive the user's terminal (retitle it, clear it, hide or
    overwrite lines; OSC 52 can write the clipboard). JSON output (--json, params, results) is
    escaped already. Printable text, tabs and newlines between lines are fine."""
    ids = []
    for what in ESCAPES:
        run = shouty.start(what=what)
        run.wait(timeout=30)
        ids.append(run.id)
    allowed = {"\n", "\t"}
    for args in [["ls"], ["ls", "--json"], *(["show", i] for i in ids), ["show", ids[0], "--json"]]:
        out = cli(child_env, db, *args)
        assert out.returncode == 0, out.stderr
        bad = sorted({c for c in out.stdout if (ord(c) < 32 or 0x7F <= ord(c) < 0xA0)} - allowed)
        assert bad == [], f"`tether {' '.join(args)}` printed control characters {bad}"
