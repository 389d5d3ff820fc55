"""Who owns a run, and the proof that an owner is gone.

An owner is a process: host + pid + process start time + a random instance id, and on Linux where
that pid means something (``ns``: the boot id and the pid namespace). A run whose owner is gone is
an orphan. For an owner in this pid namespace of this boot of this host the proof is the process
table (pid dead, reused or a zombie: one read of /proc/<pid>/stat on Linux, psutil elsewhere or when
/proc cannot tell) and a live pid is proof of life. Another boot id under this host name proves the
owner gone (the machine restarted since). Anywhere else (another host, or another pid namespace:
a container sharing the database, ``unshare --pid``, where the same pid is another process) nothing
can be proven from here and an expired lease is the proof. A status alone is never proof.
"""

from __future__ import annotations

import os
import socket
import sys

from .model import Owner

_LINUX = sys.platform.startswith("linux")

__all__ = ["current", "gone_reason", "reset_after_fork"]

_current: Owner | None = None  # this process's identity: per process, reset in a forked child


_PROC_IS_OURS = True  # /proc shows this process's pid namespace (see _namespace)


def _make() -> Owner:
    global _PROC_IS_OURS
    pid = os.getpid()
    fast = _proc_stat("self")  # /proc/self is this process even under another namespace's /proc
    if fast is None:
        import psutil

        started = psutil.Process(pid).create_time()
    else:
        started = fast[0]
    ns, _PROC_IS_OURS = _namespace(pid)
    return Owner(host=socket.gethostname(), pid=pid, started=started, instance=os.urandom(8).hex(), ns=ns)


def _namespace(pid: int) -> tuple[str | None, bool]:
    """(``Owner.ns`` of this process, whether /proc shows this process's pid namespace).

    ``ns`` is "<boot id>/<st_dev>:<st_ino>" (the device and inode of /proc/self/ns/pid identify a
    pid namespace; the boot id changes at every boot), None where Linux cannot tell. A process
    in a new pid namespace that still sees its parent's /proc (``unshare --pid`` without
    ``--mount-proc``) cannot judge pids of its namespace: /proc/<pid> is another process there."""
    if not _LINUX:
        return None, True
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot = fh.read().strip()
        st = os.stat("/proc/self/ns/pid")
        ours = os.readlink("/proc/self") == str(pid)
    except (OSError, ValueError):
        return None, True
    return f"{boot}/{st.st_dev}:{st.st_ino}", ours


def current() -> Owner:
    """The owner identity of this process (created once per process, renewed after fork)."""
    global _current
    if _current is None or _current.pid != os.getpid():
        _current = _make()
    return _current


def reset_after_fork() -> None:
    global _current
    _current = None


_BOOT: float | None = None
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _boot_time() -> float:
    """Boot time as psutil reads it on Linux (``btime`` of /proc/stat)."""
    with open("/proc/stat", "rb") as fh:
        for line in fh:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def _proc_stat(pid: int | str) -> tuple[float, str] | None:
    """(start time, state letter) of ``pid`` from /proc, as psutil computes them on Linux.

    None where it cannot tell (not Linux, no such pid, hidden pids): psutil decides then."""
    global _BOOT
    if not _LINUX:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    try:
        fields = data[data.rindex(b")") + 2 :].split()  # the name may hold spaces and ')'
        if _BOOT is None:
            _BOOT = _boot_time()
        return _BOOT + int(fields[19]) / _TICKS, fields[0].decode()
    except (OSError, ValueError, IndexError):
        return None


def gone_reason(owner: Owner | None, lease_until: float | None, now: float) -> str | None:
    """Why ``owner`` is proven gone, or None when it may still be alive."""
    if owner is None:
        return None
    me = current()
    if owner.instance == me.instance:
        return None
    if owner.host != me.host:
        return _lease_expired(owner, lease_until, now, "")
    if owner.ns and me.ns:
        boot, _, pidns = owner.ns.partition("/")
        my_boot, _, my_pidns = me.ns.partition("/")
        if boot != my_boot:
            return (
                f"its owner process (pid {owner.pid}) is gone: host {owner.host} has restarted "
                "since (another boot id)"
            )
        if pidns != my_pidns:  # its pid is another process here, or none: only its lease can tell
            return _lease_expired(owner, lease_until, now, " in another pid namespace")
    elif owner.ns:  # recorded where a namespace is known, judged where none is
        return _lease_expired(owner, lease_until, now, "")
    if not _PROC_IS_OURS:  # /proc here shows another pid namespace than ours
        return _lease_expired(owner, lease_until, now, "")
    # the same pid namespace, or a run recorded without one (judged by host and pid alone)
    fast = _proc_stat(owner.pid)  # Linux: one read of /proc/<pid>/stat (5x cheaper)
    if fast is not None:
        started, exited = fast[0], fast[1] in ("Z", "X")
    else:
        import psutil  # only where /proc cannot tell (it costs ~20 ms to import)

        try:
            proc = psutil.Process(owner.pid)
            started, exited = proc.create_time(), proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return f"its owner process (pid {owner.pid}) is gone"
        except psutil.Error:  # AccessDenied and the like: cannot prove anything
            return None
    if abs(started - owner.started) > 0.05:
        return f"its owner process (pid {owner.pid}) is gone; the pid now belongs to another process"
    if exited:
        return f"its owner process (pid {owner.pid}) has exited"
    # alive on this host: that is proof enough, whatever the lease says (a process stopped
    # by SIGSTOP or a body holding the GIL must not lose its run to a neighbour kernel)
    return None


def _lease_expired(owner: Owner, lease_until: float | None, now: float, where: str) -> str | None:
    if lease_until is not None and now > lease_until:
        return f"its owner on host {owner.host} (pid {owner.pid}{where}) stopped renewing its lease"
    return None
