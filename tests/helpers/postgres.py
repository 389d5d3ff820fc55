"""A throwaway PostgreSQL cluster for the tests: ``initdb`` into a temporary folder owned by an
unprivileged user, ``pg_ctl start`` on a free port with its unix socket in that folder, stopped and
removed at the end. Each test gets a fresh database of its own (``Cluster.new_database``).

The binaries are found through ``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin``. Without
them (or without psycopg) the tests that need a cluster skip; under CI=true they fail instead
(``.ci/run`` installs Debian's ``postgresql``)."""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# ``pytestmark = BOTH_BACKENDS`` (or a test's decorator): the tests run on a SQLite file and on a
# fresh PostgreSQL database (the ``workspace`` fixture of tests/conftest.py, parametrized)
BOTH_BACKENDS = pytest.mark.parametrize("workspace", ["sqlite", "postgres"], indirect=True)

SUPERUSER = "tether"  # the cluster's superuser (initdb -U), owner of every test database

# the server's settings for the tests: durability off (a throwaway cluster), room for the races
SETTINGS = {
    "listen_addresses": "",  # unix socket only
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


def bindir() -> Path | None:
    """The folder of initdb and pg_ctl, or None."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    # newest version first (Debian's pg_config may belong to the client package only)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _version(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -e '.[test]' (or tether[postgres])"
    if bindir() is None:
        return "PostgreSQL's initdb/pg_ctl are missing: apt-get install -y postgresql"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unprivileged() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root (postgres refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


@dataclass
class Cluster:
    """A running cluster: ``url(db)`` connects to database ``db`` over its unix socket."""

    root: Path
    port: int
    bin: Path
    user: tuple[int, int] | None
    options: dict[str, str] = field(default_factory=dict)  # server settings over SETTINGS
    _count: int = field(default=0)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        def demote() -> None:
            if self.user is not None:
                os.setgid(self.user[1])
                os.setuid(self.user[0])

        out = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=demote if self.user else None,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stdout}\n{out.stderr}")
        return out

    def start(self) -> None:
        self.socket_dir.mkdir()
        self.data.mkdir(mode=0o700)
        if self.user is not None:
            for path in (self.root, self.data, self.socket_dir):
                os.chown(path, *self.user)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        # pg_ctl hands -o to a shell
        settings = " ".join(f"-c {k}={shlex.quote(v)}" for k, v in {**SETTINGS, **self.options}.items())
        opts = f"-p {self.port} -k {shlex.quote(str(self.socket_dir))} {settings}"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a test's database (its connections are closed by force first)."""
        import psycopg

        name = url.split("@/", 1)[1].split("?", 1)[0]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_cluster(options: dict[str, str] | None = None) -> Cluster:
    """Start a throwaway cluster (the caller stops it), its server run with SETTINGS updated by
    ``options`` (``{"fsync": "on"}``: PostgreSQL's settings, passed as ``-c name=value``). Raises
    RuntimeError if it cannot."""
    folder = bindir()
    if folder is None:
        raise RuntimeError(missing() or "no PostgreSQL binaries")
    # a short path: a unix socket's path has a ~100-byte limit
    root = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    os.chmod(root, 0o755)
    cluster = Cluster(root, _free_port(), folder, _unprivileged(), dict(options or {}))
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def race(script: str, argvs: list[list[str]], timeout: float = 120) -> list[str]:
    """Run ``python -c script`` once per argv, in processes that say ``ready`` (set up, connected)
    and then wait for ``go`` on stdin, sent to all at once: what each printed after that."""
    return timed_race(script, argvs, timeout)[0]


def timed_race(
    script: str, argvs: list[list[str]], timeout: float = 120, env: Mapping[str, str] | None = None
) -> tuple[list[str], float]:
    """race(), and the seconds from the ``go`` to the end of the last process. ``env``: the
    processes' environment (default: this one with ``PYTHONPATH`` set to this ``sys.path``)."""
    if env is None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            assert p.returncode == 0, out
            outs.append(out)
        return outs, time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


# A worker of pipeline argv[3] claiming runs of database argv[1] as host and instance number
# argv[2] (released by race()), until none is left or, with argv[4], for that many seconds.
CLAIMER = """
import json, os, sys, time
from tether.model import Owner
from tether.store.postgres import PostgresStore
store = PostgresStore(sys.argv[1])
me = Owner("host-" + sys.argv[2], os.getpid(), 1.0, "worker-" + sys.argv[2])
store.list_runs(limit=1)
print("ready", flush=True)
sys.stdin.readline()
got = []
until = time.monotonic() + float(sys.argv[4]) if len(sys.argv) > 4 else None
while True:
    rec = store.claim_next(me, [sys.argv[3]], 60.0)
    if rec is not None:
        got.append(rec.id)
    elif until is None or time.monotonic() > until:
        break
print(json.dumps(got), flush=True)
store.close()
"""
