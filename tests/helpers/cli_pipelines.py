"""Importable pipelines for tests that drive tether from child processes (test_cli, test_store)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import tether


def _announce(marker: str, text: str) -> None:
    """Write ``text`` to ``marker`` atomically, so a poller never reads half a file."""
    tmp = Path(marker + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, marker)


@tether.pipeline(phases=["work"])
def hang(ctx, marker: str):
    """Runs until cancelled or killed; writes its run id to ``marker`` once it is running."""
    ctx.phase("work")
    _announce(marker, ctx.run_id)
    while True:
        ctx.advance()
        time.sleep(0.005)


# `python -c CHILD marker` starts `hang` in a child process and waits on it (until killed)
CHILD = "import sys, helpers.cli_pipelines as p; p.hang.start(marker=sys.argv[1]).wait()"
