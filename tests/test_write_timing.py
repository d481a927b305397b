"""When a stream transport's writes reach the peer, and in what order.

asyncio's socket transport hands each `write()` to the kernel at once. ferroloop holds small
writes made by one of the loop's callbacks until it returns and sends them together (see
`transport/socket.rs`). Each test here checks, on both loops, a case where that could show:
the order of writes of different kinds and sizes, `get_write_buffer_size()` right after a write,
a close, a `write_eof()`, an `abort()`, a stop or an interrupt in the same callback, a write made
while the loop is not running, flow control, many transports written in one turn, a write to a
reset connection followed by `drain()`, a signal handler that writes and interrupts the loop,
and a `fork()` right after a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import threading

import pytest

WAIT = 10.0


class Sink(asyncio.Protocol):
    """Keeps what arrives; `paused` tells whether the transport asked it to stop writing."""

    def __init__(self, loop):
        self.transport = None
        self.data = bytearray()
        self.paused = False
        self.eof = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.eof.set_result(None)
        return True  # stay open for writing (half-close)

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.fixture
def raw_peer(loop):
    """A transport over one end of a socket pair, and the other end as a plain blocking socket."""
    ours, theirs = socket.socketpair()
    theirs.settimeout(WAIT)
    protocol = Sink(loop)
    transport, _ = loop.run_until_complete(loop.connect_accepted_socket(lambda: protocol, ours))
    yield transport, protocol, theirs
    transport.close()
    loop.run_until_complete(asyncio.wait_for(protocol.lost, WAIT))
    theirs.close()


def receive_exactly(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


def run_callback(loop, callback):
    """Runs `callback` as a loop callback, then lets the loop run one more."""
    done = loop.create_future()

    def step():
        try:
            callback()
        finally:
            loop.call_soon(done.set_result, None)

    loop.call_soon(step)
    loop.run_until_complete(asyncio.wait_for(done, WAIT))


def test_writes_of_every_kind_and_size_in_one_callback_arrive_in_order(loop, raw_peer):
    transport, _, peer = raw_peer
    large = os.urandom(300 * 1024)  # above the high-water mark: asyncio buffers part of it
    mutable = bytearray(b"mutable")
    expected = b"a" + b"mutable" + large + b"view" + b"x" * 20_000 + b"j" + b"k"

    def write_all():
        transport.write(b"a")
        transport.write(mutable)
        mutable[:] = b"changed after write()"  # what was written is what it held then
        transport.write(large)
        transport.write(memoryview(b"..view")[2:])
        transport.write(b"x" * 20_000)
        transport.writelines([b"j", bytearray(b"k")])

    run_callback(loop, write_all)

    async def until_sent():
        while transport.get_write_buffer_size():
            await asyncio.sleep(0.001)

    # The peer reads in a thread while the loop sends what the kernel did not take at once.
    reader = loop.run_in_executor(None, receive_exactly, peer, len(expected))
    loop.run_until_complete(asyncio.wait_for(until_sent(), WAIT))
    assert loop.run_until_complete(asyncio.wait_for(reader, WAIT)) == expected


def test_write_buffer_size_right_after_a_small_write_is_zero(loop, raw_peer):
    transport, _, peer = raw_peer
    sizes = []

    def write_and_measure():
        transport.write(b"hello")
        sizes.append(transport.get_write_buffer_size())

    run_callback(loop, write_and_measure)
    assert sizes == [0]
    assert receive_exactly(peer, 5) == b"hello"


def test_write_then_close_in_one_callback_delivers_everything_then_eof(loop, raw_peer):
    transport, protocol, peer = raw_peer

    def write_and_close():
        transport.write(b"last ")
        transport.write(b"words")
        transport.close()

    run_callback(loop, write_and_close)
    assert loop.run_until_complete(asyncio.wait_for(protocol.lost, WAIT)) is None
    assert receive_exactly(peer, 10) == b"last words"
    assert peer.recv(1) == b""


def test_write_then_write_eof_delivers_then_half_closes(loop, raw_peer):
    transport, protocol, peer = raw_peer

    def write_and_shut():
        transport.write(b"request")
        transport.write_eof()

    run_callback(loop, write_and_shut)
    assert receive_exactly(peer, 7) == b"request"
    assert peer.recv(1) == b""
    peer.sendall(b"reply")
    peer.shutdown(socket.SHUT_WR)
    loop.run_until_complete(asyncio.wait_for(protocol.eof, WAIT))
    assert bytes(protocol.data) == b"reply"


def test_write_then_abort_in_one_callback_still_delivers_the_write(loop, raw_peer):
    # asyncio hands the write to the kernel before abort() runs; abort() drops only what is
    # buffered.
    transport, protocol, peer = raw_peer

    def write_and_abort():
        transport.write(b"goodbye")
        transport.abort()

    run_callback(loop, write_and_abort)
    loop.run_until_complete(asyncio.wait_for(protocol.lost, WAIT))
    assert receive_exactly(peer, 7) == b"goodbye"


@pytest.mark.parametrize("ending", ["stop", "KeyboardInterrupt"])
def test_writes_of_a_callback_that_ends_the_loop_are_sent(loop, raw_peer, ending):
    transport, _, peer = raw_peer

    def write_and_end():
        transport.write(b"sent ")
        transport.write(b"anyway")
        if ending == "stop":
            loop.stop()
        else:
            raise KeyboardInterrupt

    loop.call_soon(write_and_end)
    if ending == "stop":
        loop.run_forever()
    else:
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
    # The loop is not running any more: only what it sent can arrive.
    assert receive_exactly(peer, 11) == b"sent anyway"


def test_write_while_the_loop_is_not_running_is_sent_at_once(loop, raw_peer):
    transport, _, peer = raw_peer
    transport.write(b"no loop running")
    assert transport.get_write_buffer_size() == 0
    assert receive_exactly(peer, 15) == b"no loop running"


def test_small_writes_past_the_high_water_mark_pause_the_protocol_and_stay_bounded(loop, raw_peer):
    transport, protocol, peer = raw_peer
    transport.set_write_buffer_limits(high=4096)
    chunk = b"z" * 1024
    written = 0

    def write_until_paused():
        nonlocal written
        # The peer reads nothing: the kernel's buffers fill, then the transport's.
        while not protocol.paused and written < 64 * 1024 * 1024:
            transport.write(chunk)
            written += len(chunk)
            assert transport.get_write_buffer_size() <= 4096 + len(chunk)

    run_callback(loop, write_until_paused)
    assert protocol.paused
    assert 4096 < transport.get_write_buffer_size() <= 4096 + len(chunk)

    async def until_resumed():
        while protocol.paused:
            await asyncio.sleep(0.001)

    reader = loop.run_in_executor(None, receive_exactly, peer, written)
    loop.run_until_complete(asyncio.wait_for(until_resumed(), WAIT))
    assert loop.run_until_complete(asyncio.wait_for(reader, WAIT)) == b"z" * written


def test_one_callback_writing_to_many_transports_reaches_every_peer(loop):
    pairs = [socket.socketpair() for _ in range(20)]
    protocols = [Sink(loop) for _ in pairs]
    transports = []
    for (ours, theirs), protocol in zip(pairs, protocols):
        theirs.settimeout(WAIT)
        transport, _ = loop.run_until_complete(loop.connect_accepted_socket(lambda p=protocol: p, ours))
        transports.append(transport)

    def broadcast():
        for i, transport in enumerate(transports):
            transport.write(b"to %d;" % i)
            transport.write(b"end")

    run_callback(loop, broadcast)
    try:
        for i, (_, theirs) in enumerate(pairs):
            expected = b"to %d;end" % i
            assert receive_exactly(theirs, len(expected)) == expected
    finally:
        for transport in transports:
            transport.close()
        for protocol in protocols:
            loop.run_until_complete(asyncio.wait_for(protocol.lost, WAIT))
        for _, theirs in pairs:
            theirs.close()


def test_drain_after_writes_to_a_reset_connection_raises_each_time(loop):
    # asyncio's write() sends at once, fails, and closes the transport: is_closing() is true at
    # once, so drain() gives the loop a turn and raises. A deferred write must not hide that.
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    outcomes = []

    async def main():
        _, writer = await asyncio.open_connection(sock=client)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()  # a reset, which reaches the client's socket before the loop's next turn
        for _ in range(3):
            writer.write(b"x")
            try:
                await writer.drain()
                outcomes.append("drained")
            except ConnectionError:
                outcomes.append("raised")
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    assert outcomes == ["raised"] * 3


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
def test_a_write_from_a_signal_handler_that_interrupts_the_loop_is_sent_and_so_are_later_ones(loop, raw_peer):
    transport, _, peer = raw_peer

    def handler(signum, frame):
        transport.write(b"bye")
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, handler)
    # Sent to the main thread while the loop waits in its poll, with nothing else to do.
    timer = threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1))
    guard = loop.call_later(WAIT, loop.stop)
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
    finally:
        timer.join()
        guard.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert receive_exactly(peer, 3) == b"bye"
    transport.write(b"+more")  # the loop is not running: sent at once
    assert receive_exactly(peer, 5) == b"+more"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_write_right_before_fork_in_a_callback_reaches_the_peer_once(loop, raw_peer):
    # asyncio sent the write before the fork; a child that returns to its copy of the loop must
    # not send it again.
    transport, _, peer = raw_peer
    parent = os.getpid()

    def write_and_fork():
        transport.write(b"once")
        pid = os.fork()
        if pid == 0:
            return  # the child goes back to its loop, then leaves below
        os.waitpid(pid, 0)

    try:
        run_callback(loop, write_and_fork)
    finally:
        if os.getpid() != parent:
            os._exit(0)
    assert receive_exactly(peer, 4) == b"once"
    peer.settimeout(0.3)
    with pytest.raises(TimeoutError):
        peer.recv(100)
