"""A small read-only HTTP server for the explorer page, on 127.0.0.1 unless told otherwise.

``GET /`` answers the page, rebuilt from the MLflow store when the sweep changed (a new finished or failed
trial, the parent run's status); ``GET /state`` answers the token the page compares with its own to offer
a reload. Nothing else: other paths are 404, other methods 405, and a request whose ``Host`` header
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


def sweep_state(tracking_uri: str, experiment: str, run_id: str | None = None, ablation: str | None = None) -> str:
    """A token that changes when the sweep's page would: the parent run's status and its trials' statuses."""
    from fairray.tracking import find_sweep_run, trial_runs

    parent = find_sweep_run(tracking_uri, experiment, run_id, ablation)
    runs = sorted((r.info.run_id, r.info.status) for r in trial_runs(tracking_uri, parent))
    text = repr((parent.info.run_id, parent.info.status, runs))
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
            self.send_header("Content-Security-Policy", "default-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                                        "connect-src 'self'; frame-ancestors 'none'")
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
            route = self.routes.get(self.path.split("?", 1)[0])
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
