"""For the tests of ``tether serve``: a pipeline that logs numbered lines, a child process that
owns its run, the server in a subprocess, and a small Server-Sent Events reader.

Import as ``helpers.web`` (tests/ on sys.path) so the registered names agree everywhere.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tether

CHILD = ["-c", "import sys; from helpers.web import child; child(sys.argv[1])"]
SAFETY_S = 120.0
EVIL = '<img src=x onerror="window.__tether_xss=1"> </script><script>window.__tether_xss=2</script>'


def _wait_file(ctx: Any, path: str) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not os.path.exists(path) and time.monotonic() < deadline:
        ctx.advance(0)  # sees a cancel
        time.sleep(0.01)


@tether.pipeline(phases=["talking", "closing"])
def chatty(ctx, n: int = 40, delay: float = 0.02, gate: str = "", hold_at: int = -1, hold: str = "") -> dict:
    """Logs ``line 0`` .. ``line n-1``, ``delay`` s apart. ``gate``: a file to wait for before
    the first line; ``hold``: a file to wait for after line ``hold_at``."""
    ctx.phase("talking", total=n)
    if gate:
        _wait_file(ctx, gate)
    for i in range(n):
        ctx.log("line %d", i)
        ctx.advance()
        if i == hold_at and hold:
            _wait_file(ctx, hold)
        time.sleep(delay)
    ctx.phase("closing")
    return {"lines": n}


@tether.pipeline(phases=["loading", "exploding"])
def evil(ctx, tag: str = "") -> None:
    """Logs and fails with HTML-looking text: the page must show it as text."""
    ctx.phase("loading", total=1)
    ctx.log(EVIL)
    ctx.advance()
    ctx.phase("exploding")
    raise ValueError("bad input " + EVIL)


@tether.pipeline(phases=["children"])
def family(ctx, n: int = 2) -> int:
    """Starts ``n`` short chatty children and waits for them."""
    ctx.phase("children", total=n)
    total = 0
    for i in range(n):
        total += chatty.start(n=i + 1, delay=0.0).result()["lines"]
        ctx.advance()
    return total


PIPELINES = {"chatty": chatty, "evil": evil, "family": family}


def child(spec_json: str) -> None:
    """A process owning a run: starts ``spec["pipeline"]`` with ``spec["params"]`` (``detach``
    optional), prints {"id", "pid"}, then (unless ``spec["wait"]`` is False) waits for its end."""
    spec = json.loads(spec_json)
    run = PIPELINES[spec["pipeline"]].start(**spec["params"], detach=spec.get("detach", False))
    print(json.dumps({"id": run.id, "pid": os.getpid()}), flush=True)
    if spec.get("wait", True):
        run.wait(timeout=SAFETY_S)


def start_child(
    env: dict[str, str], cwd: Path, pipeline: str, **params: Any
) -> tuple[subprocess.Popen[str], str]:
    """A child owning a new run of ``pipeline``; returns it and the run id."""
    spec = {"pipeline": pipeline, "params": params}
    proc = subprocess.Popen(
        [sys.executable, *CHILD, json.dumps(spec)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise AssertionError(f"child failed: {proc.communicate(timeout=30)[1][-2000:]}")
    return proc, json.loads(line)["id"]


class Serve:
    """``tether serve`` in a subprocess. ``start()`` waits for the URL it prints."""

    def __init__(self, db: Path, env: dict[str, str], port: int = 0, args: Sequence[str] = ()) -> None:
        self.db, self.env, self.port, self.args = db, env, port, list(args)
        self.proc: subprocess.Popen[str] | None = None
        self.base = self.token = ""
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr = ""

    def start(self, timeout: float = 60.0) -> Serve:
        argv = ["-m", "tether.cli", "serve", "--db", str(self.db), "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out = self.proc.stdout
        assert out is not None
        threading.Thread(target=lambda: [self.lines.put(x) for x in out], daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError(f"tether serve printed no URL: {self.stderr[-2000:]}") from None
            if "http://" in line:
                url = line.split()[-1]
                self.base, _, self.token = url.partition("/?token=")
                self.port = int(self.base.rsplit(":", 1)[1])
                return self

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.stderr = proc.stderr.read() if proc.stderr else ""
        self.proc = None


Message = tuple[int, dict[str, Any]]


def read_sse(
    base: str,
    run_id: str,
    *,
    last_id: int | None = None,
    stop: Callable[[list[Message]], bool] | None = None,
    timeout: float = 60.0,
) -> tuple[list[Message], bool]:
    """Messages of ``/api/runs/<id>/events`` until ``stop(messages)`` is true (returns
    ``(messages, False)``) or the server closes the stream (``(messages, True)``)."""
    import httpx

    headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
    msgs: list[Message] = []
    with httpx.stream(
        "GET", f"{base}/api/runs/{run_id}/events", headers=headers, timeout=httpx.Timeout(timeout)
    ) as resp:
        assert resp.status_code == 200, resp.status_code
        assert resp.headers["content-type"].startswith("text/event-stream")
        ident, data = None, []
        for line in resp.iter_lines():
            if line == "":
                if data:
                    assert ident is not None, "every message carries an id"
                    msgs.append((int(ident), json.loads("\n".join(data))))
                    if stop is not None and stop(msgs):
                        return msgs, False
                ident, data = None, []
            elif line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
    return msgs, True


def log_lines(msgs: list[Message], start: list[str] | None = None) -> list[str]:
    """The log a page following ``msgs`` shows: the fresh state's tail, then log events."""
    lines = list(start or [])
    for _, msg in msgs:
        if msg["since"] is None:
            lines = list(msg["state"]["log"])
        lines.extend(e["text"] for e in msg["events"] if e["kind"] == "log")
    return lines
