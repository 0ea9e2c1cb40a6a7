"""The SSRF guard end to end: a real WebhookSender over GuardedTransport and the real httpx and
httpcore stack, a real receiver on 127.0.0.1, and fake resolvers (the only fake, at the
resolver seam).

How "no connection was made" is proven: the ``network`` fixture wraps the socket layer itself,
``socket.socket.connect``, ``socket.socket.connect_ex`` and ``socket.getaddrinfo`` (asyncio's
``create_connection``, which anyio and so httpcore use, ends in ``sock.connect`` and
``socket.getaddrinfo``). Every call is recorded; a connection to anything but 127.0.0.1, or a
lookup of anything but an IP literal, is blocked before the system call (ConnectionRefusedError
or gaierror), so no test can send a packet elsewhere even if the guard were broken. Tests that
reach the receiver show the recorder does see real connections (a positive control).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import h11
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.tls import TLSStream
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import services.notify.ssrf
from services.notify.delivery import DeliveryOutcome, WebhookSender
from services.notify.ssrf import GuardedTransport
from tests.webhook_receiver import Reply, WebhookReceiver

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
DATA = {"job_id": "6f1c1d9e-8f0a-4f43-9d51-0d7c2b7d6a11", "status": "succeeded"}
WEBHOOK_ID = "msg_ssrf"
PUBLIC = "93.184.216.34"
METADATA = "http://169.254.169.254/latest/meta-data"


# -- the socket layer, recorded and fenced --------------------------------------------------


@dataclass
class Network:
    connects: list[Any] = field(default_factory=list)
    """Every address a socket was asked to connect to (blocked ones included)."""
    lookups: list[str] = field(default_factory=list)
    """Every host getaddrinfo was asked about (blocked ones included)."""

    def names_looked_up(self) -> list[str]:
        return [host for host in self.lookups if not _is_literal(host)]


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> Network:
    seen = Network()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def allowed(address: Any) -> bool:
        return isinstance(address, tuple) and address[0] == "127.0.0.1"

    def connect(self: socket.socket, address: Any) -> None:
        seen.connects.append(address)
        if not allowed(address):
            raise ConnectionRefusedError(f"the test blocks connections to {address!r}")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        seen.connects.append(address)
        if not allowed(address):
            raise ConnectionRefusedError(f"the test blocks connections to {address!r}")
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        seen.lookups.append(name)
        if not _is_literal(name) and name != "localhost":
            raise socket.gaierror(socket.EAI_NONAME, f"the test blocks lookups of {name}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return seen


class ScriptedResolver:
    """Answers the n-th lookup with the n-th answer (the last one repeats); counts lookups."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if not self.answers:
            raise AssertionError(f"the resolver was asked about {host}")
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


class FailingResolver:
    async def __call__(self, host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


def guarded_sender(
    resolver: Any, *, allow_loopback: bool, verify: ssl.SSLContext | bool = True, **kw: Any
) -> WebhookSender:
    transport = GuardedTransport(
        allow_loopback=allow_loopback, resolver=resolver, verify=verify, **kw
    )
    return WebhookSender(SECRET, 5, transport=transport)


async def deliver(sender: WebhookSender, url: str) -> DeliveryOutcome:
    return await sender.deliver(url, webhook_id=WEBHOOK_ID, event_type="job.succeeded", data=DATA)


def port_of(url: str) -> int:
    port = httpx.URL(url).port
    assert port is not None
    return port


# -- (1) refused before any connection ------------------------------------------------------

LITERALS = [
    ("http://2130706433/hook", "2130706433 is 127.0.0.1: loopback 127.0.0.0/8"),
    ("http://0x7f000001/hook", "0x7f000001 is 127.0.0.1: loopback 127.0.0.0/8"),
    ("http://127.1/hook", "127.1 is 127.0.0.1: loopback 127.0.0.0/8"),
    ("http://127.0.1/hook", "127.0.1 is 127.0.0.1: loopback 127.0.0.0/8"),
    ("http://0x7f.1/hook", "0x7f.1 is 127.0.0.1: loopback 127.0.0.0/8"),
    ("http://0177.0.0.1./hook", "0177.0.0.1. is 127.0.0.1: loopback 127.0.0.0/8"),
    ("http://127.0.0.1:8080/hook", "127.0.0.1 is loopback 127.0.0.0/8"),
    ("http://[::1]:8080/hook", "::1 is loopback ::1/128"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped ::ffff:0:0/96 embedding 127.0.0.1: loopback"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped ::ffff:0:0/96 embedding 127.0.0.1: loopback"),
    ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 64:ff9b::/96 embedding 169.254.169.254: link-local"),
    ("http://[2002:a9fe:a9fe::]/", "6to4 2002::/16 embedding 169.254.169.254: link-local"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "Teredo 2001::/32 client embedding"),
    ("http://[2001:0:a00:1::f7f7:f7f7]/", "Teredo 2001::/32 server embedding 10.0.0.1"),
    ("http://[fe80::1%25eth0]/", "link-local fe80::/10"),
    ("http://[::]/", "unspecified ::/128"),
    ("http://[::127.0.0.1]/", "IPv4-compatible ::/96"),
    ("http://[fd00::1]/", "unique local fc00::/7"),
    ("http://[ff02::1]/", "multicast ff00::/8"),
    ("http://0.0.0.0/", "this network 0.0.0.0/8"),
    (f"{METADATA}/", "169.254.169.254 is link-local 169.254.0.0/16 (cloud metadata)"),
    ("https://169.254.169.254/", "link-local 169.254.0.0/16 (cloud metadata)"),
    ("http://10.0.0.1/", "private 10.0.0.0/8"),
    ("http://100.64.0.1/", "shared address space (carrier-grade NAT) 100.64.0.0/10"),
    ("http://172.16.0.1/", "private 172.16.0.0/12"),
    ("http://192.0.0.1/", "IETF protocol assignments 192.0.0.0/24"),
    ("http://192.168.0.1/", "private 192.168.0.0/16"),
    ("http://198.18.0.1/", "benchmarking 198.18.0.0/15"),
    ("http://224.0.0.1/", "multicast 224.0.0.0/4"),
    ("http://240.0.0.1/", "reserved 240.0.0.0/4"),
    ("http://255.255.255.255/", "reserved 240.0.0.0/4"),
    ("http://localhost/hook", "localhost is a loopback name (RFC 6761)"),
    ("https://user:s3cr3t@hooks.example.com/", "the URL carries credentials"),
]


@pytest.mark.parametrize(("url", "reason"), LITERALS)
async def test_refused_before_any_connection(network: Network, url: str, reason: str) -> None:
    resolver = ScriptedResolver()  # any lookup fails the test
    async with guarded_sender(resolver, allow_loopback=False) as sender:
        outcome = await deliver(sender, url)
    assert (outcome.succeeded, outcome.status_code, outcome.give_up) == (False, None, True)
    assert outcome.error is not None
    assert outcome.error.startswith("refused: ")
    assert reason in outcome.error
    assert "s3cr3t" not in outcome.error
    assert resolver.calls == []
    assert network.connects == []
    assert network.lookups == []


@pytest.mark.parametrize(
    ("url", "error"),
    [
        # httpx (and so the sender) rejects a dotted quad with a leading zero outright.
        ("http://0177.0.0.1/hook", "invalid URL: Invalid IPv4 address"),
        ("file:///etc/passwd", "invalid URL: the scheme must be http or https"),
        ("ftp://hooks.example.com/", "invalid URL: the scheme must be http or https"),
        ("gopher://hooks.example.com:70/_x", "invalid URL: the scheme must be http or https"),
        ("javascript:alert(1)", "invalid URL: the scheme must be http or https"),
    ],
)
@pytest.mark.parametrize("allow_loopback", [False, True])
async def test_not_even_an_http_url(
    network: Network, url: str, error: str, allow_loopback: bool
) -> None:
    resolver = ScriptedResolver()
    async with guarded_sender(resolver, allow_loopback=allow_loopback) as sender:
        outcome = await deliver(sender, url)
    assert outcome.give_up
    assert outcome.error is not None
    assert outcome.error.startswith(error)
    assert (resolver.calls, network.connects, network.lookups) == ([], [], [])


RESOLVED = [
    ("127.0.0.1", "loopback 127.0.0.0/8"),
    ("169.254.169.254", "link-local 169.254.0.0/16 (cloud metadata)"),
    ("10.1.2.3", "private 10.0.0.0/8"),
    ("100.64.0.1", "100.64.0.0/10"),
    ("172.31.0.1", "private 172.16.0.0/12"),
    ("192.0.0.8", "192.0.0.0/24"),
    ("192.168.10.1", "private 192.168.0.0/16"),
    ("198.18.0.1", "benchmarking 198.18.0.0/15"),
    ("224.0.0.251", "multicast 224.0.0.0/4"),
    ("255.255.255.255", "reserved 240.0.0.0/4"),
    ("0.0.0.0", "this network 0.0.0.0/8"),
    ("::1", "loopback ::1/128"),
    ("::", "unspecified ::/128"),
    ("fd00::1", "unique local fc00::/7"),
    ("fe80::1%2", "link-local fe80::/10"),
    ("ff02::1", "multicast ff00::/8"),
    ("::ffff:169.254.169.254", "IPv4-mapped ::ffff:0:0/96 embedding 169.254.169.254"),
    ("64:ff9b::7f00:1", "NAT64 64:ff9b::/96 embedding 127.0.0.1"),
    ("2002:a9fe:a9fe::", "6to4 2002::/16 embedding 169.254.169.254"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo 2001::/32 client embedding 127.0.0.1"),
]


@pytest.mark.parametrize(("address", "reason"), RESOLVED)
@pytest.mark.parametrize("public_first", [False, True])
async def test_a_name_with_any_private_address_is_refused(
    network: Network, address: str, reason: str, public_first: bool
) -> None:
    answer = [PUBLIC, address] if public_first else [address]
    resolver = ScriptedResolver(answer)
    async with guarded_sender(resolver, allow_loopback=False) as sender:
        outcome = await deliver(sender, "https://hook.example/hook")
    expected = f"refused: hook.example resolves to {ipaddress.ip_address(address)}: "
    assert outcome.error is not None
    assert outcome.error.startswith(expected)
    assert reason in outcome.error
    assert outcome.give_up
    assert resolver.calls == ["hook.example"]
    assert network.connects == []
    assert network.lookups == []


# -- (1b) the development relaxation: loopback, and nothing else ----------------------------

# What make dev's NOTIFY_ALLOW_LOOPBACK_CALLBACKS=true must still refuse (issue 8).
DEV_REFUSED = [
    ("169.254.169.254", "link-local 169.254.0.0/16 (cloud metadata)"),
    ("10.0.0.1", "private 10.0.0.0/8"),
    ("::ffff:169.254.169.254", "IPv4-mapped ::ffff:0:0/96 embedding 169.254.169.254: link-local"),
    ("192.168.1.1", "private 192.168.0.0/16"),
    ("100.64.0.1", "shared address space (carrier-grade NAT) 100.64.0.0/10"),
]


def _in_url(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@pytest.mark.parametrize(("address", "reason"), DEV_REFUSED)
async def test_dev_settings_refuse_a_name_resolving_off_loopback(
    network: Network, address: str, reason: str
) -> None:
    resolver = ScriptedResolver([address])
    async with guarded_sender(resolver, allow_loopback=True) as sender:
        outcome = await deliver(sender, "http://hook.example/hook")
    assert outcome.error is not None
    assert outcome.error.startswith(
        f"refused: hook.example resolves to {ipaddress.ip_address(address)}: "
    )
    assert reason in outcome.error
    assert outcome.give_up
    assert resolver.calls == ["hook.example"]
    assert (network.connects, network.lookups) == ([], [])


@pytest.mark.parametrize(("address", "reason"), DEV_REFUSED)
async def test_dev_settings_refuse_the_literal_address(
    network: Network, address: str, reason: str
) -> None:
    resolver = ScriptedResolver()  # a literal is never resolved
    async with guarded_sender(resolver, allow_loopback=True) as sender:
        outcome = await deliver(sender, f"http://{_in_url(address)}/latest/meta-data/")
    assert outcome.error is not None
    assert outcome.error.startswith("refused: ")
    assert reason in outcome.error
    assert outcome.give_up
    assert (resolver.calls, network.connects, network.lookups) == ([], [], [])


LOOPBACK_LITERALS = {
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://127.1/hook",
    "http://127.0.1/hook",
    "http://0x7f.1/hook",
    "http://0177.0.0.1./hook",
    "http://127.0.0.1:8080/hook",
    "http://[::1]:8080/hook",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://localhost/hook",
}


@pytest.mark.parametrize(
    ("url", "reason"), [(url, reason) for url, reason in LITERALS if url not in LOOPBACK_LITERALS]
)
async def test_dev_settings_refuse_every_other_literal(
    network: Network, url: str, reason: str
) -> None:
    async with guarded_sender(ScriptedResolver(), allow_loopback=True) as sender:
        outcome = await deliver(sender, url)
    assert outcome.error is not None
    assert outcome.error.startswith("refused: ")
    assert reason in outcome.error
    assert (network.connects, network.lookups) == ([], [])


@pytest.mark.parametrize(
    ("address", "reason"),
    [(a, r) for a, r in RESOLVED if a not in ("127.0.0.1", "::1")],
)
async def test_dev_settings_refuse_every_other_answer(
    network: Network, address: str, reason: str
) -> None:
    """Even next to a loopback answer: every answer must be allowed."""
    resolver = ScriptedResolver(["127.0.0.1", address])
    async with guarded_sender(resolver, allow_loopback=True) as sender:
        outcome = await deliver(sender, "https://hook.example/hook")
    assert outcome.error is not None
    assert outcome.error.startswith(
        f"refused: hook.example resolves to {ipaddress.ip_address(address)}: "
    )
    assert reason in outcome.error
    assert (network.connects, network.lookups) == ([], [])


@pytest.mark.parametrize("url", sorted(LOOPBACK_LITERALS))
async def test_dev_settings_allow_loopback_literals(network: Network, url: str) -> None:
    """Every spelling of a loopback address (and localhost) passes the guard: the request
    reaches the transport below it, addressed to the loopback IP, and nothing else."""
    seen: list[httpx.Request] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    transport = GuardedTransport(
        allow_loopback=True,
        resolver=ScriptedResolver(["127.0.0.1"]),
        transport=httpx.MockTransport(answer),
    )
    async with WebhookSender(SECRET, 5, transport=transport) as sender:
        outcome = await deliver(sender, url)
    assert outcome.succeeded, outcome.error
    [request] = seen
    assert request.url.host in ("127.0.0.1", "::1", "::ffff:7f00:1")
    assert (network.connects, network.lookups) == ([], [])


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_dev_settings_deliver_to_loopback(network: Network, address: str) -> None:
    """A name resolving to 127.0.0.1 or ::1 is delivered to that address. The receiver
    listens on 127.0.0.1; the fixture blocks a connection to ::1 before the system call, so
    for ::1 the attempt (not a refusal) is the proof."""
    resolver = ScriptedResolver([address])
    async with WebhookReceiver(secret=SECRET) as rx:
        port = port_of(rx.url)
        async with guarded_sender(resolver, allow_loopback=True) as sender:
            outcome = await deliver(sender, f"http://hook.example:{port}/hook")
        received = len(rx.requests)
    assert [connect[:2] for connect in network.connects] == [(address, port)]
    if address == "127.0.0.1":
        assert (outcome.succeeded, received) == (True, 1)
    else:
        assert (outcome.error, received) == ("connection refused", 0)  # the fixture's block


async def test_a_failed_lookup_is_retried_not_refused(network: Network) -> None:
    async with guarded_sender(FailingResolver(), allow_loopback=False) as sender:
        outcome = await deliver(sender, "https://hook.example/hook")
    assert outcome.error == "name resolution failed"
    assert outcome.should_retry
    assert network.connects == []


# -- (2) pinning: the connection goes to the checked address --------------------------------


async def test_dns_rebinding_cannot_reach_loopback(network: Network) -> None:
    """The resolver answers a public address first and 127.0.0.1 after. The request goes to
    the public address it checked (blocked by the fixture: nothing leaves this machine), and
    nothing below the guard looks the name up again; the next request, which sees 127.0.0.1,
    is refused. The receiver on 127.0.0.1 gets nothing."""
    resolver = ScriptedResolver([PUBLIC], ["127.0.0.1"])
    async with WebhookReceiver(secret=SECRET) as rx:
        port = port_of(rx.url)
        url = f"http://hook.example:{port}/hook"
        async with guarded_sender(resolver, allow_loopback=False) as sender:
            first = await deliver(sender, url)
            assert resolver.calls == ["hook.example"]
            assert network.connects == [(PUBLIC, port)]
            second = await deliver(sender, url)
            assert resolver.calls == ["hook.example", "hook.example"]
        assert rx.requests == []
    assert first.error == "connection refused"  # the fixture's block of PUBLIC
    assert first.should_retry
    assert second.error == ("refused: hook.example resolves to 127.0.0.1: loopback 127.0.0.0/8")
    assert second.give_up
    assert network.connects == [(PUBLIC, port)]
    assert network.names_looked_up() == []  # no one but the fake resolver saw the name


async def test_the_pinned_address_is_used_with_the_original_host_header(
    network: Network,
) -> None:
    """allow_loopback and a resolver answering 127.0.0.1 for a name DNS does not know: the
    request reaches the receiver, so it went to the checked IP, with the name as Host."""
    resolver = ScriptedResolver(["127.0.0.1"])
    async with WebhookReceiver(secret=SECRET) as rx:
        port = port_of(rx.url)
        async with guarded_sender(resolver, allow_loopback=True) as sender:
            outcome = await deliver(sender, f"http://hook.example:{port}/hook?x=1")
            again = await deliver(sender, f"http://hook.example:{port}/hook?x=1")
        [payload, _] = rx.verified_requests()
        first = rx.requests[0]
    assert (outcome.succeeded, outcome.status_code, again.succeeded) == (True, 200, True)
    assert first.headers["host"] == f"hook.example:{port}"
    assert first.path == "/hook"
    assert payload["data"] == DATA
    assert resolver.calls == ["hook.example", "hook.example"]  # once per request
    assert set(network.connects) == {("127.0.0.1", port)}
    assert network.names_looked_up() == []


async def test_the_next_checked_address_is_tried_when_one_fails(network: Network) -> None:
    resolver = ScriptedResolver([PUBLIC, "127.0.0.1"])
    async with WebhookReceiver() as rx:
        port = port_of(rx.url)
        async with guarded_sender(resolver, allow_loopback=True) as sender:
            outcome = await deliver(sender, f"http://hook.example:{port}/hook")
        assert len(rx.requests) == 1
    assert outcome.succeeded
    assert network.connects == [(PUBLIC, port), ("127.0.0.1", port)]
    assert resolver.calls == ["hook.example"]


async def test_the_system_resolver_by_default(network: Network) -> None:
    """No resolver given: getaddrinfo answers for localhost (allowed only with allow_loopback)."""
    async with WebhookReceiver() as rx:
        port = port_of(rx.url)
        async with WebhookSender(SECRET, 5, transport=GuardedTransport()) as sender:
            refused = await deliver(sender, f"http://localhost:{port}/hook")
        transport = GuardedTransport(allow_loopback=True)
        async with WebhookSender(SECRET, 5, transport=transport) as sender:
            outcome = await deliver(sender, f"http://localhost:{port}/hook")
        assert len(rx.requests) == 1
    assert refused.error == "refused: localhost is a loopback name (RFC 6761)"
    assert outcome.succeeded
    assert rx.requests[0].headers["host"] == f"localhost:{port}"
    assert ("127.0.0.1", port) in network.connects
    assert network.names_looked_up() == ["localhost"]  # once, by the guard


# -- (3) redirects --------------------------------------------------------------------------


async def test_a_redirect_to_the_metadata_address_is_not_followed(network: Network) -> None:
    resolver = ScriptedResolver()
    async with WebhookReceiver(replies=[Reply(302, location=METADATA)]) as rx:
        port = port_of(rx.url)
        async with guarded_sender(resolver, allow_loopback=True) as sender:
            outcome = await deliver(sender, rx.url)
        assert len(rx.requests) == 1
    assert (outcome.succeeded, outcome.status_code) == (False, 302)
    assert outcome.error == f"HTTP 302: redirect to {METADATA} not followed"
    assert network.connects == [("127.0.0.1", port)]
    assert resolver.calls == []


# -- https: the certificate and SNI keep the name -------------------------------------------


@dataclass
class Pki:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, and a server certificate for hook.example and 127.0.0.1 only."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Conveyor test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hook.example")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("hook.example"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder: Path = tmp_path_factory.mktemp("pki")
    (folder / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return Pki(server=server, client=client)


@dataclass
class TlsServer:
    port: int = 0
    connections: int = 0
    server_names: list[str | None] = field(default_factory=list)
    """The SNI of each handshake (None: the client sent none)."""
    hosts: list[str] = field(default_factory=list)
    """The Host header of each request."""


@asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[TlsServer]:
    """A keep-alive HTTPS server on 127.0.0.1 that answers 204 (at most 10 requests per
    connection, 5 s per connection)."""
    record = TlsServer()
    server_context = _record_sni(context, record.server_names)

    async def handle(tcp: SocketStream) -> None:
        record.connections += 1
        with anyio.move_on_after(5):
            try:
                stream = await TLSStream.wrap(
                    tcp, server_side=True, ssl_context=server_context, standard_compatible=False
                )
            except (ssl.SSLError, OSError, anyio.BrokenResourceError, anyio.EndOfStream):
                await tcp.aclose()
                return
            async with stream:
                await _serve_http(stream, record)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    record.port = listener.extra(SocketAttribute.local_port)  # noqa: S610 (anyio, not Django)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield record
        finally:
            tg.cancel_scope.cancel()


def _record_sni(context: ssl.SSLContext, names: list[str | None]) -> ssl.SSLContext:
    """``context``, now appending the SNI of each handshake to ``names``."""

    def record(_sock: Any, name: str | None, _context: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = record
    return context


async def _serve_http(stream: TLSStream, record: TlsServer) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        for _ in range(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive())
                elif isinstance(event, h11.Request):
                    record.hosts.append(dict(event.headers)[b"host"].decode())
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            await stream.send(conn.send(h11.Response(status_code=204, headers=[])))
            await stream.send(conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, h11.RemoteProtocolError):
        return


async def test_https_verifies_and_sends_sni_for_the_name_not_the_ip(
    network: Network, pki: Pki
) -> None:
    resolver = ScriptedResolver(["127.0.0.1"])
    async with tls_server(pki.server) as server:
        url = f"https://hook.example:{server.port}/hook"
        async with guarded_sender(resolver, allow_loopback=True, verify=pki.client) as sender:
            outcome = await deliver(sender, url)
    assert (outcome.succeeded, outcome.status_code) == (True, 204)
    assert server.server_names == ["hook.example"]
    assert server.hosts == [f"hook.example:{server.port}"]
    assert network.connects == [("127.0.0.1", server.port)]
    assert network.names_looked_up() == []


async def test_https_to_an_ip_literal_sends_no_sni(network: Network, pki: Pki) -> None:
    async with tls_server(pki.server) as server:
        url = f"https://127.0.0.1:{server.port}/hook"
        async with guarded_sender(ScriptedResolver(), allow_loopback=True, verify=pki.client) as s:
            outcome = await deliver(s, url)
    assert outcome.succeeded
    assert server.server_names == [None]  # verified against the certificate's IP entry


async def test_a_tls_connection_is_not_reused_for_another_name(network: Network, pki: Pki) -> None:
    """other.example also resolves to 127.0.0.1, but the certificate is hook.example's. A
    pooled connection (keyed by the IP) would carry other.example's request over a connection
    that only hook.example proved it owns; the guard's own transport makes a new connection
    per https request, so the certificate check for other.example fails.

    A plain httpx client is used because it reads each answer to the end, which is what lets
    a connection be reused (WebhookSender never reads the body, so it never reuses one)."""
    transport = GuardedTransport(
        allow_loopback=True, resolver=ScriptedResolver(["127.0.0.1"]), verify=pki.client
    )
    async with tls_server(pki.server) as server, httpx.AsyncClient(transport=transport) as http:
        port = server.port
        first = await http.post(f"https://hook.example:{port}/hook")
        with pytest.raises(httpx.ConnectError, match=r"not valid for 'other\.example'"):
            await http.post(f"https://other.example:{port}/hook")
        third = await http.post(f"https://hook.example:{port}/hook")
    assert (first.status_code, third.status_code) == (204, 204)
    assert server.connections == 3
    assert server.server_names == ["hook.example", "other.example", "hook.example"]
    assert server.hosts == [f"hook.example:{port}", f"hook.example:{port}"]


async def test_control_a_keep_alive_pool_would_reuse_across_names(
    network: Network, pki: Pki
) -> None:
    """The control for the test above: the server keeps connections alive, and a pool that
    keeps TLS connections (httpx's default transport, passed as ``transport``) reuses the
    hook.example connection for other.example. This is why the default does not."""
    pooled = httpx.AsyncHTTPTransport(verify=pki.client, trust_env=False)
    transport = GuardedTransport(
        allow_loopback=True, resolver=ScriptedResolver(["127.0.0.1"]), transport=pooled
    )
    async with tls_server(pki.server) as server, httpx.AsyncClient(transport=transport) as http:
        port = server.port
        first = await http.post(f"https://hook.example:{port}/hook")
        other = await http.post(f"https://other.example:{port}/hook")
    assert (first.status_code, other.status_code) == (204, 204)
    assert server.connections == 1
    assert server.server_names == ["hook.example"]
    assert server.hosts == [f"hook.example:{port}", f"other.example:{port}"]


async def test_the_transport_closes_once() -> None:
    transport = GuardedTransport()
    await transport.aclose()
    await transport.aclose()
    async with WebhookSender(SECRET, 5, transport=GuardedTransport()) as sender:
        assert "closed" not in repr(sender)


def test_the_public_names() -> None:
    assert services.notify.ssrf.__all__ == ["GuardedTransport"]
