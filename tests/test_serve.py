"""`tether serve`: the JSON API, the event stream (Last-Event-ID resume), the token, the host
checks, and one shared reader per run. A real uvicorn server in a subprocess, runs owned by
child processes, real SQLite files."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from helpers import web
from helpers.util import raw, wait_until

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


@pytest.fixture
def serve(db: Path, child_env: dict[str, str]):
    servers: list[web.Serve] = []

    def _start(*args: str, port: int = 0) -> web.Serve:
        srv = web.Serve(db, child_env, port=port, args=args).start()
        servers.append(srv)
        return srv

    tether.runs()  # the database exists before the server opens it
    yield _start
    for srv in servers:
        srv.stop()


@pytest.fixture
def kids():
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


def _child(kids: list, env: dict[str, str], tmp_path: Path, pipeline: str, **params: object) -> str:
    proc, run_id = web.start_child(env, tmp_path, pipeline, **params)
    kids.append(proc)
    return run_id


def _status(db: Path, run_id: str) -> str:
    return raw(db, "SELECT status FROM runs WHERE id = ?", run_id)[0][0]


def test_import_tether_never_imports_the_web_stack() -> None:
    code = (
        "import sys, tether, tether.cli, tether.serve; "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_extra_names_the_pip_install(db: Path) -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None; from tether.cli import main; "
        f"sys.exit(main(['serve', '--db', {str(db)!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1
    assert 'pip install "tether[serve]"' in out.stderr and "uvicorn" in out.stderr


def test_api_lists_runs_and_gives_one_runs_state(db: Path, serve) -> None:
    from helpers import panel_pipelines as pp

    run = pp.four_phase.start(n=4, delay=0.0, tag="api")
    run.wait(30)
    srv = serve()
    rows = httpx.get(f"{srv.base}/api/runs").json()["runs"]
    assert [r["id"] for r in rows] == [run.id]
    assert rows[0]["status"] == "succeeded" and rows[0]["pipeline"] == run.pipeline
    resp = httpx.get(f"{srv.base}/api/runs/{run.id}")
    assert resp.headers["content-type"].startswith("application/json")
    msg = resp.json()
    state = msg["state"]
    assert msg["since"] is None and msg["seq"] == state["seq"] > 0
    assert state["status"] == "succeeded" and state["terminal"] is True
    assert [p["name"] for p in state["phases"]] == pp.PHASES
    assert state["log"][-1] == "applying: halfway (2/4)"
    assert json.loads(state["result"]) == {"steps": 16, "tag": "api"}
    assert [a["id"] for a in state["attempts"]] == [run.id]
    after = httpx.get(f"{srv.base}/api/runs/{run.id}", params={"after": 0}).json()
    assert [e["seq"] for e in after["events"]] == list(range(1, msg["seq"] + 1))
    missing = httpx.get(f"{srv.base}/api/runs/nosuchrun")
    assert missing.status_code == 404 and "nosuchrun" in missing.json()["error"]


def test_a_runs_state_lists_its_children_and_attempts(db: Path, serve) -> None:
    run = web.family.start(n=2)
    assert run.result(60) == 3
    retry = run.rerun()
    retry.wait(60)
    srv = serve()
    state = httpx.get(f"{srv.base}/api/runs/{run.id}").json()["state"]
    kids = state["children"]
    assert [k["status"] for k in kids] == ["succeeded", "succeeded"]
    assert all(k["parent"] == run.id and k["pipeline"] == web.chatty.name for k in kids)
    assert [(a["id"], a["attempt"]) for a in state["attempts"]] == [(run.id, 1), (retry.id, 2)]
    assert state["newer"] == {"id": retry.id, "attempt": 2, "status": "succeeded"}
    kid = httpx.get(f"{srv.base}/api/runs/{kids[0]['id']}").json()["state"]
    assert kid["parent"] == run.id
    # the new attempt attached to the same children (same keys): listed there too
    again = httpx.get(f"{srv.base}/api/runs/{retry.id}").json()["state"]
    assert [k["id"] for k in again["children"]] == [k["id"] for k in kids] and again["newer"] is None


def test_a_damaged_row_is_named_not_fatal(db: Path, serve) -> None:
    import sqlite3

    from helpers import panel_pipelines as pp

    run = pp.four_phase.start(n=1, delay=0.0, tag="damaged")
    run.wait(30)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE runs SET params = '{not json', result = 'nor this' WHERE id = ?", (run.id,))
    conn.close()
    srv = serve()
    rows = httpx.get(f"{srv.base}/api/runs").json()["runs"]
    assert rows[0]["params"] == "(damaged)"
    state = httpx.get(f"{srv.base}/api/runs/{run.id}").json()["state"]
    assert any(d.startswith("params=") for d in state["damaged"])
    assert any(d.startswith("result=") for d in state["damaged"])


def test_pages_are_static_files_under_a_content_security_policy(db: Path, serve) -> None:
    srv = serve()
    for path in ("/", "/runs/abc", "/static/run.js", "/api/runs"):
        resp = httpx.get(srv.base + path)
        assert resp.status_code == 200, path
        csp = resp.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    page = httpx.get(srv.base + "/runs/abc").text
    assert '<script type="module" src="/static/run.js"></script>' in page
    assert "<script>" not in page  # no inline script for the policy to allow
    # a page of another name resolving to this server (DNS rebinding) reads nothing
    assert httpx.get(srv.base + "/api/runs", headers={"Host": "evil.example:80"}).status_code == 400


def test_ended_run_sends_its_final_state_once_and_the_stream_closes(db: Path, serve) -> None:
    from helpers import panel_pipelines as pp

    run = pp.four_phase.start(n=2, delay=0.0, tag="ended")
    run.wait(30)
    srv = serve()
    msgs, closed = web.read_sse(srv.base, run.id)
    assert closed
    assert len(msgs) == 1
    seq, msg = msgs[0]
    assert msg["state"]["status"] == "succeeded" and seq == msg["state"]["seq"]
    # a watcher that has everything is told so: 204, which stops EventSource's reconnects
    resp = httpx.get(f"{srv.base}/api/runs/{run.id}/events", headers={"Last-Event-ID": str(seq)})
    assert resp.status_code == 204


def test_stream_resumes_after_last_event_id_with_nothing_lost_or_repeated(
    db: Path, serve, kids, child_env, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    n = 60
    run_id = _child(kids, child_env, tmp_path, "chatty", n=n, delay=0.01, gate=str(gate))
    srv = serve()
    wait_until(lambda: _status(db, run_id) == "running", what="the run to start")
    gate.touch()
    # first connection: until some lines arrived, then dropped by the client
    first, closed = web.read_sse(
        srv.base, run_id, stop=lambda m: len(web.log_lines(m)) >= 10 and m[-1][1]["state"] is not None
    )
    assert not closed
    last_id = first[-1][0]
    second, closed = web.read_sse(srv.base, run_id, last_id=last_id)
    assert closed
    assert second[0][1]["since"] == last_id
    seqs = [e["seq"] for _, m in first + second for e in m["events"]]
    assert len(seqs) == len(set(seqs)), "an event was sent twice"
    lines = web.log_lines(second, web.log_lines(first))
    assert lines == [f"line {i}" for i in range(n)]
    final = second[-1][1]["state"]
    assert final["status"] == "succeeded" and second[-1][0] == final["seq"]
    # ids are event seqs: every event after the first fresh state, each once, in order
    assert seqs == list(range(seqs[0], final["seq"] + 1))


def test_watching_never_starts_or_changes_a_run(db: Path, serve, tmp_path: Path) -> None:
    from helpers import panel_pipelines as pp

    pending = pp.four_phase.start(n=2, delay=0.0, tag="detached", detach=True)  # no worker: stays pending
    srv = serve()
    before = raw(db, "SELECT id, status, attempt, owner_pid, last_seq FROM runs ORDER BY id")
    msgs, _ = web.read_sse(srv.base, pending.id, stop=lambda m: True)
    assert msgs[0][1]["state"]["status"] == "pending"
    assert "tether worker helpers.panel_pipelines" in msgs[0][1]["state"]["waiting"]
    for _ in range(3):
        assert httpx.get(f"{srv.base}/api/runs/{pending.id}").json()["state"]["status"] == "pending"
    httpx.get(f"{srv.base}/api/runs")
    assert raw(db, "SELECT id, status, attempt, owner_pid, last_seq FROM runs ORDER BY id") == before


def test_actions_need_the_token_in_either_form(db: Path, serve, kids, child_env, tmp_path: Path) -> None:
    run_id = _child(kids, child_env, tmp_path, "chatty", n=5, gate=str(tmp_path / "never"))
    srv = serve()
    wait_until(lambda: _status(db, run_id) == "running", what="the run to start")
    url = f"{srv.base}/api/runs/{run_id}/cancel"
    assert httpx.post(url).status_code == 403
    assert httpx.post(url, params={"token": "wrong"}).status_code == 403
    bad = httpx.post(url, headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 403 and "token" in bad.json()["error"]
    assert _status(db, run_id) == "running"
    ok = httpx.post(url, headers={"Authorization": f"Bearer {srv.token}"})
    assert ok.status_code == 200 and ok.json()["run"]["id"] == run_id
    wait_until(lambda: _status(db, run_id) == "cancelled", what="the owner to stop the run")
    state = httpx.get(f"{srv.base}/api/runs/{run_id}").json()["state"]
    assert state["cancel"]["origin"] == "by tether serve"
    # the query form; a re-run here is refused with the reason (this process runs no pipeline)
    again = httpx.post(f"{srv.base}/api/runs/{run_id}/rerun", params={"token": srv.token})
    assert again.status_code == 409 and "PipelineNotFound" in again.json()["error"]
    assert httpx.post(f"{srv.base}/api/runs/{run_id}/rerun").status_code == 403


def test_rerun_of_a_detached_run_makes_a_new_attempt_for_a_worker(db: Path, serve) -> None:
    from helpers import panel_pipelines as pp

    run = pp.four_phase.start(n=2, delay=0.0, tag="det", detach=True)
    run.cancel()
    srv = serve()
    resp = httpx.post(f"{srv.base}/api/runs/{run.id}/rerun", params={"token": srv.token})
    assert resp.status_code == 200
    new = resp.json()["run"]
    assert new["attempt"] == 2 and new["id"] != run.id
    assert raw(db, "SELECT status, target FROM runs WHERE id = ?", new["id"]) == [("pending", "worker")]


def test_non_loopback_host_needs_allow_remote(db: Path, child_env: dict[str, str]) -> None:
    tether.runs()
    cmd = [sys.executable, "-m", "tether.cli", "serve", "--db", str(db), "--host", "0.0.0.0", "--port", "0"]
    out = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "--allow-remote" in out.stderr
    srv = web.Serve(db, child_env, args=["--host", "0.0.0.0", "--allow-remote"]).start()
    try:
        port = srv.port
        assert httpx.get(f"http://127.0.0.1:{port}/api/runs").status_code == 200
    finally:
        srv.stop()
    assert "warning" in srv.stderr and "0.0.0.0" in srv.stderr


def test_a_typo_in_db_is_an_error_not_a_new_database(tmp_path: Path, child_env: dict[str, str]) -> None:
    missing = tmp_path / "nope.db"
    cmd = [sys.executable, "-m", "tether.cli", "serve", "--db", str(missing), "--port", "0"]
    out = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "does not exist" in out.stderr
    assert not missing.exists()


def test_one_reader_per_run_whatever_the_number_of_watchers(
    db: Path, kids, child_env, tmp_path: Path
) -> None:
    import tether.workspace
    from tether.serve.hub import Hub

    run_id = _child(kids, child_env, tmp_path, "chatty", n=100_000, delay=0.002)
    wait_until(lambda: _status(db, run_id) == "running", what="the run to start")

    async def watch(watchers: int, seconds: float) -> tuple[int, int, int]:
        hub = Hub(tether.workspace.default().store(db), interval=0.05)
        got = [0] * watchers

        async def one(i: int) -> None:
            async for item in hub.feed(run_id).watch(None):
                if item is not None:
                    got[i] += len(item[1]["events"])

        tasks = [asyncio.create_task(one(i)) for i in range(watchers)]
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        reads, feeds = hub.reads, len(hub.feeds)
        hub.close()
        return reads, feeds, min(got)

    one_reads, _, _ = asyncio.run(watch(1, 1.5))
    many_reads, feeds, least = asyncio.run(watch(30, 1.5))
    assert feeds == 1
    assert least > 0, "every watcher got events"
    assert many_reads <= 2 * one_reads, (one_reads, many_reads)
    tether.get_run(run_id).cancel()


def test_hub_catches_a_late_watcher_up_from_the_store(db: Path) -> None:
    """A watcher further behind than the ring reaches reads the missing events itself, once."""
    import tether.workspace
    from helpers import panel_pipelines as pp
    from tether.serve import hub as hub_mod

    run = pp.four_phase.start(n=2, delay=0.0, tag="late")
    run.wait(30)
    last = raw(db, "SELECT last_seq FROM runs WHERE id = ?", run.id)[0][0]

    async def go() -> list[int]:
        hub = hub_mod.Hub(tether.workspace.default().store(db))
        seqs: list[int] = []
        async for item in hub.feed(run.id).watch(0):
            assert item is not None
            seqs += [e["seq"] for e in item[1]["events"]]
        hub.close()
        return seqs

    assert asyncio.run(go()) == list(range(1, last + 1))


def test_ctrl_c_stops_the_server_with_streams_open_and_leaves_the_run_alone(
    db: Path, serve, kids, child_env, tmp_path: Path
) -> None:
    import signal
    import threading

    run_id = _child(kids, child_env, tmp_path, "chatty", n=5, gate=str(tmp_path / "never"))
    srv = serve()
    wait_until(lambda: _status(db, run_id) == "running", what="the run to start")
    opened = threading.Event()

    def watch() -> None:
        try:
            web.read_sse(srv.base, run_id, stop=lambda m: opened.set() and False)
        except httpx.HTTPError:
            pass  # the server went away mid-stream: what this test does

    threading.Thread(target=watch, daemon=True).start()
    assert opened.wait(30)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(15) == 0
    assert _status(db, run_id) == "running"
