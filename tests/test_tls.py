"""TLS record boundaries on the server side of `create_server(ssl=...)`.

The peer here is a hand-driven `ssl.SSLObject` over a plain socket, so each test chooses exactly
how the encrypted bytes arrive: a record cut in two, many records in one segment, data followed
by the peer's close_notify, records of the largest size. ferroloop's TLS protocol stops
decrypting when nothing decryptable is left instead of reading until `SSLWantReadError`, and asks
each read for one record's worth of plaintext at most; these are the cases where stopping too
early, or reading too little, would lose or delay data.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import types
from asyncio import sslproto

import pytest

utils = pytest.importorskip("test.test_asyncio.utils")

TIMEOUT = 10


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))


class Recorder(asyncio.Protocol):
    """Keeps what arrives, in order, and signals when `expected` bytes are in."""

    def __init__(self, loop, expected):
        self.events = []
        self.data = bytearray()
        self.expected = expected
        self.complete = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.events.append("data")
        self.data += data
        if len(self.data) >= self.expected and not self.complete.done():
            self.complete.set_result(None)

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


class SmallBuffers(asyncio.BufferedProtocol):
    """A `BufferedProtocol` whose buffer is smaller than one record.

    The buffer is a memoryview: asyncio's TLS protocol slices it to fill the rest, and slicing a
    bytearray would fill a copy.
    """

    def __init__(self, loop, expected, size=7):
        self.buffer = memoryview(bytearray(size))
        self.data = bytearray()
        self.expected = expected
        self.complete = loop.create_future()
        self.lost = loop.create_future()

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.data += self.buffer[:nbytes]
        if len(self.data) >= self.expected and not self.complete.done():
            self.complete.set_result(None)

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class Peer:
    """A TLS client whose every encrypted byte the test sends by hand."""

    def __init__(self, loop, sock):
        self.loop = loop
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = utils.simple_client_sslcontext().wrap_bio(self.incoming, self.outgoing)

    @classmethod
    async def connect(cls, loop, port):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        peer = cls(loop, sock)
        while True:
            try:
                peer.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await peer.flush()
                chunk = await loop.sock_recv(sock, 65536)
                assert chunk, "server closed during the handshake"
                peer.incoming.write(chunk)
        await peer.flush()
        return peer

    async def flush(self):
        data = self.outgoing.read()
        if data:
            await self.loop.sock_sendall(self.sock, data)

    def encrypt(self, *messages):
        """The records for `messages`, one record each, not sent yet."""
        for message in messages:
            self.tls.write(message)
        return self.outgoing.read()

    def close_notify(self):
        """The close_notify alert, not sent yet."""
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.unwrap()
        return self.outgoing.read()


async def serve(loop, protocol):
    server = await loop.create_server(lambda: protocol, "127.0.0.1", 0, ssl=utils.simple_server_sslcontext())
    return server, server.sockets[0].getsockname()[1]


async def finish(server, peer, protocol):
    await peer.loop.sock_sendall(peer.sock, peer.close_notify())
    await protocol.lost
    peer.sock.close()
    server.close()
    await server.wait_closed()


def test_record_cut_in_two_is_delivered_when_its_second_half_arrives(loop):
    async def main():
        protocol = Recorder(loop, expected=11)
        server, port = await serve(loop, protocol)
        peer = await Peer.connect(loop, port)
        record = peer.encrypt(b"split apart")
        for cut in (3, len(record) // 2):
            await loop.sock_sendall(peer.sock, record[:cut])
            await asyncio.sleep(0.05)
            assert not protocol.data, "part of a record cannot be decrypted"
            await loop.sock_sendall(peer.sock, record[cut:])
            await protocol.complete
            assert bytes(protocol.data) == b"split apart"
            protocol.data.clear()
            protocol.complete = loop.create_future()
            record = peer.encrypt(b"split apart")
        await finish(server, peer, protocol)

    run(loop, main())


async def deliver_in_one_segment(loop, protocol, messages):
    """Sends `messages` as one record each, all in one `send()`; checks what `protocol` got."""
    expected = b"".join(messages)
    server, port = await serve(loop, protocol)
    peer = await Peer.connect(loop, port)
    await loop.sock_sendall(peer.sock, peer.encrypt(*messages))
    await protocol.complete
    assert bytes(protocol.data) == expected
    await finish(server, peer, protocol)


def test_many_records_in_one_segment_are_all_delivered(loop):
    messages = [f"message {i:03d};".encode() for i in range(200)]
    protocol = Recorder(loop, expected=sum(map(len, messages)))
    run(loop, deliver_in_one_segment(loop, protocol, messages))


def test_data_and_close_notify_in_one_segment_give_data_then_eof(loop):
    async def main():
        protocol = Recorder(loop, expected=10)
        server, port = await serve(loop, protocol)
        peer = await Peer.connect(loop, port)
        await loop.sock_sendall(peer.sock, peer.encrypt(b"last", b" words") + peer.close_notify())
        assert await protocol.lost is None
        assert bytes(protocol.data) == b"last words"
        assert protocol.events[-2:] == ["eof", "lost"]
        assert set(protocol.events[:-2]) == {"data"}
        peer.sock.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("records", [1, 40])
def test_buffered_protocol_smaller_than_a_record_gets_every_byte(loop, records):
    messages = [bytes(range(i, i + 97)) for i in range(records)]
    protocol = SmallBuffers(loop, expected=sum(map(len, messages)))
    run(loop, deliver_in_one_segment(loop, protocol, messages))


def test_full_size_records_in_one_segment_are_delivered_whole(loop):
    # OpenSSL cuts a write into records of 16 KiB, the most one record carries and the most
    # ferroloop's protocol asks one read for: six full records and a short one.
    message = bytes(i % 251 for i in range(100 * 1024 + 5))
    protocol = Recorder(loop, expected=len(message))
    run(loop, deliver_in_one_segment(loop, protocol, [message]))


def test_ferroloop_tls_protocol_runs_asyncios_own_code_with_the_same_states():
    # ferroloop's protocol reuses every method of asyncio's it does not override, code object
    # and all, over a copy of `asyncio.sslproto`'s namespace in which only the two state enums
    # are replaced by plain namespaces of the same members (`ferroloop/_tls.py` says why).
    tls = pytest.importorskip("ferroloop._tls")
    enums = {name: getattr(sslproto, name) for name in ("SSLProtocolState", "AppProtocolState")}
    overridden = {"_do_read__copied", "_do_read__buffered"}
    inherited = [
        (name, function)
        for name, function in vars(sslproto.SSLProtocol).items()
        if isinstance(function, types.FunctionType) and name not in overridden
    ]
    assert len(inherited) > 30
    for name, function in inherited:
        copy = getattr(tls.TlsProtocol, name)
        assert copy.__code__ is function.__code__, name
        assert copy.__defaults__ == function.__defaults__, name
        namespace = copy.__globals__
        assert {k for k, v in vars(sslproto).items() if namespace.get(k) is not v} <= set(enums), name
        for enum_name, states in enums.items():
            assert {member.name: getattr(namespace[enum_name], member.name) for member in states} == {
                member.name: member for member in states
            }, name
