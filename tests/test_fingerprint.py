"""Code is part of a run's identity (issue 13, item 4).

Each run records the fingerprint of its body's code (its syntax tree: comments, blank lines and
docstrings do not count). ``start()`` never returns an ended run made by other code: it makes a
new attempt of the key. An active run of older code is returned with one warning. An explicit
``version=`` pins the code. Shown in-process (cells simulated the way IPython runs them: source
kept in ``linecache``) and in a real kernel (jupyter_client).
"""

from __future__ import annotations

import functools
import itertools
import linecache
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers.util import raw, wait_until
from tether._code import fingerprint
from tether.pipeline import Pipeline

_cells = itertools.count()


def define(source: str, **names: Any) -> Any:
    """Execute ``source`` as a notebook cell would (its text in linecache, as IPython keeps it);
    returns the pipeline it defines (the last one)."""
    filename = f"<test-cell-{next(_cells)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns: dict[str, Any] = {"tether": tether, **names}
    exec(compile(source, filename, "exec"), ns)
    return next(v for v in reversed(ns.values()) if isinstance(v, Pipeline))


BODY = '''
@tether.pipeline(name="process")
def process(ctx, n=3):
    """Doubles n."""
    total = 0
    for i in range(n):
        total += 2  # one step
    return total
'''

SAME_BUT_COMMENTS = """
@tether.pipeline(name="process", phases=["a"])
def process(ctx, n=3):
    # the doc string went, comments and blank lines came: the same code

    total = 0
    for i in range(n):

        total += 2
    return total
"""

EDITED = '''
@tether.pipeline(name="process")
def process(ctx, n=3):
    """Triples n."""
    total = 0
    for i in range(n):
        total += 3
    return total
'''


# -- the fingerprint ----------------------------------------------------------------------------


def test_comments_blank_lines_docstrings_and_decorators_do_not_count_the_body_does(db: Path) -> None:
    base = define(BODY)
    assert base.code is not None and base.code.startswith("ast:")
    assert define(SAME_BUT_COMMENTS).code == base.code
    assert define(BODY.replace("    ", "        ")).code == base.code  # indentation
    assert define(EDITED).code != base.code
    assert define(BODY.replace("n=3", "n=4")).code != base.code  # a default is code too
    nested = BODY.replace(
        "    total = 0\n",
        "    def helper():\n        '''inner doc'''\n        return 0\n    total = helper()\n",
    )
    assert define(nested).code == define(nested.replace("'''inner doc'''\n        ", "")).code


def test_without_source_the_compiled_code_is_hashed_and_without_code_there_is_none(db: Path) -> None:
    ns: dict[str, Any] = {}
    exec(compile("def body(ctx, n=3):\n    'doc'\n    return n * 2\n", "<no-source>", "exec"), ns)
    code = fingerprint(ns["body"])
    assert code is not None and code.startswith("bytecode:")
    exec(compile("\n\ndef body(ctx, n=3):\n    return n * 2\n", "<no-source>", "exec"), ns)
    assert fingerprint(ns["body"]) == code  # moved lines and a docstring do not count
    exec(compile("def body(ctx, n=3):\n    return n * 3\n", "<no-source>", "exec"), ns)
    assert fingerprint(ns["body"]) != code
    assert fingerprint(functools.partial(ns["body"])) is None


# -- start() -------------------------------------------------------------------------------------


def test_an_edited_body_makes_a_new_attempt_and_an_unchanged_or_comment_only_one_attaches(db: Path) -> None:
    first = define(BODY).start()
    assert first.result(timeout=20) == 6
    assert first.code == define(BODY).code and first.created_by == "start"
    assert define(BODY).start() == first  # the cell executed again
    assert define(SAME_BUT_COMMENTS).start() == first  # a comment-only edit

    edited = define(EDITED)
    second = edited.start()
    assert second != first and second.key == first.key and second.attempt == 2
    assert second.result(timeout=20) == 9
    assert second.code == edited.code and second.created_by == "start:code"
    created = second.events(kinds=["created"])[0].data
    assert created["by"] == "start:code"
    assert created["code_changed"] == f"code {first.code} -> {edited.code}"
    assert [(r.attempt, r.created_by) for r in second.attempts()] == [(1, "start"), (2, "start:code")]
    assert edited.start() == second
    assert tether.get_run(first.id).result() == 6  # history kept
    # the panel (and its text and html renderings) says why attempt 2 exists
    from tether.view.snapshot import build, html_snapshot, text_snapshot

    snap = build(second.snapshot(), mode="static")
    assert snap["why"] == "code changed"
    assert "#2 (code changed)" in text_snapshot(snap) and "<i>code changed</i>" in html_snapshot(snap)
    assert build(first.snapshot(), mode="static")["why"] is None


NOTEBOOK = """
import sys, tether
tether.configure(db=sys.argv[1])

@tether.pipeline(name="process")
def process(ctx, n=3):
    return n * FACTOR

run = process.start()
print(run.attempt, run.result(timeout=30))
"""


def test_two_notebooks_with_one_name_and_params_never_share_results(
    db: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    """Two kernels (processes) define ``process(ctx, n=3)`` with other bodies over one DB."""
    import subprocess
    import sys

    for name, factor in (("a", 2), ("b", 3)):
        (tmp_path / f"notebook_{name}.py").write_text(NOTEBOOK.replace("FACTOR", str(factor)))

    def execute(name: str) -> str:
        out = subprocess.run(
            [sys.executable, str(tmp_path / f"notebook_{name}.py"), str(db)],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert execute("a") == "1 6"
    assert execute("b") == "2 9"  # not notebook a's result
    assert execute("b") == "2 9"  # its own, attached
    assert execute("a") == "3 6"


def test_a_pending_run_of_older_code_executes_the_code_that_created_it(db: Path) -> None:
    tether.configure(max_concurrency=1)
    gate = threading.Event()
    blocker = define(
        "@tether.pipeline(name='blocker')\ndef blocker(ctx):\n    gate.wait(30)\n", gate=gate
    ).start()
    wait_until(lambda: blocker.status == "running", what="the blocker to take the slot")
    try:
        pending = define(BODY).start()
        assert pending.status == "pending"
        with pytest.warns(UserWarning, match="is still pending, started by other code"):
            assert define(EDITED).start() == pending
    finally:
        gate.set()
    assert pending.result(timeout=20) == 6  # the code it was created by and records


def test_the_policies_with_edited_code(db: Path) -> None:
    """fail: an ended run of other code is not returned (a new attempt, as with attach);
    rerun: a new attempt, recorded as of the new code; resume: a new attempt that reuses the
    checkpoints, even after a success."""
    calls: list[str] = []
    step_body = """
@tether.pipeline(name="stepper")
def stepper(ctx):
    a = ctx.step("a", lambda: calls.append("a") or 1)
    return a + FACTOR
"""
    one = define(step_body.replace("FACTOR", "10"), calls=calls).start()
    assert one.result(timeout=20) == 11 and calls == ["a"]
    resumed = define(step_body.replace("FACTOR", "20"), calls=calls).start(policy="resume")
    assert resumed.result(timeout=20) == 21 and calls == ["a"]  # step a came from the checkpoint
    assert resumed.resumed_from == one.id and resumed.created_by == "start:resume:code"
    failed = define(step_body.replace("FACTOR", "30"), calls=calls).start(policy="fail")
    assert failed.result(timeout=20) == 31 and failed.created_by == "start:code"
    assert calls == ["a", "a"]
    again = define(step_body.replace("FACTOR", "40"), calls=calls).start(policy="rerun")
    assert again.created_by == "start:rerun" and again.result(timeout=20) == 41
    assert again.events(kinds=["created"])[0].data["code_changed"].startswith("code ast:")


def test_an_active_run_of_older_code_is_returned_with_one_warning_naming_the_fix(db: Path) -> None:
    gate = threading.Event()
    slow = """
@tether.pipeline(name="slow")
def slow(ctx):
    while not gate.wait(0.005):
        ctx.advance()  # sees a cancel
    return VALUE
"""
    old = define(slow.replace("VALUE", "1"), gate=gate).start()
    wait_until(lambda: old.status == "running", what="the old code's run to start")
    new = define(slow.replace("VALUE", "2"), gate=gate)
    try:
        with pytest.warns(UserWarning) as caught:
            attached = new.start()
        assert attached == old
        assert len(caught) == 1
        text = str(caught[0].message)
        assert f"run {old.id} is still running, started by other code" in text
        assert "run.cancel(), run.wait(), then start it again" in text
        assert caught[0].filename == __file__  # it names the caller's line
        old.cancel().wait(20)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fresh = new.start()  # the old code's run ended: the new code runs
        gate.set()
        assert fresh.attempt == 2 and fresh.result(timeout=20) == 2
    finally:
        gate.set()


def test_a_declared_version_pins_the_code(db: Path) -> None:
    pinned = BODY.replace('name="process"', 'name="process", version="2024-06"')
    first = define(pinned).start()
    assert first.result(timeout=20) == 6
    edited = define(pinned.replace("total += 2", "total += 5"))
    assert edited.code != first.code
    assert edited.start() == first  # same version: the edit does not count
    bumped = define(pinned.replace("2024-06", "2024-07"))
    second = bumped.start()
    assert second.attempt == 2 and second.created_by == "start:code"
    assert second.events(kinds=["created"])[0].data["code_changed"] == ("version '2024-06' -> '2024-07'")


def test_a_rerun_from_a_handle_records_the_code_that_executes_it(db: Path) -> None:
    first = define(BODY).start()
    first.wait(20)
    edited = define(EDITED)
    again = first.rerun()
    assert again.result(timeout=20) == 9
    assert again.code == edited.code and again.created_by == "rerun"
    assert again.events(kinds=["created"])[0].data["code_changed"].endswith(edited.code)


def test_runs_recorded_before_fingerprints_are_reused_as_before(db: Path) -> None:
    """A database of an older tether (no ``code`` column) migrates; its runs have no
    fingerprint, so they answer new calls as they did (nothing runs again after an upgrade)."""
    old = define(BODY).start()
    assert old.result(timeout=20) == 6
    tether.workspace.default().close()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("ALTER TABLE runs DROP COLUMN code")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0004_code'")
        conn.commit()
    assert define(EDITED).start().id == old.id
    assert raw(db, "SELECT code FROM runs") == [(None,)]
    assert "0004_code" in [r[0] for r in raw(db, "SELECT name FROM _sqlite_migrations")]


def test_a_damaged_code_column_is_other_code_never_a_wrong_result(db: Path) -> None:
    first = define(BODY).start()
    first.wait(20)
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE runs SET code = 42")
        conn.commit()
    second = define(BODY).start()
    assert second != first and second.result(timeout=20) == 6


# -- in a real kernel ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from helpers.kernel import started

    with started(tmp_path_factory.mktemp("kernel")) as k:
        yield k


KERNEL_CELL = """
@tether.pipeline
def process(ctx, n=3):
    {body}
run = process.start()
print("RUN", run.id, run.attempt, run.created_by, run.result(timeout=30))
"""


def test_in_a_real_kernel_an_edited_cell_runs_again_and_a_comment_only_edit_does_not(
    kernel: Any, tmp_path: Path
) -> None:
    kernel.cell(f"import tether\ntether.configure(db={str(tmp_path / 'k.db')!r})")

    def cell(body: str) -> list[str]:
        out = kernel.cell(KERNEL_CELL.format(body=body)).stdout
        return out.split("RUN", 1)[1].split()

    run_id, attempt, by, result = cell("return n * 2")
    assert (attempt, by, result) == ("1", "start", "6")
    assert cell("return n * 2")[0] == run_id  # the same cell executed again
    assert cell("# a comment\n    return n * 2  # and another")[0] == run_id
    assert cell('"""A docstring."""\n\n    return n * 2')[0] == run_id
    new_id, attempt, by, result = cell("return n * 3")
    assert new_id != run_id and (attempt, by, result) == ("2", "start:code", "9")
    assert cell("return n * 3")[0] == new_id
