"""Which addresses a callback may reach: the SSRF rules, as pure functions.

A callback URL is chosen by a tenant, and the notify service POSTs to it from inside our
network. Without a guard, ``http://169.254.169.254/latest/meta-data/`` (cloud credentials),
``http://127.0.0.1:5432/`` or any private service is one job submission away. The rules:

    check_url(url)              static, no DNS (job submission): http(s) only, a host, no
                                user:password@, a valid port, at most 2,048 characters, and a
                                literal IP in any spelling (2130706433, 0x7f.1, [::1]...)
                                must be public
    resolve_and_check(host)     at delivery: resolve once; EVERY answer must be public; the
                                caller then connects to one of these addresses and nowhere else
                                (services.notify.ssrf.GuardedTransport pins them)
    classify(address)           None when public, else the refused range, by name

Refused (exactly the list in the project's FACTS, Webhooks/SSRF):

    IPv4    0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.0.0/24, 192.168/16,
            198.18/15, 224/4, 240/4 (which holds 255.255.255.255)
    IPv6    ::, ::1, ::/96 (IPv4-compatible, deprecated), fc00::/7, fe80::/10, ff00::/8
    IPv4 inside IPv6, unwrapped and judged by the IPv4 rules:
            ::ffff:0:0/96 (IPv4-mapped), 64:ff9b::/96 (NAT64), 2002::/16 (6to4), and
            2001::/32 (Teredo: its client address and its server address)

``ipaddress``'s ``is_global`` is not used: it calls ``2002:a9fe:a9fe::`` global, though that
address carries 169.254.169.254.

``allow_loopback=True`` (development and tests only) also lets through loopback and nothing
else: 127.0.0.0/8, ::1, the IPv4-mapped ::ffff:127.x.y.z, and the names ``localhost`` and
``*.localhost`` (whose answers must then be loopback too). Every other range above stays
refused in every mode: a development stack must not reach the cloud metadata address or a
private network either. Errors:

    ConveyorError
    └── CallbackRefused     a callback address is not allowed (retrying cannot help)
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final, TypeAlias

import anyio
import httpx

from shared.errors import ConveyorError

__all__ = [
    "MAX_URL_LENGTH",
    "CallbackRefused",
    "IPAddress",
    "Resolver",
    "check_url",
    "classify",
    "is_loopback",
    "parse_host",
    "resolve_and_check",
    "system_resolver",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
Resolver: TypeAlias = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses as text``: how names are resolved (the seam tests replace)."""

MAX_URL_LENGTH: Final = 2048


class CallbackRefused(ConveyorError):
    """The callback's address is not one we deliver to; the message says which range."""


_IPV4: Final = tuple(
    (IPv4Network(network), reason)
    for network, reason in (
        ("0.0.0.0/8", "this network 0.0.0.0/8"),
        ("10.0.0.0/8", "private 10.0.0.0/8"),
        ("100.64.0.0/10", "shared address space (carrier-grade NAT) 100.64.0.0/10"),
        ("127.0.0.0/8", "loopback 127.0.0.0/8"),
        ("169.254.0.0/16", "link-local 169.254.0.0/16 (cloud metadata)"),
        ("172.16.0.0/12", "private 172.16.0.0/12"),
        ("192.0.0.0/24", "IETF protocol assignments 192.0.0.0/24"),
        ("192.168.0.0/16", "private 192.168.0.0/16"),
        ("198.18.0.0/15", "benchmarking 198.18.0.0/15"),
        ("224.0.0.0/4", "multicast 224.0.0.0/4"),
        ("240.0.0.0/4", "reserved 240.0.0.0/4 (includes broadcast 255.255.255.255)"),
    )
)

# Checked in order: the two single addresses before the ::/96 that holds them.
_IPV6: Final = tuple(
    (IPv6Network(network), reason)
    for network, reason in (
        ("::/128", "unspecified ::/128"),
        ("::1/128", "loopback ::1/128"),
        ("::/96", "IPv4-compatible ::/96 (deprecated)"),
        ("fc00::/7", "unique local fc00::/7"),
        ("fe80::/10", "link-local fe80::/10"),
        ("ff00::/8", "multicast ff00::/8"),
    )
)

_NAT64: Final = IPv6Network("64:ff9b::/96")
_LOOPBACK_V4: Final = IPv4Network("127.0.0.0/8")
_LOOPBACK_V6: Final = IPv6Network("::1/128")

# What C's inet_aton accepts: digits, hex digits after 0x, and dots.
_INET_ATON_CHARS: Final = frozenset("0123456789abcdefxABCDEFX.")


def classify(address: IPAddress) -> str | None:
    """None when ``address`` is public; else the refused range it is in, e.g.
    ``"loopback 127.0.0.0/8"`` or ``"6to4 2002::/16 embedding 169.254.169.254: link-local
    169.254.0.0/16 (cloud metadata)"``."""
    if isinstance(address, IPv4Address):
        return next((reason for network, reason in _IPV4 if address in network), None)
    reason = next((reason for network, reason in _IPV6 if address in network), None)
    if reason is not None:
        return reason
    for label, embedded in _embedded_ipv4(address):
        inner = classify(embedded)
        if inner is not None:
            return f"{label} embedding {embedded}: {inner}"
    return None


def is_loopback(address: IPAddress) -> bool:
    """True for what ``allow_loopback`` lets through: 127.0.0.0/8, ::1 and ::ffff:127.x.y.z
    (an IPv4-mapped address is the IPv4 address to the socket layer). Not the other IPv6
    wrappings: NAT64, 6to4 and Teredo addresses are routed off this host."""
    if isinstance(address, IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is None:
            return address in _LOOPBACK_V6
        address = mapped
    return address in _LOOPBACK_V4


def _refusal(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why ``address`` is refused under these rules, or None."""
    if allow_loopback and is_loopback(address):
        return None
    return classify(address)


def _embedded_ipv4(address: IPv6Address) -> list[tuple[str, IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its wrapping."""
    found: list[tuple[str, IPv4Address]] = []
    if address.ipv4_mapped is not None:
        found.append(("IPv4-mapped ::ffff:0:0/96", address.ipv4_mapped))
    if address in _NAT64:
        # Hand-written: ipaddress has accessors for mapped, 6to4 and Teredo addresses but none
        # for NAT64. RFC 6052's well-known /96 prefix puts the IPv4 in the last 32 bits.
        found.append(("NAT64 64:ff9b::/96", IPv4Address(int(address) & 0xFFFF_FFFF)))
    if address.sixtofour is not None:  # bits 16-48
        found.append(("6to4 2002::/16", address.sixtofour))
    if address.teredo is not None:  # (server: bits 32-64, client: last 32 bits inverted)
        server, client = address.teredo
        found.append(("Teredo 2001::/32 client", client))
        found.append(("Teredo 2001::/32 server", server))
    return found


def parse_host(host: str) -> IPAddress | None:
    """The address ``host`` names when it is an IP literal, in any spelling a resolver takes;
    None when it is a name (to be resolved).

    IPv6: with or without brackets, with a zone id (``[fe80::1%25eth0]``, RFC 6874's URL form,
    or ``fe80::1%eth0``). IPv4: every form of C's ``inet_aton``, which is also what
    ``getaddrinfo`` accepts for a numeric host, so ``socket.inet_aton`` (the platform's own
    parser) is the oracle rather than a hand-written one: ``127.0.0.1``, ``2130706433``,
    ``0x7f000001``, ``0177.0.0.1`` (octal), ``127.1`` and ``127.0.1`` (short forms),
    ``0x7f.1`` (mixed). A trailing dot (``127.0.0.1.``, an absolute name) is ignored, as URL
    parsers do. Only characters inet_aton can use are passed to it: glibc's version accepts
    anything after a space (``"127.0.0.1 x"``).
    """
    name = host
    bracketed = name.startswith("[") and name.endswith("]")
    if bracketed:
        name = name[1:-1]
    if ":" in name:  # only an IPv6 literal has a colon in a host
        try:
            return IPv6Address(name.replace("%25", "%", 1))
        except ValueError:
            return None
    if bracketed:
        return None
    name = name.removesuffix(".")
    if not name or not set(name) <= _INET_ATON_CHARS:
        return None
    try:
        packed = socket.inet_aton(name)
    except OSError:
        return None
    return IPv4Address(packed)


def check_url(url: str, *, allow_loopback: bool) -> str | None:
    """None when ``url`` may be a callback, else why not (one line that never quotes the URL,
    which may carry credentials). Needs no DNS: a name is checked when it is resolved.

    The URL is parsed by httpx, the library that sends the webhooks, so what is checked is
    what would be sent.
    """
    if len(url) > MAX_URL_LENGTH:
        return f"the URL is longer than {MAX_URL_LENGTH} characters"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"invalid URL: {exc}"
    if parsed.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if parsed.userinfo:
        return "the URL carries credentials (user:password@), which would leak into logs"
    if not parsed.host:
        return "the URL has no host"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return f"port {parsed.port} is out of range"
    host = parsed.raw_host.decode("ascii")
    if host == "localhost" or host.endswith(".localhost"):
        # Its answers are checked when it is resolved, like any name's.
        return None if allow_loopback else f"{host} is a loopback name (RFC 6761)"
    literal = parse_host(host)
    if literal is not None:
        reason = _refusal(literal, allow_loopback=allow_loopback)
        if reason is not None:
            return _literal_refusal(host, literal, reason)
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The system's resolver (``getaddrinfo``, through anyio: a worker thread)."""
    answers = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [
        str(sockaddr[0])
        for family, _, _, _, sockaddr in answers
        if family in (socket.AF_INET, socket.AF_INET6)
    ]


async def resolve_and_check(
    host: str,
    port: int,
    *,
    allow_loopback: bool,
    resolver: Resolver = system_resolver,
) -> list[IPAddress]:
    """The addresses ``host`` stands for, once resolved and all checked: connect to one of
    these, never to the name (a second lookup may answer differently: DNS rebinding).

    A literal (any spelling, see :func:`parse_host`) is not resolved. Raises
    :class:`CallbackRefused` when ANY answer is not public (an attacker's name can answer
    a public and a private address together); lets the resolver's ``OSError``
    (``socket.gaierror``) through, as a failure worth retrying; an empty answer is one too.
    """
    literal = parse_host(host)
    if literal is not None:
        if (reason := _refusal(literal, allow_loopback=allow_loopback)) is not None:
            raise CallbackRefused(_literal_refusal(host, literal, reason))
        return [literal]
    addresses: list[IPAddress] = []
    for answer in await resolver(host, port):
        try:
            address = ip_address(answer)
        except ValueError:
            raise CallbackRefused(f"{host} resolved to {answer!r}, not an IP address") from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} resolved to no address")
    for address in addresses:
        if (reason := _refusal(address, allow_loopback=allow_loopback)) is not None:
            raise CallbackRefused(f"{host} resolves to {address}: {reason}")
    return addresses


def _literal_refusal(host: str, address: IPAddress, reason: str) -> str:
    spelled = host.strip("[]")
    if spelled == str(address):
        return f"{address} is {reason}"
    return f"{spelled} is {address}: {reason}"
