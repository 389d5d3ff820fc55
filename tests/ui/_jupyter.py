"""Drive JupyterLab 4 / Notebook 7 in headless Chromium (after shared/recipes/browser-e2e.md).

JupyterServer: `jupyter lab|notebook` on a free port, isolated config dirs, stopped by SIGTERM.
Front: one notebook page driven through `window.jupyterapp` (needs --expose-app-in-browser).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import nbformat

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_notebook(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JupyterServer:
    """`jupyter lab` or `jupyter notebook` in the background, isolated from ~/.jupyter."""

    def __init__(self, app: str, root: Path, log: Path, env: dict[str, str] | None = None):
        self.app, self.root, self.log = app, root, log
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> JupyterServer:
        state = Path(tempfile.mkdtemp(prefix="jp-state-", dir=self.root.parent))
        env = dict(
            os.environ,
            **self.extra_env,
            JUPYTER_CONFIG_DIR=str(state / "config"),
            JUPYTERLAB_SETTINGS_DIR=str(state / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"),
            JUPYTER_RUNTIME_DIR=str(state / "runtime"),
        )
        env.pop("TETHER_DB", None)
        notif = state / "settings" / "@jupyterlab" / "apputils-extension"
        notif.mkdir(parents=True)
        (notif / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        exe = Path(sys.executable).parent / "jupyter"
        cmd = [
            str(exe),
            self.app,
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            "--allow-root",
            f"--ServerApp.root_dir={self.root}",
            "--expose-app-in-browser",
        ]
        self.logf = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} exited early; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{self.app} not ready after {timeout}s; see {self.log}")

    def page_url(self, nb: str) -> str:
        path = f"lab/tree/{nb}" if self.app == "lab" else f"notebooks/{nb}"
        return f"{self.url}/{path}?token={self.token}"

    def api(self, method: str, path: str) -> Any:
        req = urllib.request.Request(
            f"{self.url}/api/{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        for sess in self.api("GET", "sessions"):
            try:
                self.api("DELETE", f"sessions/{sess['id']}")
            except OSError:
                pass

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: clean shutdown, kernels included
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own session/group only
                self.proc.wait(5)
        self.logf.close()


class Front:
    """Drive one notebook page through window.jupyterapp, the same way in Lab 4 and Notebook 7."""

    PANEL = """(path) => {
        const app = window.jupyterapp;
        for (const w of app.shell.widgets('main'))
            if (w.context && w.context.path === path) return w;
        return null; }"""

    def __init__(self, page: Any, nb: str):
        self.page, self.nb = page, nb

    def js(self, body: str, arg: Any = None) -> Any:
        return self.page.evaluate(
            f"""async ([path, arg]) => {{
                const panel = ({self.PANEL})(path);
                if (!panel) throw new Error('notebook panel not found');
                return await (async (panel, arg) => {{ {body} }})(panel, arg);
            }}""",
            [self.nb, arg],
        )

    def wait_ready(self, timeout: float = 90_000) -> None:
        self.page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=timeout)
        self.page.wait_for_function(
            f"""(path) => {{ const p = ({self.PANEL})(path);
                return p && p.context.isReady && p.sessionContext.session?.kernel
                       && p.sessionContext.session.kernel.connectionStatus === 'connected'
                       && p.sessionContext.session.kernel.status === 'idle'; }}""",
            arg=self.nb,
            timeout=timeout,
        )

    def run_all(self) -> Any:
        return self.js("""panel.content.activate();
            return await window.jupyterapp.commands.execute('notebook:run-all-cells');""")

    def run_cell(self, index: int) -> Any:
        return self.js(
            """panel.content.activate(); panel.content.activeCellIndex = arg;
            return await window.jupyterapp.commands.execute('notebook:run-cell');""",
            index,
        )

    def save(self) -> None:
        self.js("""panel.content.activate();
            await window.jupyterapp.commands.execute('docmanager:save');
            return null;""")

    def kernel_id(self) -> str:
        return str(self.js("return panel.sessionContext.session.kernel.id;"))

    def restart_kernel(self, timeout: float = 60_000) -> float:
        """The user's way: command -> 'Restart Kernel?' dialog -> Restart -> idle again.

        Returns the page's clock (performance.now(), ms) when Restart was clicked."""
        self.js("""window.__e2e_restarted = false;
            const ctx = panel.sessionContext;
            const onStatus = (_, s) => { if (s === 'restarting') {
                window.__e2e_restarted = true; ctx.statusChanged.disconnect(onStatus); } };
            ctx.statusChanged.connect(onStatus);
            panel.content.activate();
            window.jupyterapp.commands.execute('notebook:restart-kernel');
            return null;""")
        accept = self.page.locator(".jp-Dialog .jp-mod-accept")
        accept.wait_for(timeout=timeout)
        clicked = float(self.page.evaluate("() => performance.now()"))
        accept.click(timeout=timeout)
        self.page.wait_for_function(
            f"""(path) => {{ const k = ({self.PANEL})(path)?.sessionContext.session?.kernel;
                return window.__e2e_restarted && k && k.status === 'idle'
                       && k.connectionStatus === 'connected'; }}""",
            arg=self.nb,
            timeout=timeout,
        )
        return clicked
