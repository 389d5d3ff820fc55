"""Files as the channel between a test and the pipelines it runs in any process.

Side effects are counted in files: every execution appends one line, so a test can tell how often a
step, an item or a run body really ran, in whichever process it ran. Gates are files a body waits
for. Every wait has a deadline (``SAFETY_S``), so a child the test forgot to stop ends by itself.
"""

from __future__ import annotations

import os
import time

SAFETY_S = 60.0  # no helper waits longer than this


def append(path: str, text: str) -> None:
    """One line per call; O_APPEND writes of a short line are atomic across processes."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text + "\n")


def lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of ``path`` (none if it does not exist yet)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        return []


def wait_file(path: str) -> None:
    """Wait (making no progress calls, so a cancel is not seen here) until ``path`` exists."""
    deadline = time.monotonic() + SAFETY_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
