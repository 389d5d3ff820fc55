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

import functools
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from .util import unavailable

UNSHARE = ["unshare", "--uts", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child"]


@functools.cache
def unshare_fails(flags: tuple[str, ...], probe: tuple[str, ...] = ("true",)) -> str | None:
    """Why ``unshare <flags> <probe>`` cannot run on this machine (None: it can). The one probe of
    the tests and harnesses that make namespaces; asked once per process for each set of flags."""
    command = " ".join(["unshare", *flags])
    if os.geteuid() != 0:
        return f"{command} needs root (this is uid {os.geteuid()})"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    out = subprocess.run(["unshare", *flags, *probe], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return f"{command} fails here: {out.stderr.strip()[-300:]}"
    return None


def need_unshare(flags: Sequence[str], tests: str, probe: Sequence[str] = ("true",)) -> None:
    """Skip where ``unshare <flags>`` cannot run here; under CI=true fail instead: CI must run ``tests``."""
    why = unshare_fails(tuple(flags), tuple(probe))
    if why:
        unavailable(why, f"CI must run {tests}: {why}")


def need_hosts() -> None:
    """Skip (fail under CI=true) where other hosts cannot be made here: their host name is set too."""
    need_unshare(UNSHARE[1:], "the other-host tests", probe=("hostname", "probe"))


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
