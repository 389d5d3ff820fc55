"""SQLite on a network filesystem (issue 18, item 4): refused at open, with an explicit override.

- The mount table: lines of /proc/self/mountinfo parsed (optional fields, octal escapes such as
  ``\\040`` in a mount point), the mount holding a path found by its longest mount point.
- Real mounts, in a private mount namespace (``unshare --mount``, as root): a tmpfs at a path with
  a space, nested mounts; the refusal on it with ``tmpfs`` added to NETWORK_FS in the child (the
  one internal hook), and the override. And, where Debian's ``sshfs`` and ``sftp-server`` are
  installed, a real ``fuse.sshfs`` mount (sshfs talking to a local sftp-server instead of ssh): a
  type on the list, no hook; refused by the API and the CLI, nothing written there; the override
  by ``configure(allow_network_fs=True)`` and by ``TETHER_ALLOW_NETWORK_FS=1`` runs a pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers.hosts import need_unshare
from helpers.util import unavailable
from tether.store._safety import NETWORK_FS, _psutil_mounts, mount_of, parse_mountinfo

# A child in the namespace: what it sees of the mount, then what tether does with a database there.
CHILD = r"""
import json, os, sys
import tether
from tether.store import _safety

extra = os.environ.get("EXTRA_NETWORK_FS")
if extra:
    _safety.NETWORK_FS = _safety.NETWORK_FS | {extra}  # the tests' hook: a type they can mount


@tether.pipeline
def double(ctx: tether.Context, n: int) -> int:
    return 2 * n


db, mode = sys.argv[1], sys.argv[2]
out = {"mount": _safety.mount_of(db), "psutil": _safety.mount_of(db, _safety._psutil_mounts())}
with open("/proc/self/mountinfo", "rb") as f:
    out["raw"] = [line.decode() for line in f.read().splitlines() if b"\\040" in line]
tether.configure(db=db)
if mode == "refuse-then-allow":
    try:
        tether.runs()
        out["refused"] = None
    except tether.StoreError as exc:
        out["refused"] = str(exc)
    out["created"] = os.path.exists(os.path.dirname(db))
    tether.configure(allow_network_fs=True)
out["result"] = double.start(n=len(tether.runs()) + 1).result(timeout=60)
out["runs"] = len(tether.runs())
tether.workspace.default().close()
print(json.dumps(out))
"""


# a private mount namespace and its own pid namespace: when the shell ends the kernel kills what it
# started (a FUSE daemon) and the mounts go
NAMESPACES = ("--mount", "--propagation", "private", "--pid", "--fork")


def _needs_namespaces() -> None:
    """Root, and unshare able to make the namespaces (CI runs as root)."""
    need_unshare(NAMESPACES, "the real-mount tests")


def _in_namespace(setup: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``setup`` (sh, "$1".. are ``args``) in NAMESPACES."""
    return subprocess.run(
        ["unshare", *NAMESPACES, "sh", "-euc", setup, "sh", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _lines(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _assert_refusal(message: str, db: Path, fstype: str, mount_point: Path, cli: bool = False) -> None:
    assert message.startswith(f"tether database {str(db)!r} is on a network filesystem"), message
    assert f"({fstype}, mounted at {str(mount_point)!r})" in message and "\n" not in message
    assert "TETHER_DB=postgresql://" in message and "tether[postgres]" in message
    assert "TETHER_ALLOW_NETWORK_FS=1" in message
    if cli:  # the CLI's words: its flag, and no configure() a shell cannot call
        assert "--db PATH or TETHER_DB=" in message and "configure" not in message, message
    else:
        assert "tether.configure(db=...) or TETHER_DB=" in message
        assert "tether.configure(allow_network_fs=True) or TETHER_ALLOW_NETWORK_FS=1" in message


# -- the mount table ---------------------------------------------------------------------------------

MOUNTINFO = (
    b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n"
    b"25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k\n"
    # a JupyterHub pod's home on NFS, with optional fields before the separator
    b"1243 1187 0:58 /export/home/ada /home/jovyan rw,relatime shared:512 master:7 - nfs4 "
    b"10.0.0.5:/export/home/ada rw,vers=4.1,hard,proto=tcp\n"
    b"1250 1243 0:61 / /home/jovyan/scratch rw,relatime - ext4 /dev/sdb rw\n"
    # a space, a tab and a backslash in mount points, as the kernel escapes them
    b"63 27 0:39 / /mnt/my\\040share rw,relatime - cifs //srv/share rw\n"
    b"64 27 0:40 / /mnt/tab\\011and\\134slash rw - fuse.sshfs me@host:/x rw\n"
    # a mount stacked over another at the same point: the later one is what the path reaches
    b"70 27 0:41 / /data rw - ext4 /dev/sdc rw\n"
    b"71 70 0:42 / /data rw - nfs srv:/data rw\n"
    b"garbage without a separator\n"
)


def test_mountinfo_lines_are_parsed_with_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert ("/home/jovyan", "nfs4") in mounts and ("/dev/shm", "tmpfs") in mounts
    assert ("/mnt/my share", "cifs") in mounts
    assert ("/mnt/tab\tand\\slash", "fuse.sshfs") in mounts
    assert len(mounts) == 8  # the line without " - " is skipped


def test_the_longest_mount_point_holding_the_path_decides() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mount_of("/home/jovyan/work/.tether/runs.db", mounts) == ("/home/jovyan", "nfs4")
    assert mount_of("/home/jovyan", mounts) == ("/home/jovyan", "nfs4")
    assert mount_of("/home/jovyan/scratch/runs.db", mounts) == ("/home/jovyan/scratch", "ext4")
    assert mount_of("/home/jovyanx/runs.db", mounts) == ("/", "ext4")  # a prefix of the text only
    assert mount_of("/mnt/my share/runs.db", mounts) == ("/mnt/my share", "cifs")
    assert mount_of("/data/runs.db", mounts) == ("/data", "nfs")
    assert mount_of("/srv/runs.db", []) is None
    for name in ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "ceph", "lustre"):
        assert name in NETWORK_FS
    assert not {"ext4", "xfs", "btrfs", "tmpfs", "overlay", "apfs", "zfs"} & NETWORK_FS


def test_a_symlink_to_a_network_mount_is_followed(tmp_path: Path) -> None:
    """The mount is that of the resolved path: a link in a local folder to an NFS home."""
    (tmp_path / "home").symlink_to("/home/jovyan/work")
    mounts = parse_mountinfo(MOUNTINFO)
    assert mount_of(tmp_path / "home" / "runs.db", mounts) == ("/home/jovyan", "nfs4")


def test_local_databases_are_opened_as_before(db: Path) -> None:
    """This machine's tmp_path is on a local filesystem: opening is unchanged. psutil's table (what
    macOS and Windows use) names the same mount as /proc/self/mountinfo."""
    mount = mount_of(db)
    assert mount is not None and mount[1] not in NETWORK_FS
    assert mount_of(db, _psutil_mounts()) == mount
    tether.configure(db=db)
    assert tether.runs() == []


def test_allow_network_fs_is_validated(db: Path, child_env: dict[str, str]) -> None:
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match="allow_network_fs"):
            tether.configure(allow_network_fs=bad)  # type: ignore[arg-type]
    assert tether.configure(allow_network_fs=True).allow_network_fs is True
    code = "import tether; tether.runs()"
    for value, ok in (("0", True), ("maybe", False)):  # "1": the real mounts below
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**child_env, "TETHER_ALLOW_NETWORK_FS": value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (out.returncode == 0) is ok, out.stderr
        if not ok:
            assert "TETHER_ALLOW_NETWORK_FS='maybe' must be 1" in out.stderr


# -- real mounts -------------------------------------------------------------------------------------


def test_a_real_mount_at_an_escaped_path_is_detected_refused_and_allowed(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """A tmpfs at a path with a space, another inside it; tmpfs counted as a network type in
    the child (the hook), since no network filesystem mounts here without a server."""
    _needs_namespaces()
    outer = tmp_path / "home dir"
    inner = outer / "inner"
    outer.mkdir()
    (tmp_path / "child.py").write_text(CHILD)
    db = inner / ".tether" / "runs.db"
    setup = (
        'mount -t tmpfs tether-outer "$1"; mkdir "$2"; mount -t tmpfs tether-inner "$2"; '
        'python="$3"; child="$4"; db="$5"; '
        '"$python" "$child" "$db" refuse-then-allow; '
        'TETHER_ALLOW_NETWORK_FS=1 "$python" "$child" "$db" env'
    )
    env = {**child_env, "EXTRA_NETWORK_FS": "tmpfs"}
    args = [str(outer), str(inner), sys.executable, str(tmp_path / "child.py"), str(db)]
    first, second = _lines(_in_namespace(setup, args, env))
    assert first["mount"] == first["psutil"] == [str(inner), "tmpfs"]  # psutil: macOS's source
    assert any(f"{tmp_path}/home\\040dir/inner " in line for line in first["raw"]), first["raw"]
    _assert_refusal(first["refused"], db, "tmpfs", inner)
    assert first["created"] is False  # refused before its folder was made
    assert (first["result"], first["runs"]) == (2, 1)  # configure(allow_network_fs=True)
    assert (second["result"], second["runs"]) == (4, 2)  # TETHER_ALLOW_NETWORK_FS=1
    assert not inner.exists() or not any(inner.iterdir())  # the mounts went with the namespace


def _sshfs() -> tuple[str, str]:
    """sshfs and an sftp-server (Debian: sshfs, openssh-sftp-server), else skip: no server needed,
    sshfs talks SFTP to a local sftp-server through its ssh_command."""
    sshfs = shutil.which("sshfs")
    server = next(
        (p for p in ("/usr/lib/openssh/sftp-server", "/usr/lib/sftp-server") if os.path.exists(p)), ""
    )
    if not (sshfs and server and os.path.exists("/dev/fuse")):
        unavailable("needs sshfs, sftp-server and /dev/fuse (apt-get install sshfs openssh-sftp-server)")
    return sshfs, server


def test_sqlite_on_a_real_sshfs_mount_is_refused_with_an_override(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    _needs_namespaces()
    sshfs, server = _sshfs()
    export, mount_point = tmp_path / "export", tmp_path / "home dir"
    export.mkdir()
    mount_point.mkdir()
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text(f"#!/bin/sh\nexec {server}\n")
    fake_ssh.chmod(0o755)
    (tmp_path / "child.py").write_text(CHILD)
    db = mount_point / "work" / "runs.db"
    cli_err, cli_out = tmp_path / "cli.err", tmp_path / "cli.out"
    setup = (
        '"$1" -o ssh_command="$2" localhost:"$3" "$4"; '
        'python="$5"; child="$6"; export TETHER_DB="$7"; '
        '"$python" "$child" "$TETHER_DB" refuse-then-allow; '
        'TETHER_ALLOW_NETWORK_FS=1 "$python" "$child" "$TETHER_DB" env; '
        '"$python" -m tether.cli ls 2>"$8" && exit 9 || true; '
        'TETHER_ALLOW_NETWORK_FS=1 "$python" -m tether.cli ls >"$9"; '
        'umount "$4"'
    )
    args = [sshfs, str(fake_ssh), str(export), str(mount_point), sys.executable, str(tmp_path / "child.py")]
    out = _in_namespace(setup, [*args, str(db), str(cli_err), str(cli_out)], child_env)
    first, second = _lines(out)
    assert first["mount"] == first["psutil"] == [str(mount_point), "fuse.sshfs"]
    _assert_refusal(first["refused"], db, "fuse.sshfs", mount_point)
    assert first["created"] is False  # refused before its folder was made
    assert (first["result"], first["runs"]) == (2, 1)  # configure(allow_network_fs=True)
    assert (second["result"], second["runs"]) == (4, 2)  # TETHER_ALLOW_NETWORK_FS=1
    cli = cli_err.read_text()  # the CLI: one line, the same message
    assert cli.startswith("tether: error: ") and len(cli.strip().splitlines()) == 1, cli
    _assert_refusal(cli.strip().removeprefix("tether: error: "), db, "fuse.sshfs", mount_point, cli=True)
    assert cli_out.read_text().count("succeeded") == 2
    # written through sshfs: the database is in the exported folder, and whole
    assert (export / "work" / "runs.db").stat().st_size > 0
    tether.configure(db=export / "work" / "runs.db")
    assert sorted(r.result() for r in tether.runs()) == [2, 4]
