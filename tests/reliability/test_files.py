"""Files and permissions (issue 11, items 11 and the first half of 12).

- A database under a folder the user cannot enter, or a file the user cannot read: a one-line
  ``tether.StoreError`` naming the path and the fix, from ``start()``, ``tether.runs()`` and the CLI
  (never a raw ``PermissionError`` or a traceback). Reproduced as an unprivileged user: as root, a
  forked child that drops to ``nobody`` (the interpreter is loaded already, so it needs no access to
  where Python lives); as any other user, in this process.
- An existing database (or its ``-wal``/``-shm``) owned by another user is refused, root included:
  whoever owns it can read and change your runs. ``tether.configure(allow_foreign_db=True)`` or
  ``TETHER_ALLOW_FOREIGN_DB=1`` allows it. Needs root (to chown); skips without, fails under CI.
- ``TETHER_DB=mysql://...`` (any URL but PostgreSQL's, tests/test_postgres.py) is not a file path:
  a StoreError, and no folder named ``mysql:`` appears in the cwd.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import closing, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

import tether
import tether.cli
from helpers.util import unavailable


@tether.pipeline
def quick(ctx: tether.Context, n: int) -> int:
    return n


def _nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def _needs_root(why: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"needs root: {why}", f"CI must run this test as root: {why}")


def _attempt(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": fn()}
    except BaseException as exc:  # what the user would see, whatever it is
        return {
            "raised": type(exc).__name__,
            "message": str(exc),
            "typed": isinstance(exc, tether.StoreError),
            "traceback": traceback.format_exc(),
        }


def _cli(*args: str) -> dict[str, Any]:
    """``tether.cli.main(args)`` in this process: its exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        got = _attempt(lambda: tether.cli.main(list(args)))
    return {**got, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _unprivileged(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()`` run by a user without root's rights; returns its (JSON) result."""
    if os.geteuid() != 0:
        return fn()
    user = _nobody()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, report, and leave without any cleanup
        status = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            data = json.dumps(_attempt(fn)).encode()
            while data:
                data = data[os.write(write, data) :]
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    chunks = []
    with os.fdopen(read, "rb") as fh:
        chunks.append(fh.read())
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0, "the unprivileged child failed to report"
    got = json.loads(b"".join(chunks))
    assert "ok" in got, got.get("traceback")
    return got["ok"]  # type: ignore[no-any-return]


@pytest.fixture
def warm(db: Path) -> None:
    """Everything tether imports lazily is imported (an unprivileged child may not read it)."""
    assert quick.start(n=0).result(timeout=30) == 0


@pytest.fixture
def reachable(tmp_path: Path) -> Iterator[Path]:
    """A folder the unprivileged user owns."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="tether-files-"))
    os.chown(folder, _nobody().pw_uid, _nobody().pw_gid)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _one_line_store_error(got: dict[str, Any], path: Path) -> str:
    assert "raised" in got, f"no error: {got}"
    assert got["typed"], f"a raw {got['raised']} instead of a StoreError:\n{got['traceback']}"
    message = got["message"]
    assert str(path) in message and "\n" not in message, message
    return message  # type: ignore[no-any-return]


# -- folders and files the user cannot reach ------------------------------------------------------


def test_a_database_under_a_folder_the_user_cannot_enter_is_a_store_error(warm: None, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    (locked / ".tether").mkdir(parents=True)
    path = locked / ".tether" / "runs.db"
    locked.chmod(0)
    try:

        def use() -> dict[str, Any]:
            tether.configure(db=path)
            return {
                "start": _attempt(lambda: quick.start(n=1).result(timeout=30)),
                "runs": _attempt(lambda: tether.runs()),
                "get_run": _attempt(lambda: tether.get_run("0123456789ab")),
            }

        got = _unprivileged(use)
    finally:
        locked.chmod(0o700)
    for what in ("start", "runs", "get_run"):
        message = _one_line_store_error(got[what], path)
        assert "permission" in message.lower() and "tether.configure(db=" in message, message
    assert not path.exists()


def test_tether_ls_on_a_database_under_a_folder_the_user_cannot_enter(warm: None, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    path = locked / "runs.db"
    locked.chmod(0)
    try:
        got = _unprivileged(lambda: _cli("ls", "--db", str(path)))
    finally:
        locked.chmod(0o700)
    assert got.get("ok") == 1, got
    assert got["stderr"].startswith("tether: error:") and str(path) in got["stderr"]
    assert len(got["stderr"].strip().splitlines()) == 1


def test_existing_store_reports_an_unreachable_folder_as_a_store_error(warm: None, tmp_path: Path) -> None:
    """What the CLI needs: a StoreError for a database that is missing or out of reach."""
    locked = tmp_path / "locked"
    locked.mkdir()
    path = locked / "runs.db"
    locked.chmod(0)
    try:
        got = _unprivileged(
            lambda: {"store": _attempt(lambda: str(tether.workspace.default().existing_store(path)))}
        )
    finally:
        locked.chmod(0o700)
    assert "permission" in _one_line_store_error(got["store"], path).lower()
    with pytest.raises(tether.StoreError, match="does not exist"):
        tether.workspace.default().existing_store(tmp_path / "missing.db")
    assert (
        tether.workspace.default().existing_store(tether.workspace.default().db_path())
        is tether.workspace.default().store()
    )


def test_a_database_file_the_user_cannot_read_is_a_store_error(warm: None, reachable: Path) -> None:
    path = reachable / "runs.db"

    def use() -> dict[str, Any]:
        tether.configure(db=path)
        made = _attempt(lambda: quick.start(n=1).result(timeout=30))
        tether.workspace.default().close()
        path.chmod(0)
        return {
            "made": made,
            "runs": _attempt(lambda: tether.runs()),
            "start": _attempt(lambda: quick.start(n=2).result(timeout=30)),
        }

    got = _unprivileged(use)
    if os.geteuid() == 0:
        assert got["made"] == {"ok": 1}, got["made"]
    for what in ("runs", "start"):
        message = _one_line_store_error(got[what], path)
        assert "permission" in message.lower() or "cannot be read" in message, message


# -- a database owned by another user -------------------------------------------------------------


def _foreign_db(db: Path, tmp_path: Path) -> Path:
    """A used database in a world-writable folder, owned by nobody, mode 0666."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    path = shared / "runs.db"
    tether.configure(db=path)
    assert quick.start(n=1).result(timeout=30) == 1
    tether.workspace.default().close()
    user = _nobody()
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if name.exists():
            os.chown(name, user.pw_uid, user.pw_gid)
            name.chmod(0o666)
    return path


def test_a_database_owned_by_another_user_is_refused_untouched(
    db: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    _needs_root("a file owned by another user is made with chown")
    path = _foreign_db(db, tmp_path)
    before = path.read_bytes()
    tether.configure(db=path)
    for use in (lambda: tether.runs(), lambda: quick.start(n=2), lambda: tether.get_run("x" * 12)):
        with pytest.raises(tether.StoreError) as info:
            use()
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        assert "owned by another user" in message and "nobody" in message
        assert "allow_foreign_db=True" in message and "TETHER_ALLOW_FOREIGN_DB=1" in message
    assert path.read_bytes() == before
    # the CLI says so in one line
    env = {**child_env, "TETHER_DB": str(path)}
    env.pop("TETHER_ALLOW_FOREIGN_DB", None)
    out = subprocess.run(
        [sys.executable, "-m", "tether.cli", "ls"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and out.stderr.startswith("tether: error:"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "owned by another user" in out.stderr
    assert path.read_bytes() == before
    # the override, in this process and through the environment
    tether.configure(allow_foreign_db=True)
    assert [r.params for r in tether.runs()] == [{"n": 1}]
    assert quick.start(n=3).result(timeout=30) == 3
    out = subprocess.run(
        [sys.executable, "-m", "tether.cli", "ls"],
        env={**env, "TETHER_ALLOW_FOREIGN_DB": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "succeeded" in out.stdout, out.stderr


def test_a_foreign_wal_beside_a_database_of_ours_is_refused(db: Path, tmp_path: Path) -> None:
    """Another user's ``-wal`` next to our file would be applied to it: refused too."""
    _needs_root("a file owned by another user is made with chown")
    path = tmp_path / "mine.db"
    tether.configure(db=path)
    assert quick.start(n=1).result(timeout=30) == 1
    tether.workspace.default().close()
    wal = Path(f"{path}-wal")
    wal.write_bytes(b"")
    os.chown(wal, _nobody().pw_uid, _nobody().pw_gid)
    tether.configure(db=path)
    with pytest.raises(tether.StoreError, match="owned by another user") as info:
        tether.runs()
    assert str(wal) in str(info.value)


def test_root_is_not_exempt_and_the_owner_is_checked_by_effective_uid(
    db: Path, tmp_path: Path, reachable: Path
) -> None:
    """A database nobody made is refused to root; nobody itself uses it."""
    _needs_root("needs another user to own a file")
    path = reachable / "theirs.db"

    def make() -> dict[str, Any]:
        tether.configure(db=path)
        return {"made": _attempt(lambda: quick.start(n=5).result(timeout=30))}

    assert _unprivileged(make) == {"made": {"ok": 5}}
    assert path.stat().st_uid == _nobody().pw_uid
    tether.configure(db=path)
    with pytest.raises(tether.StoreError, match="owned by another user"):
        tether.runs()


def test_allow_foreign_db_is_validated(db: Path, child_env: dict[str, str], tmp_path: Path) -> None:
    for bad in ("yes", 1, None, 0.0):
        with pytest.raises((TypeError, ValueError), match="allow_foreign_db"):
            tether.configure(allow_foreign_db=bad)  # type: ignore[arg-type]
    assert tether.configure(allow_foreign_db=True).allow_foreign_db is True
    assert tether.configure(allow_foreign_db=False).allow_foreign_db is False
    code = "import tether; tether.runs()"
    for value, ok in (("1", True), ("0", True), ("", True), ("maybe", False)):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**child_env, "TETHER_ALLOW_FOREIGN_DB": value},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        if ok:
            assert out.returncode == 0, out.stderr[-2000:]
        else:
            assert "StoreError" in out.stderr and "TETHER_ALLOW_FOREIGN_DB" in out.stderr, out.stderr


# -- URLs are not file paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://alice:s3cret@localhost/runs", "a file path is expected"),
        ("sqlite:///tmp/runs.db", "a file path is expected"),
        ("https://example.com/runs.db", "a file path is expected"),
    ],
)
def test_a_url_is_not_a_database_path(
    db: Path, tmp_path: Path, child_env: dict[str, str], url: str, says: str
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**child_env, "TETHER_DB": url}
    code = "import tether\ntry:\n    tether.runs()\nexcept tether.StoreError as exc:\n    print(exc)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    message = out.stdout.strip()
    assert "not a file path" in message and says in message and "TETHER_DB" in message, message
    assert "s3cret" not in message, "the error shows the password of the URL"
    assert os.listdir(cwd) == [], f"tether created {os.listdir(cwd)} in the cwd"
    # configure(db=...) refuses it at once; the settings are unchanged
    before = tether.configure()
    with pytest.raises(tether.StoreError, match="not a file path") as info:
        tether.configure(db=url)
    assert "s3cret" not in str(info.value)
    assert tether.configure() == before
    # the CLI: one line, nothing created
    out = subprocess.run(
        [sys.executable, "-m", "tether.cli", "ls"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.startswith("tether: error:"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "not a file path" in out.stderr
    assert os.listdir(cwd) == []


def test_file_names_with_a_colon_are_still_paths(db: Path, tmp_path: Path) -> None:
    path = tmp_path / "runs:2024.db"
    tether.configure(db=path)
    assert quick.start(n=7).result(timeout=30) == 7
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
