"""loop.getaddrinfo / loop.getnameinfo give what the socket module gives.

Every test runs on ferroloop and on the stdlib asyncio loop (the oracle) through the ``loop``
fixture of conftest.py. The expected value is always computed by calling the socket module directly
on the same machine, so the tests do not depend on how /etc/hosts or /etc/services look. Only names
that resolve locally are used (no DNS traffic).
"""

import asyncio
import socket

import pytest

WAIT = 10.0

AF_INET, AF_INET6, AF_UNSPEC = socket.AF_INET, socket.AF_INET6, socket.AF_UNSPEC
SOCK_STREAM, SOCK_DGRAM = socket.SOCK_STREAM, socket.SOCK_DGRAM


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


def outcome(call):
    """("ok", value) or ("error", exception type, errno) for a call, sync or async."""
    try:
        return "ok", call()
    except Exception as exc:
        return "error", type(exc), getattr(exc, "errno", None)


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(AF_INET6, SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback")


# (host, port, keyword arguments) -> each is checked against socket.getaddrinfo
GETADDRINFO_CASES = {
    "localhost": ("localhost", 80, {}),
    "localhost-no-port": ("localhost", None, {}),
    "localhost-str-port": ("localhost", "8080", {}),
    "localhost-service-name": ("localhost", "http", {"type": SOCK_STREAM}),
    "localhost-inet-stream": ("localhost", 80, {"family": AF_INET, "type": SOCK_STREAM}),
    "localhost-inet-tcp": ("localhost", 80, {"family": AF_INET, "proto": socket.IPPROTO_TCP}),
    "localhost-inet6": ("localhost", 80, {"family": AF_INET6}),
    "localhost-dgram": ("localhost", 53, {"type": SOCK_DGRAM}),
    "localhost-canonname": ("localhost", 80, {"family": AF_INET, "type": SOCK_STREAM, "flags": socket.AI_CANONNAME}),
    "bytes-host": (b"localhost", b"80", {}),
    "ipv4": ("127.0.0.1", 80, {}),
    "ipv4-port-zero": ("127.0.0.1", 0, {}),
    "ipv4-stream": ("127.0.0.1", 443, {"type": SOCK_STREAM}),
    "ipv4-udp": ("127.0.0.1", 53, {"family": AF_INET, "type": SOCK_DGRAM, "proto": socket.IPPROTO_UDP}),
    "ipv4-numerichost": ("127.0.0.1", 80, {"flags": socket.AI_NUMERICHOST}),
    "ipv4-numericserv": ("127.0.0.1", "80", {"flags": socket.AI_NUMERICSERV}),
    "ipv4-as-inet6": ("127.0.0.1", 80, {"family": AF_INET6}),
    "ipv4-mapped-v4mapped": ("127.0.0.1", 80, {"family": AF_INET6, "flags": socket.AI_V4MAPPED}),
    "ipv6": pytest.param("::1", 80, {}, marks=needs_ipv6),
    "ipv6-stream": pytest.param("::1", 8443, {"family": AF_INET6, "type": SOCK_STREAM}, marks=needs_ipv6),
    "ipv6-numerichost": pytest.param("::1", 80, {"flags": socket.AI_NUMERICHOST}, marks=needs_ipv6),
    "passive-none-host": (None, 8000, {"flags": socket.AI_PASSIVE, "type": SOCK_STREAM}),
    "none-host": (None, 8000, {"type": SOCK_STREAM}),
    "any-address": ("0.0.0.0", 0, {"type": SOCK_STREAM}),
}


def _case_values(case):
    return case.values if hasattr(case, "values") else case


@pytest.mark.parametrize(
    ("host", "port", "kwargs"),
    [
        pytest.param(*_case_values(case), id=name, marks=getattr(case, "marks", ()))
        for name, case in GETADDRINFO_CASES.items()
    ],
)
def test_getaddrinfo_matches_socket_module(loop, host, port, kwargs):
    expected = outcome(lambda: socket.getaddrinfo(host, port, **kwargs))
    actual = outcome(lambda: run(loop, loop.getaddrinfo(host, port, **kwargs)))
    assert actual == expected


def test_getaddrinfo_returns_enum_members(loop):
    infos = run(loop, loop.getaddrinfo("127.0.0.1", 80, type=SOCK_STREAM))
    family, type_, proto, canonname, sockaddr = infos[0]
    assert family is socket.AddressFamily.AF_INET
    assert type_ is socket.SocketKind.SOCK_STREAM
    assert (proto, canonname, sockaddr) == (socket.IPPROTO_TCP, "", ("127.0.0.1", 80))
    assert isinstance(infos, list)


def test_getaddrinfo_numeric_ipv4_shape(loop):
    infos = run(loop, loop.getaddrinfo("127.0.0.1", 5000, family=AF_INET, type=SOCK_DGRAM))
    assert infos == [(AF_INET, SOCK_DGRAM, socket.IPPROTO_UDP, "", ("127.0.0.1", 5000))]


@needs_ipv6
def test_getaddrinfo_numeric_ipv6_shape(loop):
    infos = run(loop, loop.getaddrinfo("::1", 5000, family=AF_INET6, type=SOCK_STREAM))
    assert infos == [(AF_INET6, SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", 5000, 0, 0))]


def test_getaddrinfo_concurrent_calls(loop):
    hosts = ["localhost", "127.0.0.1", "localhost", "127.0.0.1"] * 3

    async def main():
        return await asyncio.gather(*(loop.getaddrinfo(h, 80, family=AF_INET, type=SOCK_STREAM) for h in hosts))

    results = run(loop, main())
    assert results == [socket.getaddrinfo(h, 80, AF_INET, SOCK_STREAM) for h in hosts]


# Each of these fails locally, without asking any name server.
BAD_LOOKUPS = {
    "non-numeric-with-numerichost": ("not-an-ip", 80, {"flags": socket.AI_NUMERICHOST}),
    "no-host-no-port": (None, None, {}),
    "bad-ipv4-with-numerichost": ("127.0.0.300", 80, {"flags": socket.AI_NUMERICHOST}),
    "service-name-with-numericserv": ("127.0.0.1", "http", {"flags": socket.AI_NUMERICSERV}),
    "unknown-service": ("127.0.0.1", "no-such-service-name", {"type": SOCK_STREAM}),
}


@pytest.mark.parametrize(("host", "port", "kwargs"), list(BAD_LOOKUPS.values()), ids=list(BAD_LOOKUPS))
def test_getaddrinfo_bad_host_raises_gaierror(loop, host, port, kwargs):
    with pytest.raises(socket.gaierror) as excinfo:
        socket.getaddrinfo(host, port, **kwargs)
    expected_errno = excinfo.value.errno
    with pytest.raises(socket.gaierror) as excinfo:
        run(loop, loop.getaddrinfo(host, port, **kwargs))
    assert excinfo.value.errno == expected_errno


def test_getaddrinfo_error_does_not_break_later_calls(loop):
    async def main():
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("not-an-ip", 80, flags=socket.AI_NUMERICHOST)
        return await loop.getaddrinfo("127.0.0.1", 80, type=SOCK_STREAM)

    assert run(loop, main()) == socket.getaddrinfo("127.0.0.1", 80, type=SOCK_STREAM)


# (sockaddr, flags) -> each is checked against socket.getnameinfo
GETNAMEINFO_CASES = {
    "ipv4": (("127.0.0.1", 80), 0),
    "ipv4-numeric": (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    "ipv4-numericserv": (("127.0.0.1", 22), socket.NI_NUMERICSERV),
    "ipv4-dgram": (("127.0.0.1", 53), socket.NI_DGRAM),
    "ipv4-unknown-port": (("127.0.0.1", 47999), 0),
    "ipv6": pytest.param(("::1", 443, 0, 0), 0, marks=needs_ipv6),
    "ipv6-numeric": pytest.param(("::1", 443, 0, 0), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV, marks=needs_ipv6),
    "ipv6-short-tuple": pytest.param(("::1", 443), socket.NI_NUMERICHOST, marks=needs_ipv6),
    "error-hostname": (("not-an-ip", 80), 0),
    "error-short-tuple": (("127.0.0.1",), 0),
    "error-ipv4-four-tuple": (("127.0.0.1", 80, 0, 0), 0),
    "error-str-port": (("127.0.0.1", "80"), 0),
}


@pytest.mark.parametrize(
    ("sockaddr", "flags"),
    [
        pytest.param(*_case_values(case), id=name, marks=getattr(case, "marks", ()))
        for name, case in GETNAMEINFO_CASES.items()
    ],
)
def test_getnameinfo_matches_socket_module(loop, sockaddr, flags):
    expected = outcome(lambda: socket.getnameinfo(sockaddr, flags))
    actual = outcome(lambda: run(loop, loop.getnameinfo(sockaddr, flags)))
    assert actual == expected


def test_getnameinfo_default_flags(loop):
    assert run(loop, loop.getnameinfo(("127.0.0.1", 80))) == socket.getnameinfo(("127.0.0.1", 80), 0)
