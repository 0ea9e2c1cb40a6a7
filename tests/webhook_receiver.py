"""A real webhook receiver for tests: a Starlette app on uvicorn, in-process, on 127.0.0.1.

    replies = [500, Reply(429, retry_after="1"), 200]
    async with WebhookReceiver(secret=SECRET, replies=replies) as rx:
        ... send webhooks to rx.url ...
        await rx.wait_for_requests(3)
        payloads = rx.verified_requests()

It records every request (method, path, headers, body) whatever the path, answers each with the
next scripted :class:`Reply` (then ``default``), and verifies signatures with the
``standardwebhooks`` package, as a real receiver would. A reply may be delayed (to provoke client
timeouts); delayed handlers are released when the receiver closes, so it always shuts down
promptly. Nothing here listens anywhere but loopback.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["ReceivedRequest", "Reply", "WebhookReceiver"]

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one request."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    """Seconds to wait before answering (cut short when the receiver closes)."""
    retry_after: str | None = None
    location: str | None = None
    body: bytes = b""

    def all_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["retry-after"] = self.retry_after
        if self.location is not None:
            headers["location"] = self.location
        return headers


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test runner owns the process's signals, not this server


class WebhookReceiver:
    """An async context manager; ``url`` is valid while it is open."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        replies: Iterable[int | Reply] = (),
        default: int | Reply = 200,
        path: str = "/hook",
    ) -> None:
        self.secret = secret
        self.path = path
        self.requests: list[ReceivedRequest] = []
        self._replies: deque[Reply] = deque()
        self._default = _reply(default)
        self.script(*replies)
        self._port: int | None = None
        self._arrived: anyio.Event | None = None
        self._closing: anyio.Event | None = None
        self._running: contextlib.AbstractAsyncContextManager[None] | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"<WebhookReceiver port={self._port} requests={len(self.requests)}>"

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the receiver is not running")
        return f"http://127.0.0.1:{self._port}{self.path}"

    def script(self, *replies: int | Reply) -> None:
        """Answer the next requests with these replies, in order (after any already queued)."""
        self._replies.extend(_reply(r) for r in replies)

    def verify(self, request: ReceivedRequest) -> Any:
        """The request's parsed payload if its signature verifies; else WebhookVerificationError."""
        if self.secret is None:
            raise RuntimeError("this receiver was given no secret to verify with")
        return Webhook(self.secret).verify(request.body, request.headers)

    def verified_requests(self, *, strict: bool = True) -> list[Any]:
        """The payloads of the requests received so far, each verified.

        ``strict``: a request that does not verify fails the test (AssertionError naming it);
        otherwise such requests are left out.
        """
        payloads = []
        for index, request in enumerate(self.requests):
            try:
                payloads.append(self.verify(request))
            except WebhookVerificationError as exc:
                if strict:
                    raise AssertionError(f"request {index} does not verify: {exc}") from exc
        return payloads

    async def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Wait until ``count`` requests have arrived (TimeoutError after ``timeout`` s)."""
        with anyio.fail_after(timeout):
            while len(self.requests) < count:
                assert self._arrived is not None, "the receiver is not running"
                await self._arrived.wait()
        return self.requests[:count]

    async def __aenter__(self) -> WebhookReceiver:
        if self._running is not None:
            raise RuntimeError("the receiver is already running")
        running = self._serve()
        await running.__aenter__()
        self._running = running
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        running, self._running = self._running, None
        if running is not None:
            await running.__aexit__(exc_type, exc, tb)

    async def _handle(self, request: Request) -> Response:
        assert self._arrived is not None and self._closing is not None
        self.requests.append(
            ReceivedRequest(
                method=request.method,
                path=request.url.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await request.body(),
            )
        )
        self._arrived.set()
        self._arrived = anyio.Event()
        reply = self._replies.popleft() if self._replies else self._default
        if reply.delay_s > 0:
            with anyio.move_on_after(reply.delay_s):
                await self._closing.wait()
        return Response(reply.body, status_code=reply.status, headers=reply.all_headers())

    @contextlib.asynccontextmanager
    async def _serve(self) -> AsyncIterator[None]:
        self._arrived = anyio.Event()
        self._closing = anyio.Event()
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=_METHODS)])
        config = uvicorn.Config(
            app,
            lifespan="off",
            http="h11",
            ws="none",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = _Server(config)
        stopped = anyio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))

            async def serve() -> None:
                try:
                    await server.serve(sockets=[sock])
                finally:
                    stopped.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                with anyio.fail_after(10):
                    while not server.started:  # bounded by the deadline above
                        await anyio.sleep(0.01)
                self._port = sock.getsockname()[1]
                try:
                    yield
                finally:
                    self._closing.set()  # release delayed replies first
                    server.should_exit = True
                    with anyio.move_on_after(10, shield=True):
                        await stopped.wait()
                    tg.cancel_scope.cancel()  # only matters if it did not stop in time
        finally:
            sock.close()
            self._port = None


def _reply(value: int | Reply) -> Reply:
    return value if isinstance(value, Reply) else Reply(status=value)
