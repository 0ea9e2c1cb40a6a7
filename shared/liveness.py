"""Whether a worker's receive loop is alive, served beside its metrics for a liveness probe.

A worker process can serve its metrics port while its SQS receive loop hangs (a stuck call, a
deadlock): a TCP probe would keep such a pod forever. So each consumer records progress in
:data:`LIVENESS`, a process-wide register like Prometheus's: after every receive (messages or
not, success or error) and after every message it finishes. ``GET /healthz`` on the metrics
port (:func:`serve_metrics_and_health`) answers 200 while every registered loop progressed
within ``stale_after_s``, else 503 naming the stale loops. A loop registers when it starts and
leaves when it stops, so start-up (a model loading) and drain are never "dead".

The HTTP server is the standard library's WSGI server in a thread, as prometheus_client's own
``start_http_server`` is; it is written out here only to add the one ``/healthz`` route.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

__all__ = [
    "DEFAULT_STALE_AFTER_S",
    "LIVENESS",
    "Liveness",
    "health_app",
    "serve_metrics_and_health",
]

DEFAULT_STALE_AFTER_S = 300.0
"""Longer than any model call or SQS call should take, even on a CPU."""


class Liveness:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()  # read by the probe's thread

    def beat(self, loop: str) -> None:
        """``loop`` made progress now (and is registered, if it was not)."""
        with self._lock:
            self._last[loop] = self._clock()

    def forget(self, loop: str) -> None:
        """``loop`` stopped on purpose: no longer watched."""
        with self._lock:
            self._last.pop(loop, None)

    def stale(self, after_s: float) -> dict[str, float]:
        """Registered loops without progress for more than ``after_s``: loop -> seconds."""
        now = self._clock()
        with self._lock:
            return {
                loop: round(now - last, 1)
                for loop, last in self._last.items()
                if now - last > after_s
            }


LIVENESS = Liveness()

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def health_app(liveness: Liveness, stale_after_s: float, metrics: WsgiApp | None = None) -> WsgiApp:
    """``/healthz`` from ``liveness``; every other path to ``metrics`` (Prometheus)."""
    metrics_app: WsgiApp = metrics or make_wsgi_app()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics_app(environ, start_response)
        stale = liveness.stale(stale_after_s)
        body = json.dumps({"status": "stale" if stale else "ok", "stale_s": stale}).encode()
        status = "503 Service Unavailable" if stale else "200 OK"
        start_response(status, [("Content-Type", "application/json")])
        return [body]

    return app


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds: not worth a log line each."""


def serve_metrics_and_health(
    port: int, addr: str, *, stale_after_s: float = DEFAULT_STALE_AFTER_S
) -> WSGIServer:
    """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` from a daemon thread."""
    server = make_server(
        addr,
        port,
        health_app(LIVENESS, stale_after_s),
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
