"""A real IPython kernel (jupyter_client) that runs cells and keeps every output it sends.

``started(cwd)`` starts one for a test module (``import tether`` finds the tree under test, the
tests' helpers import, no ``TETHER_DB`` leaks in). ``Kernel.cell(code)`` executes one cell and
returns its outputs (stream text by stream name, display data, the error if any). Every stream
message of the session is also kept in ``Kernel.streams`` as ``(parent msg_id, name, text)``,
whichever cell it was sent for, so a test can assert that some text never reached any cell's
output; ``Kernel.messages`` keeps every iopub message (display data, widget comms...).
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cell:
    msg_id: str
    stdout: str = ""
    stderr: str = ""
    displays: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class Kernel:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(cwd))
        self.streams: list[tuple[str, str, str]] = []
        self.messages: list[dict[str, Any]] = []

    def cell(self, code: str, timeout: float = 60) -> Cell:
        """Execute ``code`` as one cell; its outputs once the kernel is idle again. An error in
        the cell fails the test, with the kernel's traceback."""
        out = self.run(code, timeout)
        if out.error:
            raise AssertionError(f"the cell failed:\n{code}\n{out.error}")
        return out

    def run(self, code: str, timeout: float = 60) -> Cell:
        msg_id = self.kc.execute(code)
        out = Cell(msg_id)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the cell did not finish within {timeout} s:\n{code}")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            self.messages.append(msg)
            mine = msg["parent_header"].get("msg_id") == msg_id
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                self.streams.append(
                    (msg["parent_header"].get("msg_id", ""), content["name"], content["text"])
                )
                if mine:
                    setattr(out, content["name"], getattr(out, content["name"]) + content["text"])
            elif not mine:
                continue
            elif kind in ("display_data", "execute_result"):
                out.displays.append(content["data"])
            elif kind == "error":
                out.error = "\n".join(content["traceback"])
            elif kind == "status" and content["execution_state"] == "idle":
                return out

    def drain(self, seconds: float = 0.5) -> None:
        """Collect the stream messages sent after the last cell went idle, for ``streams``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.kc.get_iopub_msg(timeout=left)
            except queue.Empty:
                return
            self.messages.append(msg)
            if msg["msg_type"] == "stream":
                self.streams.append(
                    (msg["parent_header"].get("msg_id", ""), msg["content"]["name"], msg["content"]["text"])
                )

    def all_stream_text(self) -> str:
        return "".join(text for _, _, text in self.streams)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@contextlib.contextmanager
def started(cwd: Path) -> Iterator[Kernel]:
    """A kernel in ``cwd`` with this process's environment, the tests folder on its path (for
    ``helpers``) and no ``TETHER_DB``; shut down when the block ends."""
    tests = Path(__file__).parent.parent
    env = dict(os.environ)
    env.pop("TETHER_DB", None)
    env["PYTHONPATH"] = os.pathsep.join([str(tests), env.get("PYTHONPATH", "")])
    k = Kernel(env, cwd)
    try:
        yield k
    finally:
        k.close()
