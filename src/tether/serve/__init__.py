"""``tether serve``: a small local web app over a tether database (Starlette + uvicorn).

Needs the ``serve`` extra (``pip install "tether[serve]"``); ``import tether`` never imports it.
Pages: ``/`` (the run list) and ``/runs/<id>`` (one run, live over Server-Sent Events, polling
``/api/runs/<id>`` when the stream fails). Watching never starts or changes a run; Cancel,
Re-run and Resume need the token printed at startup. See docs/web.md.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import sys
from typing import TextIO

from ..errors import TetherError

__all__ = ["is_loopback", "require", "run_server"]

INSTALL = 'pip install "tether[serve]"'


def require() -> None:
    """ModuleNotFoundError naming the extra when starlette or uvicorn is missing."""
    missing = []
    try:  # plain imports: only the worker imports modules by name (tests/reliability/test_security.py)
        import starlette  # noqa: F401
    except ImportError:
        missing.append("starlette")
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        missing.append("uvicorn")
    if missing:
        raise ModuleNotFoundError(f"tether serve needs {' and '.join(missing)}: {INSTALL}")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise TetherError(
            f"tether serve cannot listen on {host}:{port}: {exc.strerror or exc}; "
            "choose another --port (or --port 0 for any free one)"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run_server(
    db: str | None,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    allow_remote: bool = False,
    token: str | None = None,
    out: TextIO | None = None,
) -> None:
    """Serve ``db`` until interrupted; prints the URL (with its token) first."""
    out = out or sys.stdout
    if not is_loopback(host):
        if not allow_remote:
            raise TetherError(
                f"--host {host} would let other machines read every run in the database; "
                "pass --allow-remote too if that is what you want (actions still need the token)"
            )
        print(
            f"tether serve: warning: listening on {host}: anyone who can reach this port can read "
            "every run (Cancel / Re-run / Resume still need the token)",
            file=sys.stderr,
            flush=True,
        )
    require()
    import uvicorn

    from .. import workspace
    from ._app import make_app

    store = workspace.default().existing_store(db)
    token = token or secrets.token_urlsafe(24)
    app = make_app(store, token, remote=not is_loopback(host), host=host)
    sock = _bind(host, port)
    name = sock.getsockname()
    shown = f"[{name[0]}]" if ":" in name[0] else name[0]
    print(f"tether serve: {store.path}", file=out)
    print(f"tether serve: http://{shown}:{name[1]}/?token={token}", file=out, flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
            lifespan="on",
        )
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C again once it has shut down
        pass
    finally:
        sock.close()
