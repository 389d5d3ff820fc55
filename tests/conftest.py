"""Shared fixtures: every test gets its own SQLite file under tmp_path and a clean runtime."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.workspace import Workspace, default

TESTS = Path(__file__).parent  # on sys.path through pytest's ``pythonpath`` (pyproject.toml)

# A Ctrl-C raises KeyboardInterrupt in the tests' processes, as in a kernel. A shell that starts the
# test run in the background (a CI script run with `&`, nohup) leaves SIGINT ignored, and ignored
# signals stay ignored across exec: every child would ignore it too, and the interrupt tests would
# test nothing. A handled signal is reset to the default in a child, which then installs Python's.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def workspace(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workspace]:
    """The default workspace pointed at a fresh database file (pipelines defined at import stay
    registered in it); afterwards its runners are stopped, its stores closed, its settings back.

    Parametrized indirectly with "postgres" (helpers.postgres.BOTH_BACKENDS): a fresh database on
    the session's PostgreSQL cluster instead."""
    ws = default()
    saved = ws.settings
    if getattr(request, "param", "sqlite") == "postgres":
        ws.configure(db=request.getfixturevalue("pg_url"))
    else:
        ws.configure(db=tmp_path / "runs.db")
    yield ws
    ws.close()
    ws.settings = saved


@pytest.fixture
def db(workspace: Workspace, tmp_path: Path) -> Path:
    """The fresh database file of ``workspace`` (on PostgreSQL: its URL, which helpers.util.raw
    and the CLI's --db take as well)."""
    configured = workspace.settings.db or ""
    if configured.startswith("postgresql://"):
        return configured  # type: ignore[return-value]
    return tmp_path / "runs.db"


@pytest.fixture
def child_env(db: Path) -> dict[str, str]:
    """Environment for child processes: same database, tests/ importable."""
    env = dict(os.environ)
    env["TETHER_DB"] = str(db)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster for the session (tests/helpers/postgres.py). Skips without
    PostgreSQL's binaries or psycopg, except under CI=true, where it fails."""
    from helpers import postgres

    why = postgres.missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL tests cannot run under CI=true: {why}")
        pytest.skip(why)
    cluster = postgres.start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any) -> Iterator[str]:
    """The URL of a fresh database of its own on the session's cluster."""
    url: str = pg_cluster.new_database()
    yield url
    pg_cluster.drop_database(url)
