"""The SSRF rules of shared.netguard: every refused range, every spelling of an address."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest

import shared.netguard
from shared.errors import ConveyorError
from shared.netguard import (
    CallbackRefused,
    check_url,
    classify,
    is_loopback,
    parse_host,
    resolve_and_check,
)

# Each refused range of FACTS.md (Webhooks/SSRF), with addresses inside it and the text its
# refusal must name.
REFUSED = [
    ("0.0.0.0", "this network 0.0.0.0/8"),
    ("0.255.255.255", "this network 0.0.0.0/8"),
    ("10.0.0.1", "private 10.0.0.0/8"),
    ("10.255.255.255", "private 10.0.0.0/8"),
    ("100.64.0.1", "100.64.0.0/10"),
    ("100.127.255.254", "100.64.0.0/10"),
    ("127.0.0.1", "loopback 127.0.0.0/8"),
    ("127.255.255.254", "loopback 127.0.0.0/8"),
    ("169.254.169.254", "link-local 169.254.0.0/16 (cloud metadata)"),
    ("172.16.0.1", "private 172.16.0.0/12"),
    ("172.31.255.255", "private 172.16.0.0/12"),
    ("192.0.0.1", "192.0.0.0/24"),
    ("192.0.0.170", "192.0.0.0/24"),
    ("192.168.1.1", "private 192.168.0.0/16"),
    ("198.18.0.1", "benchmarking 198.18.0.0/15"),
    ("198.19.255.255", "benchmarking 198.18.0.0/15"),
    ("224.0.0.1", "multicast 224.0.0.0/4"),
    ("239.255.255.250", "multicast 224.0.0.0/4"),
    ("240.0.0.1", "reserved 240.0.0.0/4"),
    ("255.255.255.255", "reserved 240.0.0.0/4"),
    ("::", "unspecified ::/128"),
    ("::1", "loopback ::1/128"),
    ("::127.0.0.1", "IPv4-compatible ::/96"),
    ("::8.8.8.8", "IPv4-compatible ::/96"),
    ("fc00::1", "unique local fc00::/7"),
    ("fd12:3456::1", "unique local fc00::/7"),
    ("fe80::1", "link-local fe80::/10"),
    ("fe80::1%eth0", "link-local fe80::/10"),
    ("febf::1", "link-local fe80::/10"),
    ("ff02::1", "multicast ff00::/8"),
    ("ff0e::1", "multicast ff00::/8"),
    # IPv4 inside IPv6, unwrapped.
    ("::ffff:127.0.0.1", "IPv4-mapped ::ffff:0:0/96 embedding 127.0.0.1: loopback"),
    ("::ffff:a9fe:a9fe", "IPv4-mapped ::ffff:0:0/96 embedding 169.254.169.254"),
    ("::ffff:10.0.0.1", "embedding 10.0.0.1: private 10.0.0.0/8"),
    ("64:ff9b::a9fe:a9fe", "NAT64 64:ff9b::/96 embedding 169.254.169.254: link-local"),
    ("64:ff9b::7f00:1", "NAT64 64:ff9b::/96 embedding 127.0.0.1"),
    ("2002:a9fe:a9fe::", "6to4 2002::/16 embedding 169.254.169.254: link-local"),
    ("2002:7f00:1:1234::1", "6to4 2002::/16 embedding 127.0.0.1"),
    ("2002:c0a8:101::", "6to4 2002::/16 embedding 192.168.1.1"),
    # Teredo: client 127.0.0.1 (last 32 bits inverted), public server 65.54.227.120.
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo 2001::/32 client embedding 127.0.0.1"),
    # Teredo: public client 8.8.8.8, server 10.0.0.1 (bits 32-64).
    ("2001:0:a00:1::f7f7:f7f7", "Teredo 2001::/32 server embedding 10.0.0.1"),
]

# What allow_loopback (the development relaxation) lets through, and nothing else of REFUSED.
LOOPBACK = {
    ipaddress.ip_address(address)
    for address in ("127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1")
}

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below 100.64/10
    "100.128.0.0",  # just above it
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.1",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::",
    "2001:0:4136:e378::f7f7:f7f7",  # Teredo, server 65.54.227.120 and client 8.8.8.8
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_each_refused_range(address: str, reason: str) -> None:
    refusal = classify(ipaddress.ip_address(address))
    assert refusal is not None
    assert reason in refusal


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert classify(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_is_loopback_only_for_loopback(address: str, reason: str) -> None:
    """127.0.0.0/8, ::1 and IPv4-mapped 127.x only: not NAT64, 6to4, Teredo or ::/96 forms
    of 127.0.0.1 (routed off this host), nor 0.0.0.0, link-local or private addresses."""
    parsed = ipaddress.ip_address(address)
    assert is_loopback(parsed) is (parsed in LOOPBACK)


def test_is_global_is_not_trusted() -> None:
    """The trap FACTS.md names: the stdlib calls this 6to4 address global."""
    sixtofour = ipaddress.ip_address("2002:a9fe:a9fe::")
    assert sixtofour.is_global
    assert classify(sixtofour) == (
        "6to4 2002::/16 embedding 169.254.169.254: link-local 169.254.0.0/16 (cloud metadata)"
    )


# -- spellings ------------------------------------------------------------------------------

SPELLINGS = [
    ("2130706433", "127.0.0.1"),  # one decimal number
    ("0x7f000001", "127.0.0.1"),  # one hex number
    ("0177.0.0.1", "127.0.0.1"),  # octal first part
    ("0177.0000.0000.0001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),  # a.b: b fills 24 bits
    ("127.0.1", "127.0.0.1"),  # a.b.c: c fills 16 bits
    ("0x7f.1", "127.0.0.1"),  # mixed
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("127.0.0.1.", "127.0.0.1"),  # an absolute name
    ("0", "0.0.0.0"),
    ("4294967295", "255.255.255.255"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("[::]", "::"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("[::ffff:7f00:1]", "::ffff:7f00:1"),
    ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe"),
    ("[2002:a9fe:a9fe::]", "2002:a9fe:a9fe::"),
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "2001:0:4136:e378:8000:63bf:80ff:fffe"),
    ("[fe80::1%25eth0]", "fe80::1%eth0"),  # RFC 6874: the zone's % is %25 in a URL
    ("fe80::1%25eth0", "fe80::1%eth0"),  # httpx's raw_host drops the brackets
    ("[fe80::1%eth0]", "fe80::1%eth0"),
    ("8.8.8.8", "8.8.8.8"),
    ("[2606:4700::1111]", "2606:4700::1111"),
]


@pytest.mark.parametrize(("host", "address"), SPELLINGS)
def test_every_spelling_is_a_literal(host: str, address: str) -> None:
    assert parse_host(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "host",
    [
        "hook.example",
        "example.com",
        "bad.cafe",  # hex letters, but not a number
        "deadbeef",  # hex without 0x is a name
        "1e100.net",
        "4294967296",  # 2**32: too big for an address, so a name
        "127.0.0.1.1",  # five parts
        "08.0.0.1",  # 8 is not an octal digit
        "127.0.0.1 x",  # glibc's inet_aton would accept this
        "[hook.example]",
        "[::1",
        "",
        "localhost",
    ],
)
def test_names_are_not_literals(host: str) -> None:
    assert parse_host(host) is None


# -- URLs -----------------------------------------------------------------------------------

REFUSED_URLS = [
    ("http://2130706433/hook", "2130706433 is 127.0.0.1: loopback 127.0.0.0/8"),
    ("http://0x7f000001/hook", "0x7f000001 is 127.0.0.1: loopback"),
    # httpx, which sends the webhooks, rejects a dotted quad with a leading zero outright.
    ("http://0177.0.0.1/hook", "invalid URL: Invalid IPv4 address"),
    ("http://0177.0.0.1./hook", "0177.0.0.1. is 127.0.0.1: loopback"),
    ("http://127.1/hook", "127.1 is 127.0.0.1: loopback"),
    ("http://127.0.1/hook", "127.0.1 is 127.0.0.1: loopback"),
    ("http://0x7f.1/hook", "0x7f.1 is 127.0.0.1: loopback"),
    ("http://127.0.0.1:8080/hook", "127.0.0.1 is loopback 127.0.0.0/8"),
    ("http://[::1]:8080/hook", "::1 is loopback ::1/128"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped ::ffff:0:0/96 embedding 127.0.0.1"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped ::ffff:0:0/96 embedding 127.0.0.1"),
    ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 64:ff9b::/96 embedding 169.254.169.254"),
    ("http://[2002:a9fe:a9fe::]/", "6to4 2002::/16 embedding 169.254.169.254"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "Teredo 2001::/32 client embedding"),
    ("http://[fe80::1%25eth0]/", "link-local fe80::/10"),
    ("http://[::]/", "unspecified ::/128"),
    ("http://0.0.0.0/", "this network 0.0.0.0/8"),
    ("http://169.254.169.254/latest/meta-data/", "link-local 169.254.0.0/16 (cloud metadata)"),
    ("https://100.64.0.1/", "100.64.0.0/10"),
    ("http://198.18.0.1/", "benchmarking 198.18.0.0/15"),
    ("http://224.0.0.1/", "multicast 224.0.0.0/4"),
    ("http://255.255.255.255/", "reserved 240.0.0.0/4"),
    ("http://10.0.0.1/", "private 10.0.0.0/8"),
    ("http://172.16.0.1/", "private 172.16.0.0/12"),
    ("http://192.168.0.1/", "private 192.168.0.0/16"),
    ("http://192.0.0.1/", "192.0.0.0/24"),
    ("http://[fd00::1]/", "unique local fc00::/7"),
    ("http://[ff02::1]/", "multicast ff00::/8"),
    ("http://[::127.0.0.1]/", "IPv4-compatible ::/96"),
    ("http://localhost:8000/", "localhost is a loopback name"),
    ("http://hooks.localhost/", "hooks.localhost is a loopback name"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED_URLS)
def test_private_literal_urls_are_refused(url: str, reason: str) -> None:
    problem = check_url(url, allow_loopback=False)
    assert problem is not None
    assert reason in problem


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8/hook",
        "https://93.184.216.34:8443/hook?x=1",
        "https://[2606:4700::1111]/hook",
        "https://hooks.example.com/conveyor",
        "http://hook.example:8080/",
        "https://[::ffff:8.8.8.8]/",
        "https://b\u00fccher.example/hook",  # IDNA
    ],
)
def test_public_urls_pass(url: str) -> None:
    assert check_url(url, allow_loopback=False) is None
    assert check_url(url, allow_loopback=True) is None


LOOPBACK_URLS = {
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://0177.0.0.1./hook",
    "http://127.1/hook",
    "http://127.0.1/hook",
    "http://0x7f.1/hook",
    "http://127.0.0.1:8080/hook",
    "http://[::1]:8080/hook",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://localhost:8000/",
    "http://hooks.localhost/",
}


@pytest.mark.parametrize("url", sorted(LOOPBACK_URLS))
def test_allow_loopback_allows_loopback_urls(url: str) -> None:
    assert check_url(url, allow_loopback=True) is None


@pytest.mark.parametrize(
    ("url", "reason"), [(url, reason) for url, reason in REFUSED_URLS if url not in LOOPBACK_URLS]
)
def test_allow_loopback_still_refuses_every_other_range(url: str, reason: str) -> None:
    """The development relaxation is loopback only: metadata, private, CGNAT, IPv4 inside
    IPv6 (but IPv4-mapped 127.x) stay refused."""
    problem = check_url(url, allow_loopback=True)
    assert problem is not None
    assert reason in problem


NOT_HTTP = [
    "file:///etc/passwd",
    "ftp://example.com/hook",
    "gopher://example.com:70/_POST",
    "javascript:alert(1)",
    "data:text/plain,hello",
    "dict://example.com:11211/",
    "ws://example.com/hook",
]


@pytest.mark.parametrize("url", NOT_HTTP)
@pytest.mark.parametrize("allow_loopback", [False, True])
def test_only_http_and_https(url: str, allow_loopback: bool) -> None:
    assert check_url(url, allow_loopback=allow_loopback) == "the scheme must be http or https"


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret@hooks.example.com/",
        "https://user@hooks.example.com/",
        "https://:secret@hooks.example.com/",
        "http://user:secret@127.0.0.1/",
    ],
)
@pytest.mark.parametrize("allow_loopback", [False, True])
def test_credentials_are_refused_and_not_quoted(url: str, allow_loopback: bool) -> None:
    problem = check_url(url, allow_loopback=allow_loopback)
    assert problem is not None
    assert "credentials" in problem
    assert "secret" not in problem


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http:///hook", "no host"),
        ("http://hooks.example.com:0/", "port 0 is out of range"),
        ("http://hooks.example.com:65536/", "port 65536 is out of range"),
        ("http://hooks.example.com:99999/", "port 99999 is out of range"),
        ("http://hooks.example.com:x/", "invalid URL"),
        ("https://hooks.example.com/" + "a" * 2048, "longer than 2048 characters"),
        ("not a url", "the scheme must be http or https"),
        ("", "the scheme must be http or https"),
    ],
)
def test_malformed_urls(url: str, reason: str) -> None:
    for allow_loopback in (False, True):
        problem = check_url(url, allow_loopback=allow_loopback)
        assert problem is not None
        assert reason in problem


def test_the_length_limit_is_inclusive() -> None:
    base = "https://hooks.example.com/"
    assert check_url(base + "a" * (2048 - len(base)), allow_loopback=False) is None
    assert check_url(base + "a" * (2049 - len(base)), allow_loopback=False) is not None


# -- resolution -----------------------------------------------------------------------------


class ScriptedResolver:
    """Answers each lookup with the next scripted answer (the last one repeats)."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


@pytest.mark.anyio
async def test_a_public_answer_is_returned() -> None:
    resolver = ScriptedResolver(["93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"])
    addresses = await resolve_and_check(
        "hook.example", 443, allow_loopback=False, resolver=resolver
    )
    assert addresses == [
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:2800:220:1::1"),
    ]
    assert resolver.calls == [("hook.example", 443)]


@pytest.mark.anyio
@pytest.mark.parametrize(("address", "reason"), REFUSED)
async def test_any_private_answer_refuses_the_name(address: str, reason: str) -> None:
    """Not only the first answer counts: the private one may be listed last."""
    resolver = ScriptedResolver(["93.184.216.34", address])
    with pytest.raises(CallbackRefused) as caught:
        await resolve_and_check("hook.example", 80, allow_loopback=False, resolver=resolver)
    assert f"hook.example resolves to {ipaddress.ip_address(address)}: " in str(caught.value)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ConveyorError)


@pytest.mark.anyio
@pytest.mark.parametrize(("host", "address"), SPELLINGS)
async def test_literals_are_never_resolved(host: str, address: str) -> None:
    resolver = ScriptedResolver(["8.8.8.8"])
    expected = ipaddress.ip_address(address)
    if classify(expected) is None:
        got = await resolve_and_check(host, 80, allow_loopback=False, resolver=resolver)
        assert got == [expected]
    else:
        with pytest.raises(CallbackRefused, match=str(expected)):
            await resolve_and_check(host, 80, allow_loopback=False, resolver=resolver)
    if classify(expected) is None or expected in LOOPBACK:
        got = await resolve_and_check(host, 80, allow_loopback=True, resolver=resolver)
        assert got == [expected]
    else:
        with pytest.raises(CallbackRefused, match=str(expected)):
            await resolve_and_check(host, 80, allow_loopback=True, resolver=resolver)
    assert resolver.calls == []


@pytest.mark.anyio
async def test_allow_loopback_lets_a_name_resolve_to_loopback() -> None:
    resolver = ScriptedResolver(["127.0.0.1", "::1", "::ffff:127.0.0.2", "127.0.0.1"])
    got = await resolve_and_check("hook.example", 80, allow_loopback=True, resolver=resolver)
    assert got == [ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "::ffff:127.0.0.2")]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("address", "reason"),
    [(a, r) for a, r in REFUSED if ipaddress.ip_address(a) not in LOOPBACK],
)
async def test_allow_loopback_still_refuses_any_other_answer(address: str, reason: str) -> None:
    """Any non-loopback, non-public answer refuses the name, even next to a loopback one."""
    resolver = ScriptedResolver(["127.0.0.1", address])
    with pytest.raises(CallbackRefused) as caught:
        await resolve_and_check("hook.example", 80, allow_loopback=True, resolver=resolver)
    assert f"hook.example resolves to {ipaddress.ip_address(address)}: " in str(caught.value)
    assert reason in str(caught.value)


@pytest.mark.anyio
async def test_no_answer_is_a_lookup_failure_not_a_refusal() -> None:
    resolver = ScriptedResolver([])
    with pytest.raises(socket.gaierror):
        await resolve_and_check("hook.example", 80, allow_loopback=False, resolver=resolver)


@pytest.mark.anyio
async def test_an_answer_that_is_not_an_address_is_refused() -> None:
    resolver = ScriptedResolver(["not-an-ip"])
    with pytest.raises(CallbackRefused, match="not an IP address"):
        await resolve_and_check("hook.example", 80, allow_loopback=False, resolver=resolver)


@pytest.mark.anyio
async def test_the_system_resolver_answers_for_localhost() -> None:
    """The default resolver (getaddrinfo through anyio) on a name that never leaves the host."""
    with pytest.raises(CallbackRefused, match=r"localhost resolves to .*: loopback"):
        await resolve_and_check("localhost", 80, allow_loopback=False)
    addresses = await resolve_and_check("localhost", 80, allow_loopback=True)
    assert addresses
    assert all(address.is_loopback for address in addresses)


def test_the_public_names() -> None:
    assert sorted(shared.netguard.__all__) == [
        "CallbackRefused",
        "IPAddress",
        "MAX_URL_LENGTH",
        "Resolver",
        "check_url",
        "classify",
        "is_loopback",
        "parse_host",
        "resolve_and_check",
        "system_resolver",
    ]
