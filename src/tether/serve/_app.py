"""The Starlette app of ``tether serve``: pages, the JSON API, the event stream, the actions."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import workspace as _workspace
from ..errors import PipelineNotFound, RunNotFound, TetherError
from ..run import Run
from ..store import Store
from .hub import Hub, dumps

__all__ = ["CSP", "make_app"]

STATIC = Path(__file__).parent / "static"
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (proxies, dead-peer detection)
RETRY_MS = 1000  # EventSource's reconnection delay
ACTIONS = ("cancel", "rerun", "resume")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the page's URL may hold the token
    (b"x-frame-options", b"DENY"),
]
LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _host_name(value: str) -> str:
    """The host of a Host header, without its port (``[::1]:8765`` -> ``::1``)."""
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class _Guard:
    """Security headers on every response; on a loopback server, a Host header that names
    another machine is refused (a DNS-rebinding page must not read the runs)."""

    def __init__(self, app: ASGI, hosts: frozenset[str] | None) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.hosts is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if _host_name(host).lower() not in self.hosts:
                await JSONResponse({"error": f"unknown Host {host!r}"}, 400)(scope, receive, send)
                return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(status: int, text: str) -> JSONResponse:
    return JSONResponse({"error": text}, status)


def _after(request: Request) -> int | None:
    """Where the watcher is: Last-Event-ID (EventSource's reconnect) or ``?after=``."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after")
    if raw is None or raw == "":
        return None
    try:
        return max(0, int(raw))
    except ValueError:
        return None  # not an id of ours: start afresh


def make_app(
    store: Store, token: str, *, remote: bool = False, host: str = "127.0.0.1", hub: Hub | None = None
) -> Starlette:
    """The app over ``store``; actions need ``token``. ``host``: the address it listens on (a
    Host header must name it or a loopback name); ``remote``: accept any Host header."""
    hub = hub if hub is not None else Hub(store)

    def authorized(request: Request) -> bool:
        given = request.query_params.get("token") or ""
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        return bool(given) and secrets.compare_digest(given.encode(), token.encode())

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def run_page(request: Request) -> Response:
        return FileResponse(STATIC / "run.html")

    async def api_runs(request: Request) -> Response:
        q = request.query_params
        try:
            limit = min(1000, max(1, int(q.get("limit", "100"))))
        except ValueError:
            return _error(400, f"limit must be a whole number, got {q.get('limit')!r}")
        rows = await hub.runs(limit, q.get("status") or None, q.get("pipeline") or None)
        return JSONResponse({"runs": rows})

    async def api_run(request: Request) -> Response:
        feed = hub.feed(request.path_params["run_id"])
        try:
            msg = await feed.poll(_after(request))
        except RunNotFound as exc:
            return _error(404, str(exc))
        except TetherError as exc:
            return _error(500, str(exc))
        return Response(dumps(msg), media_type="application/json")

    async def api_events(request: Request) -> Response:
        feed = hub.feed(request.path_params["run_id"])
        after = _after(request)
        try:
            await feed.ready()
        except RunNotFound as exc:
            return _error(404, str(exc))
        except TetherError as exc:
            return _error(500, str(exc))
        if feed.ended and after is not None and after >= feed.seq:
            return Response(status_code=204)  # it has everything: EventSource stops reconnecting

        async def stream() -> AsyncIterator[str]:
            yield f"retry: {RETRY_MS}\n\n"
            async for item in feed.watch(after, keepalive=KEEPALIVE):
                if item is None:
                    yield ": keepalive\n\n"
                else:
                    seq, msg = item
                    yield f"id: {seq}\ndata: {feed.encode(msg)}\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def act(run_id: str, action: str) -> Run:
        run = _workspace.default().run(store, run_id)
        if action == "cancel":
            return run._cancel("tether serve")  # as the panel's button does, with its origin
        return run.rerun() if action == "rerun" else run.resume()

    async def api_action(request: Request) -> Response:
        run_id, action = request.path_params["run_id"], request.path_params["action"]
        if action not in ACTIONS:
            return _error(404, f"no action {action!r}; expected one of {', '.join(ACTIONS)}")
        if not authorized(request):
            return _error(
                403,
                "this action needs the token tether serve printed at startup: open the URL it "
                "printed (…/?token=…) or send Authorization: Bearer <token>",
            )
        try:
            run = await hub.call(act, run_id, action)
        except RunNotFound as exc:
            return _error(404, str(exc))
        except PipelineNotFound as exc:
            return _error(
                409,
                f"PipelineNotFound: {exc} (tether serve executes no pipeline: Re-run or Resume it "
                "where its pipeline is defined, or start it with detach=True so that a tether "
                "worker executes its new attempts)",
            )
        except TetherError as exc:
            return _error(409, f"{type(exc).__name__}: {exc}")
        hub.forget(run_id)
        return JSONResponse({"ok": True, "run": {"id": run.id, "attempt": run.attempt}})

    async def api_stats(request: Request) -> Response:
        return JSONResponse(hub.stats())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        hub.close()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/runs/{run_id}", run_page),
            Route("/api/runs", api_runs),
            Route("/api/stats", api_stats),
            Route("/api/runs/{run_id}", api_run),
            Route("/api/runs/{run_id}/events", api_events),
            Route("/api/runs/{run_id}/{action}", api_action, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC)),
        ],
        lifespan=lifespan,
    )
    app.state.hub = hub
    hosts = None if remote else LOCAL_NAMES | {host.strip("[]").lower()}
    app.add_middleware(_Guard, hosts=hosts)
    return app
