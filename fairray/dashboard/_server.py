"""A small read-only HTTP server for the explorer page, on 127.0.0.1 unless told otherwise.

``GET /`` answers the page, rebuilt from the MLflow store when the sweep changed (a new finished or failed
trial, the parent run's status); ``GET /state`` answers the token the page compares with its own to offer
a reload; ``/favicon.ico`` is an empty 204. Nothing else: other paths are 404, other methods 405, and a request whose ``Host`` header
names neither loopback nor the bound address is refused with 403 (no DNS-rebinding reads of the store).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fairray.dashboard._data import Cache, collect
from fairray.dashboard._page import build_page
from fairray.errors import FairrayError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
CSP = ("default-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'")
"""The page's own inline scripts and styles, its own origin, nothing else; ``'unsafe-eval'`` because plotly.js
compiles its WebGL drawing code (regl, the parallel coordinates) with ``new Function``."""


def sweep_state(tracking_uri: str, experiment: str, run_id: str | None = None, ablation: str | None = None) -> str:
    """A token that changes when the sweep's page would: the parent run's status, its trials that are not
    FINISHED (running, failed, killed) with their statuses, the trial that started last and the one that ended
    last. Three small queries, not a read of every trial's metrics (that took 30 s for 500 trials on SQLite),
    so the page's poll stays cheap; a deleted finished trial is noticed with the next other change."""
    from fairray.tracking import client, find_sweep_run
    from fairray.tracking._mlflow import PARENT_TAG

    parent = find_sweep_run(tracking_uri, experiment, run_id, ablation)
    c = client(tracking_uri)
    ids = [parent.info.experiment_id]
    children = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    open_runs = sorted((r.info.run_id, r.info.status) for r in
                       c.search_runs(ids, filter_string=f"{children} and attributes.status != 'FINISHED'",
                                     max_results=10000))
    last = [tuple((r.info.run_id, r.info.status, r.info.end_time) for r in
                  c.search_runs(ids, filter_string=children, order_by=[f"attributes.{key} DESC"], max_results=1))
            for key in ("start_time", "end_time")]
    text = repr((parent.info.run_id, parent.info.status, open_runs, last))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class DashboardApp:
    """Builds the page on demand and keeps it while the state token is unchanged."""

    def __init__(self, tracking_uri: str, experiment: str, *, run_id: str | None = None, ablation: str | None = None,
                 compare: tuple[str, ...] | None = None, n_boot: int = 200, mlflow_ui: str | None = None) -> None:
        self.target = (tracking_uri, experiment, run_id, ablation)
        self.options = {"compare": compare, "n_boot": n_boot, "mlflow_ui": mlflow_ui}
        self.cache = Cache()
        self._lock = threading.Lock()
        self._page: tuple[str, str] | None = None  # (state, html)

    def state(self) -> str:
        return sweep_state(*self.target)

    def page(self) -> str:
        with self._lock:  # one rebuild at a time; a second request waits and gets the fresh page
            state = self.state()
            if self._page is None or self._page[0] != state:
                uri, experiment, run_id, ablation = self.target
                data = collect(uri, experiment, run_id=run_id, ablation=ablation, cache=self.cache, **self.options)
                self._page = (state, build_page(data, served=True, state=state))
            return self._page[1]


def _host_name(header: str) -> str:
    """``127.0.0.1:8050`` -> ``127.0.0.1``; ``[::1]:8050`` -> ``[::1]``."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0]


def _handler(app: DashboardApp, allowed_hosts: set[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fairray-dashboard"
        routes: dict[str, Callable[[], tuple[str, str]]] = {
            "/": lambda: (app.page(), "text/html; charset=utf-8"),
            "/state": lambda: (app.state(), "text/plain; charset=utf-8"),
        }

        def _send(self, status: HTTPStatus, body: str, content_type: str = "text/plain; charset=utf-8",
                  head: bool = False, extra: dict[str, str] | None = None) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", CSP)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _get(self, head: bool) -> None:
            host = _host_name(self.headers.get("Host") or "")
            if allowed_hosts and host not in allowed_hosts:
                self._send(HTTPStatus.FORBIDDEN, f"host {host!r} not allowed\n", head=head)
                return
            path = self.path.split("?", 1)[0]
            if path == "/favicon.ico":  # the browser asks for it on its own: no icon, and no 404 in its console
                self._send(HTTPStatus.NO_CONTENT, "", head=True)
                return
            route = self.routes.get(path)
            if route is None:
                self._send(HTTPStatus.NOT_FOUND, "not found: the dashboard serves / and /state\n", head=head)
                return
            try:
                body, content_type = route()
            except FairrayError as exc:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"fairray: {exc}".splitlines()[0] + "\n", head=head)
                return
            self._send(HTTPStatus.OK, body, content_type, head=head)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._get(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._get(head=True)

        def _refuse(self) -> None:
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET and HEAD only\n", extra={"Allow": "GET, HEAD"})

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (signature of the base class)
            pass

    return Handler


def make_server(app: DashboardApp, host: str = "127.0.0.1", port: int = 8050) -> ThreadingHTTPServer:
    """A bound server (port 0 picks a free one: read it from ``server.server_address``); not yet serving.

    On a loopback address only loopback ``Host`` headers are answered; a host given explicitly (``--host``)
    answers any.
    """
    allowed = {*LOOPBACK_HOSTS} if host in LOOPBACK_HOSTS else set()
    server = ThreadingHTTPServer((host, port), _handler(app, allowed))
    server.daemon_threads = True
    return server
