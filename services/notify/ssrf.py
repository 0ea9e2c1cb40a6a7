"""An httpx transport that reaches only public addresses, and only the ones it checked.

    sender = WebhookSender(secret, timeout_s, transport=GuardedTransport(allow_loopback=False))

For each request :class:`GuardedTransport`

1. checks the URL statically (:func:`shared.netguard.check_url`: scheme, credentials, port,
   literal IPs in any spelling);
2. resolves the host once and checks every answer (:func:`shared.netguard.resolve_and_check`);
3. sends the request to a checked address, never to the name: the URL's host becomes the IP,
   the ``Host`` header keeps the name, and for https the TLS server name (SNI) and certificate
   check keep the name too (httpcore's ``sni_hostname`` request extension). Nothing below this
   transport resolves the name again, so a resolver that answers a public address to the check
   and 127.0.0.1 to the connection (DNS rebinding) gets nowhere.

A refusal raises ``httpx.ConnectError`` from :class:`~shared.netguard.CallbackRefused`;
:class:`~services.notify.delivery.WebhookSender` turns it into an outcome with ``give_up``.
A failed lookup raises ``httpx.ConnectError`` from the resolver's ``OSError`` (worth a retry).
When the name has several (all checked) addresses and a connection to one fails, the next is
tried, as a client's own connection logic would.

Pooled connections are keyed by the address they reached. For plain http that is harmless (the
``Host`` header routes the request), but a TLS connection is authenticated for one name: reused
for another name with the same address, it would carry that name's request to a server that
never proved it is that name. So https connections are not kept alive: one handshake per
request (webhooks are sparse, and WebhookSender, which never reads an answer's body, cannot
reuse a connection anyway).
"""

from __future__ import annotations

import ssl
from typing import Final

import httpx

from shared.netguard import (
    CallbackRefused,
    IPAddress,
    Resolver,
    check_url,
    parse_host,
    resolve_and_check,
    system_resolver,
)

__all__ = ["GuardedTransport"]

_MAX_ADDRESSES_TRIED: Final = 4


class GuardedTransport(httpx.AsyncBaseTransport):
    """See the module docstring. Closing it closes the transports it made; safe twice.

    ``allow_loopback``: development and tests only; loopback addresses (127.0.0.0/8, ::1) pass
    too, and nothing else does (see :mod:`shared.netguard`).
    ``resolver``: how names are resolved (tests give a scripted one). ``transport``: what makes
    the connections (default: httpx's, without proxies, TLS connections not kept alive);
    it receives requests already addressed to a checked IP. ``verify``: the TLS trust for the
    default transports (a test CA). ``max_connections``: per default transport.
    """

    def __init__(
        self,
        *,
        allow_loopback: bool = False,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        max_connections: int = 100,
    ) -> None:
        self._allow_loopback = allow_loopback
        self._resolver = resolver
        self._closed = False
        if transport is not None:
            self._plain = self._tls = transport
        else:
            # One TLS context (loading the CA bundle takes a while) for both.
            context = (
                verify
                if isinstance(verify, ssl.SSLContext)
                else httpx.create_ssl_context(verify=verify, trust_env=False)
            )
            self._plain = httpx.AsyncHTTPTransport(
                verify=context,
                trust_env=False,
                limits=httpx.Limits(max_connections=max_connections),
            )
            self._tls = httpx.AsyncHTTPTransport(
                verify=context,
                trust_env=False,
                limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=0),
            )

    def __repr__(self) -> str:
        return f"<GuardedTransport allow_loopback={self._allow_loopback}>"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        problem = check_url(str(url), allow_loopback=self._allow_loopback)
        if problem is not None:
            refusal = CallbackRefused(problem)
            raise _refused(refusal, request) from refusal
        host = url.raw_host.decode("ascii")
        https = url.scheme == "https"
        try:
            addresses = await resolve_and_check(
                host,
                url.port or (443 if https else 80),
                allow_loopback=self._allow_loopback,
                resolver=self._resolver,
            )
        except CallbackRefused as exc:
            raise _refused(exc, request) from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc}", request=request) from exc

        extensions = dict(request.extensions)
        if https and parse_host(host) is None:
            # The certificate is checked against the name, not the IP we connect to.
            extensions["sni_hostname"] = host
        inner = self._tls if https else self._plain
        failure: httpx.ConnectError | None = None
        for address in addresses[:_MAX_ADDRESSES_TRIED]:
            try:
                return await inner.handle_async_request(_pinned(request, address, extensions))
            except httpx.ConnectError as exc:  # nothing was sent: the next address may do
                failure = exc
        assert failure is not None  # resolve_and_check never returns an empty list
        raise failure

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._plain.aclose()
        if self._tls is not self._plain:
            await self._tls.aclose()


def _pinned(
    request: httpx.Request, address: IPAddress, extensions: dict[str, object]
) -> httpx.Request:
    """``request`` addressed to ``address``; its headers (``Host`` included) and body unchanged.
    A new request, so the caller's keeps its URL (httpx attaches the caller's to the response).
    """
    return httpx.Request(
        request.method,
        request.url.copy_with(host=str(address)),
        headers=request.headers,
        stream=request.stream,
        extensions=extensions,
    )


def _refused(refusal: CallbackRefused, request: httpx.Request) -> httpx.ConnectError:
    return httpx.ConnectError(f"refused: {refusal}", request=request)
