"""Pipelines that the "other hosts" of tests/test_hosts.py execute (tether worker imports them)."""

from __future__ import annotations

import os
import socket
import time

import tether


@tether.pipeline
def where(ctx: tether.Context, i: int, log: str, pause: float = 0.05) -> dict[str, object]:
    """Say which host and pid executed run ``i``, and append the execution to ``log`` (one short
    O_APPEND write per execution: the writes of several processes never interleave)."""
    host = socket.gethostname()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{i} {host} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    time.sleep(pause)
    return {"i": i, "host": host, "pid": os.getpid()}
