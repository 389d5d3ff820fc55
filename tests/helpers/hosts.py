"""Other hosts on this machine: processes in their own UTS and pid namespaces.

A "host" is ``unshare --uts --pid --mount --fork --mount-proc --kill-child``: its own host name (so
tether's owner identity names another host), its own pids from 1 (so its owners' pids collide with
live processes here: pid 1 there is init here) and its own /proc. It shares the filesystem and the
network, so it reaches the same SQLite file or PostgreSQL server. Killing the ``unshare`` process
(SIGKILL) kills everything on the host at once: the host died.

Needs root and util-linux's ``unshare``: tests skip without them, except under ``CI=true``, where
they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from .util import unavailable

UNSHARE = ["unshare", "--uts", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child"]


def need_hosts() -> None:
    """Skip (fail under CI=true) where other hosts cannot be made here."""
    why = None
    if os.geteuid() != 0:
        why = "new UTS and pid namespaces need root"
    elif shutil.which("unshare") is None:
        why = "unshare (util-linux) is not installed"
    else:
        out = subprocess.run([*UNSHARE, "hostname", "probe"], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            why = f"{' '.join(UNSHARE)} fails here: {out.stderr.strip()}"
    if why:
        unavailable(why, f"CI must run the other-host tests: {why}")


def host_process(
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    *,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """``argv`` run as pid 1 of a new host called ``name`` (returns the ``unshare`` process)."""
    script = 'hostname "$0" && exec "$@"'
    return subprocess.Popen(
        [*UNSHARE, "sh", "-c", script, name, *argv],
        env=env,
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


def kill_host(proc: subprocess.Popen[str]) -> None:
    """The host dies: SIGKILL to ``unshare`` takes its pid 1, and with it every process there."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


@contextmanager
def hosts(
    names: Sequence[str], argv: Sequence[str], env: dict[str, str], **popen: Any
) -> Iterator[list[subprocess.Popen[str]]]:
    """One process per host name running ``argv``; all killed on exit."""
    need_hosts()
    procs: list[subprocess.Popen[str]] = []
    try:
        for name in names:
            procs.append(host_process(name, argv, env, **popen))
        yield procs
    finally:
        for proc in procs:
            kill_host(proc)
