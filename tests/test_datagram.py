"""Datagram endpoints (UDP and Unix datagram sockets): sending, receiving, addresses, queueing
and errors. Every test runs on ferroloop and on the stdlib asyncio loop (the oracle)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile

import pytest

WAIT = 10.0


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


class Endpoint(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.loop = loop
        self.received: list[tuple[bytes, object]] = []
        self.errors: list[Exception] = []
        self.transport = None
        self.lost = loop.create_future()
        self._waiter: tuple[int, asyncio.Future] | None = None
        self.pauses = 0
        self.resumes = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        assert isinstance(data, bytes)
        self.received.append((data, addr))
        self._wake()

    def error_received(self, exc):
        self.errors.append(exc)
        self._wake()

    def connection_lost(self, exc):
        self.lost.set_result(exc)

    def pause_writing(self):
        self.pauses += 1

    def resume_writing(self):
        self.resumes += 1

    def _wake(self):
        if self._waiter and len(self.received) + len(self.errors) >= self._waiter[0]:
            if not self._waiter[1].done():
                self._waiter[1].set_result(None)

    async def events(self, n):
        self._waiter = (n, self.loop.create_future())
        self._wake()
        await self._waiter[1]


class BoundPair:
    """Two Unix datagram sockets bound in a temporary directory, `a` connected to `b`: an
    endpoint over `a` has a peer name, so it sends with send() (a socketpair's empty peer name
    would make asyncio call sendto(data, None))."""

    def __enter__(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.a.bind(os.path.join(self.tmp.name, "a"))
        self.b.bind(os.path.join(self.tmp.name, "b"))
        self.a.connect(self.b.getsockname())
        self.b.setblocking(False)
        return self.a, self.b

    def __exit__(self, *exc):
        self.a.close()
        self.b.close()
        self.tmp.cleanup()


async def drain(sock, count):
    got = []
    while len(got) < count:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            await asyncio.sleep(0.001)
    return got


async def close_all(*protocols):
    for proto in protocols:
        proto.transport.close()
    for proto in protocols:
        assert await proto.lost is None


def test_udp_round_trip_with_addresses(loop, is_ferroloop):
    async def main():
        _, server = await loop.create_datagram_endpoint(lambda: Endpoint(loop), local_addr=("127.0.0.1", 0))
        server_addr = server.transport.get_extra_info("sockname")
        client_tr, client = await loop.create_datagram_endpoint(lambda: Endpoint(loop), remote_addr=server_addr)
        assert isinstance(client_tr, asyncio.BaseTransport)
        if is_ferroloop or sys.version_info >= (3, 12):
            # Python 3.11's selector loop forgot the DatagramTransport base class.
            assert isinstance(client_tr, asyncio.DatagramTransport)
        assert client_tr.get_extra_info("peername") == server_addr
        client_tr.sendto(b"ping")
        client_tr.sendto(b"")  # empty datagrams are not sent
        client_tr.sendto(bytearray(b"ping2"), server_addr)
        await server.events(2)
        client_addr = client_tr.get_extra_info("sockname")
        assert server.received == [(b"ping", client_addr), (b"ping2", client_addr)]
        server.transport.sendto(memoryview(b"pong"), client_addr)
        await client.events(1)
        assert client.received == [(b"pong", server_addr)]
        assert client_tr.get_write_buffer_size() == 0
        await close_all(client, server)

    run(loop, main())


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_udp_ipv6_addresses_are_four_tuples(loop):
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")

    async def main():
        _, server = await loop.create_datagram_endpoint(lambda: Endpoint(loop), local_addr=("::1", 0))
        server_addr = server.transport.get_extra_info("sockname")
        client_tr, client = await loop.create_datagram_endpoint(lambda: Endpoint(loop), remote_addr=server_addr[:2])
        client_tr.sendto(b"six")
        await server.events(1)
        data, addr = server.received[0]
        assert data == b"six"
        assert addr == client_tr.get_extra_info("sockname")
        assert len(addr) == 4 and addr[0] == "::1"
        await close_all(client, server)

    run(loop, main())


def test_sendto_checks_its_arguments_like_asyncio(loop):
    async def main():
        _, server = await loop.create_datagram_endpoint(lambda: Endpoint(loop), local_addr=("127.0.0.1", 0))
        server_addr = server.transport.get_extra_info("sockname")
        client_tr, client = await loop.create_datagram_endpoint(lambda: Endpoint(loop), remote_addr=server_addr)
        with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'str'"):
            client_tr.sendto("text")
        with pytest.raises(ValueError, match=r"Invalid address: must be None or \('127.0.0.1', \d+\)"):
            client_tr.sendto(b"x", ("127.0.0.1", 1))
        await close_all(client, server)

    run(loop, main())


def test_error_received_on_refused_port_keeps_the_endpoint_open(loop):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            closed_addr = probe.getsockname()
        tr, client = await loop.create_datagram_endpoint(lambda: Endpoint(loop), remote_addr=closed_addr)
        tr.sendto(b"anyone?")
        await client.events(1)
        # The ICMP error surfaces on the next send or receive, depending on timing.
        if not client.errors:
            tr.sendto(b"again")
            await client.events(2)
        assert isinstance(client.errors[0], ConnectionRefusedError)
        assert not tr.is_closing()
        await close_all(client)

    run(loop, main())


def test_unix_datagram_addresses(loop):
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            server_path = os.path.join(tmp, "server")
            client_path = os.path.join(tmp, "client")
            server_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            server_sock.bind(server_path)
            _, server = await loop.create_datagram_endpoint(lambda: Endpoint(loop), sock=server_sock)
            client_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            client_sock.bind(client_path)
            client_tr, client = await loop.create_datagram_endpoint(lambda: Endpoint(loop), sock=client_sock)
            client_tr.sendto(b"hi", server_path)
            await server.events(1)
            assert server.received == [(b"hi", client_path)]
            server.transport.sendto(b"back", client_path)
            await client.events(1)
            assert client.received == [(b"back", server_path)]
            await close_all(client, server)

    run(loop, main())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux abstract namespace")
def test_unix_datagram_abstract_and_unnamed_senders(loop):
    async def main():
        name = b"\0ferroloop-test-" + os.urandom(6).hex().encode()
        server_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server_sock.bind(name)
        _, server = await loop.create_datagram_endpoint(lambda: Endpoint(loop), sock=server_sock)
        abstract_sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        abstract_sender.bind(name + b"-client")
        unnamed_sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            abstract_sender.sendto(b"a", name)
            unnamed_sender.sendto(b"u", name)
            await server.events(2)
        finally:
            abstract_sender.close()
            unnamed_sender.close()
        by_data = dict(server.received)
        assert by_data[b"a"] == name + b"-client"
        # What the socket module reports for an unnamed sender, whatever that is.
        assert by_data[b"u"] == _unnamed_sender_address()
        await close_all(server)

    run(loop, main())


def _unnamed_sender_address():
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        name = b"\0ferroloop-probe-" + os.urandom(6).hex().encode()
        a.bind(name)
        b.sendto(b"x", name)
        return a.recvfrom(10)[1]
    finally:
        a.close()
        b.close()


def test_refused_datagrams_are_queued_in_order_with_flow_control(loop):
    async def main():
        with BoundPair() as (a, b):
            tr, proto = await loop.create_datagram_endpoint(lambda: Endpoint(loop), sock=a)
            tr.set_write_buffer_limits(high=4096)
            sent = [bytes([i % 256]) * 1000 for i in range(300)]
            for d in sent:
                tr.sendto(d)
            # The peer is not reading: the kernel refused some, which are queued whole.
            assert tr.get_write_buffer_size() > 4096
            assert proto.pauses == 1
            assert await drain(b, len(sent)) == sent
            assert tr.get_write_buffer_size() == 0
            assert proto.resumes == 1
            await close_all(proto)

    run(loop, main())


def test_close_with_queued_datagrams_sends_them_first(loop):
    async def main():
        with BoundPair() as (a, b):
            tr, proto = await loop.create_datagram_endpoint(lambda: Endpoint(loop), sock=a)
            sent = [os.urandom(500) for _ in range(200)]
            for d in sent:
                tr.sendto(d)
            assert tr.get_write_buffer_size() > 0
            tr.close()
            assert tr.is_closing()
            assert await drain(b, len(sent)) == sent
            assert await proto.lost is None

    run(loop, main())


def test_abort_drops_queued_datagrams(loop, request, is_ferroloop):
    if not is_ferroloop:
        request.applymarker(
            pytest.mark.xfail(reason="asyncio 3.11 clears the queue on abort but not its byte count", strict=False)
        )

    async def main():
        with BoundPair() as (a, _):
            tr, proto = await loop.create_datagram_endpoint(lambda: Endpoint(loop), sock=a)
            for _ in range(200):
                tr.sendto(b"x" * 500)
            assert tr.get_write_buffer_size() > 0
            tr.abort()
            assert tr.get_write_buffer_size() == 0
            assert await proto.lost is None

    run(loop, main())


def test_exception_in_datagram_received_goes_to_the_exception_handler(loop, handler_calls):
    class Failing(Endpoint):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            raise ValueError("bad datagram")

    async def main():
        with BoundPair() as (a, b):
            tr, proto = await loop.create_datagram_endpoint(lambda: Failing(loop), sock=a)
            b.sendto(b"one", a.getsockname())
            b.sendto(b"two", a.getsockname())
            await proto.events(2)
            # The endpoint stays open: the error was in a callback, not in the transport.
            assert not tr.is_closing()
            await close_all(proto)

    run(loop, main())
    assert len(handler_calls) == 2
    assert all(isinstance(c["exception"], ValueError) for c in handler_calls)


def test_sendto_after_close_on_an_unconnected_endpoint_is_dropped_quietly(loop, request, is_ferroloop, handler_calls):
    if not is_ferroloop:
        request.applymarker(
            pytest.mark.xfail(
                reason="asyncio 3.11 sends through its released socket and reports an AttributeError",
                strict=False,
            )
        )

    async def main():
        tr, proto = await loop.create_datagram_endpoint(lambda: Endpoint(loop), local_addr=("127.0.0.1", 0))
        target = tr.get_extra_info("sockname")
        tr.close()
        assert await proto.lost is None
        tr.sendto(b"late", target)
        await asyncio.sleep(0)

    run(loop, main())
    assert handler_calls == []
