"""moto's application served by cheroot: connections kept alive, requests on a pool of threads.

moto's own ``ThreadedMotoServer`` runs werkzeug's development server, which answers every
request with ``Connection: close``, starts a thread per connection and, after each answer,
waits up to 10 ms for the client to hang up. Every AWS call of every service therefore opened
a TCP connection: in a profile of the pipeline benchmark, connecting was 11% of persist's CPU.
cheroot (CherryPy's HTTP/1.1 server) keeps a connection open between calls and hands each
request to a pool of threads. Measured here with aiobotocore (four concurrent callers of
SendMessageBatch, ReceiveMessage and DeleteMessageBatch on one client), CPU per call: the
client 2.1 -> 1.6 ms, the server 3.3 -> 2.9 ms.

werkzeug's server gives moto three things cheroot does not. An exception that escapes moto (an
action it does not implement) is answered with werkzeug's HTML error page, as werkzeug's server
does (:func:`werkzeug_errors`): clients read that page, not cheroot's plain text, as "not
implemented" (``shared/sqs/dlq.py``). And :class:`MotoGateway` builds the environ as moto's
``MotoRequestHandler`` does for werkzeug:

- ``RAW_URI``, the path as it arrived: moto's S3 matches keys on the undecoded path, so a key
  with an encoded slash would otherwise be another key; and ``PATH_INFO`` decoded whole, where
  cheroot leaves ``%2F`` encoded;
- headers with an underscore in their name: cheroot folds ``X_Foo`` into the same environ
  entry as ``X-Foo``, where werkzeug drops it (so that one cannot spoof the other). Here they
  are dropped too, except S3 user metadata (``x-amz-meta-my_key``), which moto keeps under its
  original name.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import unquote_to_bytes, urlsplit

from cheroot import wsgi
from cheroot.workers.threadpool import ThreadPool

__all__ = ["POOL_THREADS", "MotoGateway", "MotoServer", "werkzeug_errors"]

_log = logging.getLogger("emulator.moto")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

POOL_THREADS: Final = 128
"""Requests served at once. An SQS long poll holds its thread for up to 20 s, and every
consumer of every service, benchmark and test stack keeps one in flight; a request that finds
no free thread waits for one."""

IDLE_S: Final = 75
"""How long an idle connection stays open: longer than the clients keep theirs (aiohttp 15 s),
so that the client, not the server, closes it, and never while a call is being sent on it."""

KEEP_ALIVE_CONNECTIONS: Final = 1024
"""Idle connections kept open at once (cheroot's default, 10, is fewer than one service's
pool); beyond it a connection is closed after its answer."""

LISTEN_BACKLOG: Final = 128
"""Connections waiting to be accepted (cheroot's default, 5, drops a burst of connects into
TCP's one-second retry)."""


class MotoGateway(wsgi.Gateway_10):
    """cheroot's WSGI 1.0 gateway with the environ that moto's werkzeug handler builds."""

    def get_environ(self) -> dict[str, Any]:  # type: ignore[override] # cheroot: -> None
        from moto.core.request import (
            PRESERVED_HEADER_NAMES_ENVIRON_KEY,
            environ_key_for_header,
            should_preserve_original_header_name,
        )

        env: dict[str, Any] = super().get_environ()  # type: ignore[no-untyped-call]
        uri: str = env["REQUEST_URI"]
        env["RAW_URI"] = uri
        # A request line's bytes arrive as latin-1 text (PEP 3333), and leave as it.
        path = urlsplit(uri).path if "://" in uri else uri.split("?", 1)[0]
        env["PATH_INFO"] = unquote_to_bytes(path.encode("latin-1")).decode("latin-1")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self.req.inheaders.items()
        ]
        dashed = {environ_key_for_header(name): value for name, value in headers if "_" not in name}
        preserved: dict[str, str] = {}
        for name, value in headers:
            if "_" not in name:
                continue
            key = environ_key_for_header(name)
            if key in dashed:  # cheroot may have written the underscored one over it
                env[key] = dashed[key]
            elif should_preserve_original_header_name(name):
                env[key] = value
                # cheroot title-cases names; S3 metadata names are lower case (as AWS keeps
                # them, and as botocore sends them).
                preserved.setdefault(key, name.lower())
            else:
                env.pop(key, None)
        env[PRESERVED_HEADER_NAMES_ENVIRON_KEY] = preserved
        return env


def werkzeug_errors(app: WsgiApp) -> WsgiApp:
    """``app``, whose exceptions become werkzeug's 500 page, logged as werkzeug's server does."""
    from werkzeug.exceptions import InternalServerError

    def answer(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return app(environ, start_response)
        except Exception:
            _log.exception("Error on request %s %s", environ["REQUEST_METHOD"], environ["RAW_URI"])
            return InternalServerError()(environ, start_response)

    return answer


class _Workers(ThreadPool):
    """cheroot's pool, stopped without waiting for requests in progress.

    cheroot's ``stop`` joins a worker that outlives the shutdown timeout without a limit, and
    a worker in an SQS long poll lives up to 20 s more: every stop of the emulator would wait
    for it. Instead each worker is told to end once its request is done (cheroot's ``shrink``
    below a minimum of zero); they are daemon threads, as werkzeug's are, so none holds the
    process open."""

    def stop(self, timeout: float | None = 5) -> None:
        self.min = 0
        self.shrink(sys.maxsize)


class MotoServer:
    """moto's WSGI application (or ``app``) on cheroot, in a daemon thread, on ``host``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int = POOL_THREADS,
        app: WsgiApp | None = None,
    ) -> None:
        if app is None:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                create_backend_app,
            )

            app = werkzeug_errors(DomainDispatcherApplication(create_backend_app))
        server = wsgi.Server(
            (host, port),
            app,
            server_name=host,  # SERVER_NAME, as werkzeug sets it
            timeout=IDLE_S,
            request_queue_size=LISTEN_BACKLOG,
        )
        server.gateway = MotoGateway
        server.requests = _Workers(server, min=threads, max=threads)
        server.keep_alive_conn_limit = KEEP_ALIVE_CONNECTIONS
        self._server = server
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; returns once the socket listens (raises if it cannot bind)."""
        listening = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            # Started from this daemon thread, cheroot's own threads (the pool's workers
            # among them) are daemon threads too.
            try:
                self._server.prepare()
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                listening.set()
            self._server.serve()

        self._thread = threading.Thread(target=run, name="moto-server", daemon=True)
        self._thread.start()
        listening.wait()
        if failure:
            raise failure[0]

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.bind_addr[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
