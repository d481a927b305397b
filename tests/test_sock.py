"""The loop's low-level socket coroutines: sock_recv*, sock_send*, sock_connect, sock_accept.

Every test runs on ferroloop and on the stdlib asyncio loop (the oracle) through the ``loop``
fixture of conftest.py. All traffic stays on the loopback interface or on Unix sockets in a
temporary directory.
"""

import asyncio
import gc
import os
import socket
import struct
import sys
import tempfile
import warnings
import weakref

import pytest

WAIT = 10.0  # generous bound: an operation that should complete must not hang the suite

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="added to the loop API in Python 3.11")


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback")


class Sockets:
    """Creates non-blocking sockets for a test and closes every one of them afterwards."""

    def __init__(self) -> None:
        self._all = []
        self._dir = None

    def track(self, sock: socket.socket) -> socket.socket:
        self._all.append(sock)
        return sock

    def new(self, family=socket.AF_INET, type=socket.SOCK_STREAM, blocking=False) -> socket.socket:
        sock = self.track(socket.socket(family, type))
        sock.setblocking(blocking)
        return sock

    def pair(self, blocking=False):
        a, b = socket.socketpair()
        for s in (a, b):
            self.track(s)
            s.setblocking(blocking)
        return a, b

    def listener(self, family=socket.AF_INET, host="127.0.0.1") -> socket.socket:
        sock = self.new(family)
        sock.bind((host, 0))
        sock.listen(8)
        return sock

    def udp(self, family=socket.AF_INET, host="127.0.0.1") -> socket.socket:
        sock = self.new(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        return sock

    def unix_path(self, name: str) -> str:
        # A short directory of our own: Unix socket paths are limited to ~107 bytes.
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="fl-sock-")
        return os.path.join(self._dir.name, name)

    def close(self) -> None:
        for sock in self._all:
            sock.close()
        if self._dir is not None:
            self._dir.cleanup()


@pytest.fixture
def socks(loop):
    registry = Sockets()
    yield registry
    registry.close()


PAYLOAD_4M = bytes(range(256)) * (4 * 1024 * 1024 // 256)


async def recv_exactly(loop, sock, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = await loop.sock_recv(sock, min(remaining, 256 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


async def tcp_connection(loop, socks, family=socket.AF_INET, host="127.0.0.1"):
    """A connected (client, server-side) pair of non-blocking TCP sockets."""
    listener = socks.listener(family, host)
    client = socks.new(family)
    (conn, _), _ = await asyncio.gather(loop.sock_accept(listener), loop.sock_connect(client, listener.getsockname()))
    socks.track(conn)
    return client, conn


# --------------------------------------------------------------------------
# sock_recv / sock_recv_into
# --------------------------------------------------------------------------


def test_sock_recv_data_already_available(loop, socks):
    a, b = socks.pair()
    b.send(b"ready")
    assert run(loop, loop.sock_recv(a, 100)) == b"ready"


def test_sock_recv_of_zero_bytes_returns_empty_without_waiting(loop, socks):
    # socket.recv(0) answers b'' at once; on an empty Unix socket the kernel itself would say
    # "try again" forever.
    a, _b = socks.pair()
    assert run(loop, asyncio.wait_for(loop.sock_recv(a, 0), 5)) == b""


def test_sock_recv_waits_for_data(loop, socks):
    a, b = socks.pair()

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.02)
        assert not task.done()
        b.send(b"late")
        return await task

    assert run(loop, main()) == b"late"


def test_sock_recv_that_waited_leaves_no_reader_behind(loop, socks):
    a, b = socks.pair()

    async def main():
        loop.call_later(0.01, b.send, b"late")
        assert await loop.sock_recv(a, 10) == b"late"

    run(loop, main())
    assert loop.remove_reader(a) is False
    with pytest.raises(KeyError):
        loop._selector.get_key(a.fileno())


def test_add_reader_after_sock_recv_gets_the_readiness(loop, socks):
    a, b = socks.pair()

    async def main():
        loop.call_later(0.01, b.send, b"first")
        assert await loop.sock_recv(a, 10) == b"first"
        readable = loop.create_future()
        loop.add_reader(a, lambda: readable.done() or readable.set_result(a.recv(10)))
        b.send(b"second")
        assert await readable == b"second"
        assert loop.remove_reader(a) is True

    run(loop, main())


def test_sock_recv_in_a_loop_on_one_socket_gets_every_message(loop, socks):
    a, b = socks.pair()

    async def main():
        got = []
        for i in range(50):
            loop.call_soon(b.send, b"%02d" % i)
            got.append(await loop.sock_recv(a, 2))
        return got

    assert run(loop, main()) == [b"%02d" % i for i in range(50)]


def test_sock_recv_on_a_new_socket_with_a_reused_fd_number_is_woken(loop, socks):
    """A socket closed after a receive that waited frees its fd number; a new socket given the
    same number must still be watched for real (the kernel dropped the old registration)."""
    a, b = socks.pair()

    async def main():
        loop.call_later(0.01, b.send, b"one")
        assert await loop.sock_recv(a, 10) == b"one"
        number = a.fileno()
        a.close()
        b.close()
        c, d = socks.pair()
        if c.fileno() != number:
            c, d = d, c
        assert c.fileno() == number  # the lowest free number goes to one of the new pair
        loop.call_later(0.01, d.send, b"two")
        assert await loop.sock_recv(c, 10) == b"two"

    run(loop, main())


def test_a_socket_dropped_after_sock_recv_is_collected(loop, socks):
    """The loop keeps no strong reference to a socket it received from (the program's dropping
    it closes it, as with asyncio)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    socks.track(b)

    async def main(sock):
        loop.call_later(0.01, b.send, b"x")
        assert await loop.sock_recv(sock, 10) == b"x"

    run(loop, main(a))
    ref = weakref.ref(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del a
        gc.collect()
    assert ref() is None


def test_sock_recv_cancelled_then_called_again_gets_the_data(loop, socks):
    a, b = socks.pair()

    async def main():
        task = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.remove_reader(a) is False
        loop.call_later(0.01, b.send, b"after")
        assert await loop.sock_recv(a, 10) == b"after"

    run(loop, main())


def test_sock_recv_calls_a_patched_or_overridden_recv(loop, socks, monkeypatch):
    """Code that wraps socket.recv (class patches, subclasses) must see its method called, both
    for data that is already there and after a wait."""
    calls = []
    original = socket.socket.recv

    def spy(self, n, *args):
        calls.append(n)
        return original(self, n, *args)

    monkeypatch.setattr(socket.socket, "recv", spy)
    a, b = socks.pair()
    b.send(b"now")
    assert run(loop, loop.sock_recv(a, 10)) == b"now"

    async def later():
        task = asyncio.ensure_future(loop.sock_recv(a, 20))
        await asyncio.sleep(0.01)
        b.send(b"later")
        return await task

    assert run(loop, later()) == b"later"
    assert calls[0] == 10 and calls[-1] == 20


def test_sock_recv_errors_surface_as_os_errors(loop, socks):
    listener = socks.track(socket.create_server(("127.0.0.1", 0)))
    a = socks.track(socket.create_connection(listener.getsockname()))
    b = socks.track(listener.accept()[0])
    a.setblocking(False)
    # SO_LINGER with a zero timeout makes close() abortive: the peer gets a reset.
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        b.close()
        return await task

    with pytest.raises(ConnectionResetError):
        run(loop, main())


def test_sock_recv_respects_size(loop, socks):
    a, b = socks.pair()
    b.send(b"0123456789")
    assert run(loop, loop.sock_recv(a, 4)) == b"0123"
    assert run(loop, loop.sock_recv(a, 100)) == b"456789"


def test_sock_recv_eof_returns_empty(loop, socks):
    a, b = socks.pair()

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        b.close()
        return await task

    assert run(loop, main()) == b""


def test_sock_recv_into_bytearray(loop, socks):
    a, b = socks.pair()

    async def main():
        buf = bytearray(16)
        task = asyncio.ensure_future(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0)
        b.send(b"into")
        nbytes = await task
        return nbytes, bytes(buf[:nbytes])

    assert run(loop, main()) == (4, b"into")


def test_sock_recv_into_memoryview_slice(loop, socks):
    a, b = socks.pair()
    b.send(b"abcdefgh")
    buf = bytearray(b"........")
    view = memoryview(buf)[2:5]
    assert run(loop, loop.sock_recv_into(a, view)) == 3
    view.release()
    assert buf == b"..abc..."
    assert run(loop, loop.sock_recv(a, 100)) == b"defgh"


def test_concurrent_recvs_on_different_sockets(loop, socks):
    pairs = [socks.pair() for _ in range(3)]

    async def main():
        tasks = [asyncio.ensure_future(loop.sock_recv(a, 100)) for a, _ in pairs]
        await asyncio.sleep(0)
        for i, (_, b) in reversed(list(enumerate(pairs))):
            b.send(f"to {i}".encode())
        return await asyncio.gather(*tasks)

    assert run(loop, main()) == [b"to 0", b"to 1", b"to 2"]


async def _transport_on(loop, sock):
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
    return transport


def test_sock_recv_that_must_wait_refuses_a_transports_fd(loop, socks):
    a, _ = socks.pair()
    transport = run(loop, _transport_on(loop, a))
    try:
        with pytest.raises(RuntimeError, match="is used by transport"):
            run(loop, loop.sock_recv(a, 10))
    finally:
        transport.close()
        run(loop, asyncio.sleep(0))


def test_sock_recv_refuses_a_transports_fd_after_earlier_receives(loop, socks):
    """Earlier receives leave nothing behind that lets a later one share a transport's fd, even
    one whose reading is paused (and so has no reader installed)."""
    a, b = socks.pair()

    async def main():
        for i in range(3):
            waiting = asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            b.send(f"msg {i}".encode())
            assert await waiting == f"msg {i}".encode()
        transport = await _transport_on(loop, a)
        transport.pause_reading()
        try:
            with pytest.raises(RuntimeError, match="is used by transport"):
                await loop.sock_recv(a, 10)
        finally:
            transport.close()
            await asyncio.sleep(0)

    run(loop, main())


def test_sock_recv_with_data_ready_does_not_check_transports(loop, socks):
    """As asyncio: only a receive that has to wait needs the fd to itself."""
    a, b = socks.pair()
    transport = run(loop, _transport_on(loop, a))
    transport.pause_reading()
    b.send(b"here")
    try:
        assert run(loop, loop.sock_recv(a, 10)) == b"here"
    finally:
        transport.close()
        run(loop, asyncio.sleep(0))


def test_watching_a_closing_transports_fd_is_allowed(loop, socks):
    a, _ = socks.pair()
    transport = run(loop, _transport_on(loop, a))
    fd = a.fileno()
    with pytest.raises(RuntimeError, match="is used by transport"):
        loop.add_reader(fd, lambda: None)
    transport.pause_reading()
    transport.close()  # closing, not yet closed: the check lets the fd go
    try:
        loop.add_reader(fd, lambda: None)
        assert loop.remove_reader(fd)
    finally:
        run(loop, asyncio.sleep(0))


def test_sock_recv_of_an_impossible_size_raises_memory_error_or_returns_the_data(loop, socks):
    """Never an abort: asyncio's socket.recv(n) allocates n bytes first (a MemoryError where the
    system refuses; where it overcommits, the data)."""
    a, b = socks.pair()
    b.send(b"x")
    try:
        got = run(loop, loop.sock_recv(a, 2**40))
    except MemoryError:
        pass
    else:
        assert got == b"x"


def test_watching_an_invalid_file_object_raises_value_error(loop):
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.add_reader(object(), lambda: None)


# --------------------------------------------------------------------------
# cancellation
# --------------------------------------------------------------------------


def test_cancelled_sock_recv_leaves_no_reader(loop, socks):
    a, b = socks.pair()

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        # Nothing is registered for the fd any more ...
        assert loop.remove_reader(a) is False
        # ... and no data was consumed by the cancelled receive.
        b.send(b"after cancel")
        return await loop.sock_recv(a, 100)

    assert run(loop, main()) == b"after cancel"


def test_add_reader_after_cancelled_sock_recv(loop, socks):
    a, b = socks.pair()

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        got = loop.create_future()

        def on_readable():
            loop.remove_reader(a)
            got.set_result(a.recv(100))

        loop.add_reader(a, on_readable)
        b.send(b"plain reader")
        return await got

    assert run(loop, main()) == b"plain reader"


def test_cancelled_sock_accept_leaves_no_reader(loop, socks):
    listener = socks.listener()

    async def main():
        task = asyncio.ensure_future(loop.sock_accept(listener))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        assert task.cancelled()
        assert loop.remove_reader(listener) is False
        client = socks.new()
        (conn, _), _ = await asyncio.gather(
            loop.sock_accept(listener), loop.sock_connect(client, listener.getsockname())
        )
        socks.track(conn)
        return conn.getpeername() == client.getsockname()

    assert run(loop, main()) is True


# --------------------------------------------------------------------------
# sock_sendall
# --------------------------------------------------------------------------


def test_sock_sendall_small(loop, socks):
    a, b = socks.pair()
    assert run(loop, loop.sock_sendall(a, b"hi there")) is None
    assert b.recv(100) == b"hi there"


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_sock_sendall_buffer_types(loop, socks, kind):
    a, b = socks.pair()
    run(loop, loop.sock_sendall(a, kind(b"buffer protocol")))
    assert b.recv(100) == b"buffer protocol"


def test_sock_sendall_empty(loop, socks):
    a, b = socks.pair()
    assert run(loop, loop.sock_sendall(a, b"")) is None
    with pytest.raises(BlockingIOError):
        b.recv(100)


def test_sock_sendall_large_socketpair(loop, socks):
    a, b = socks.pair()

    async def main():
        # 4 MiB is far more than the socket buffers hold, so sendall must wait for writability
        # while the receiving task drains the other end.
        receiver = asyncio.ensure_future(recv_exactly(loop, b, len(PAYLOAD_4M)))
        await loop.sock_sendall(a, PAYLOAD_4M)
        return await receiver

    assert run(loop, main()) == PAYLOAD_4M


def test_sock_sendall_large_tcp(loop, socks):
    async def main():
        client, server = await tcp_connection(loop, socks)
        receiver = asyncio.ensure_future(recv_exactly(loop, server, len(PAYLOAD_4M)))
        await loop.sock_sendall(client, PAYLOAD_4M)
        client.shutdown(socket.SHUT_WR)
        data = await receiver
        assert await loop.sock_recv(server, 10) == b""
        return data

    assert run(loop, main()) == PAYLOAD_4M


def test_sock_sendall_waits_until_reader_drains(loop, socks):
    a, b = socks.pair()

    async def main():
        sending = asyncio.ensure_future(loop.sock_sendall(a, PAYLOAD_4M))
        await asyncio.sleep(0.05)
        assert not sending.done()  # the buffers are full and nobody reads yet
        data = await recv_exactly(loop, b, len(PAYLOAD_4M))
        await sending
        return data

    assert run(loop, main()) == PAYLOAD_4M


def test_sock_sendall_to_closed_peer_raises(loop, socks):
    a, b = socks.pair()
    b.close()
    with pytest.raises(BrokenPipeError):
        run(loop, loop.sock_sendall(a, b"nobody listens"))


def test_sock_sendall_calls_a_patched_send(loop, socks, monkeypatch):
    calls = []
    original = socket.socket.send

    def spy(self, data, *args):
        calls.append(bytes(data))
        return original(self, data, *args)

    monkeypatch.setattr(socket.socket, "send", spy)
    a, b = socks.pair()
    run(loop, loop.sock_sendall(a, b"watched"))
    assert calls == [b"watched"]
    assert b.recv(100) == b"watched"


# --------------------------------------------------------------------------
# sock_recv / sock_sendall behave as the coroutines asyncio defines
# --------------------------------------------------------------------------


def test_sock_recv_and_sendall_calls_are_coroutines_for_create_task(loop, socks):
    a, b = socks.pair()

    async def main():
        send = loop.sock_sendall(b, b"via tasks")
        recv = loop.sock_recv(a, 100)
        assert asyncio.iscoroutine(send) and asyncio.iscoroutine(recv)
        receiving = loop.create_task(recv)
        await loop.create_task(send)
        return await receiving

    assert run(loop, main()) == b"via tasks"


def test_sock_recv_that_is_never_awaited_reads_nothing(loop, socks):
    a, b = socks.pair()
    b.send(b"still there")
    unawaited = loop.sock_recv(a, 100)
    unawaited.close()
    assert run(loop, loop.sock_recv(a, 100)) == b"still there"


def test_sock_sendall_that_is_never_awaited_sends_nothing(loop, socks):
    a, b = socks.pair()
    unawaited = loop.sock_sendall(a, b"never sent")
    unawaited.close()
    with pytest.raises(BlockingIOError):
        b.recv(100)


def test_sock_recv_driven_by_hand_returns_through_stop_iteration(loop, socks):
    a, b = socks.pair()
    b.send(b"by hand")
    call = loop.sock_recv(a, 100)
    with pytest.raises(StopIteration) as stop:
        call.send(None)
    assert stop.value.value == b"by hand"
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        call.send(None)


def test_sock_recv_refuses_a_first_send_other_than_none(loop, socks):
    a, _ = socks.pair()
    call = loop.sock_recv(a, 100)
    with pytest.raises(TypeError, match="just-started coroutine"):
        call.send("value")
    call.close()


def test_sock_recv_awaited_twice_raises(loop, socks):
    a, b = socks.pair()
    b.send(b"once")

    async def main():
        call = loop.sock_recv(a, 100)
        assert await call == b"once"
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await call

    run(loop, main())


def test_exception_thrown_into_a_waiting_sock_recv_propagates(loop, socks):
    a, _ = socks.pair()

    async def main():
        call = loop.sock_recv(a, 100)
        waited_for = call.send(None)
        assert isinstance(waited_for, asyncio.Future) and not waited_for.done()
        with pytest.raises(ValueError, match="thrown in"):
            call.throw(ValueError("thrown in"))
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            call.send(None)
        waited_for.cancel()

    run(loop, main())


def test_throwing_a_non_exception_into_a_waiting_sock_recv_ends_it_with_type_error(loop, socks):
    a, _ = socks.pair()

    async def main():
        call = loop.sock_recv(a, 100)
        waited_for = call.send(None)
        with pytest.raises(TypeError, match="exceptions must be classes"):
            call.throw(42)
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            call.send(None)
        waited_for.cancel()

    run(loop, main())


def test_closing_a_waiting_sock_recv_ends_it(loop, socks):
    a, b = socks.pair()

    async def main():
        call = loop.sock_recv(a, 100)
        waited_for = call.send(None)
        call.close()
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            call.send(None)
        waited_for.cancel()
        await asyncio.sleep(0)
        b.send(b"for the next receive")
        return await loop.sock_recv(a, 100)

    assert run(loop, main()) == b"for the next receive"


def test_sock_recv_timed_out_by_wait_for_leaves_the_data_for_the_next_receive(loop, socks):
    a, b = socks.pair()

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 100), 0.01)
        b.send(b"after the timeout")
        return await loop.sock_recv(a, 100)

    assert run(loop, main()) == b"after the timeout"


@pytest.mark.parametrize(("size", "error"), [("ten", TypeError), (-1, ValueError), (1.5, TypeError)])
def test_sock_recv_with_an_invalid_size_raises_as_socket_recv(loop, socks, size, error):
    a, b = socks.pair()
    b.send(b"x")
    with pytest.raises(error):
        run(loop, loop.sock_recv(a, size))


def test_task_repr_names_the_sock_method_it_runs(loop, socks):
    a, b = socks.pair()

    async def main():
        task = loop.create_task(loop.sock_recv(a, 100))
        assert "sock_recv()" in repr(task)
        await asyncio.sleep(0)
        assert "sock_recv()" in repr(task)
        b.send(b"done")
        return await task

    assert run(loop, main()) == b"done"


# --------------------------------------------------------------------------
# sock_connect / sock_accept (TCP)
# --------------------------------------------------------------------------


def test_sock_connect_and_accept_tcp(loop, socks):
    listener = socks.listener()
    client = socks.new()

    async def main():
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        assert await loop.sock_connect(client, listener.getsockname()) is None
        conn, address = await accepting
        socks.track(conn)
        return conn, address

    conn, address = run(loop, main())
    assert address == client.getsockname()
    assert conn.getpeername() == client.getsockname()
    assert conn.gettimeout() == 0.0  # accepted sockets come back non-blocking
    run(loop, loop.sock_sendall(conn, b"welcome"))
    assert run(loop, loop.sock_recv(client, 100)) == b"welcome"


def test_sock_accept_waits_for_a_client(loop, socks):
    listener = socks.listener()

    async def main():
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        await asyncio.sleep(0.02)
        assert not accepting.done()
        client = socks.new()
        await loop.sock_connect(client, listener.getsockname())
        conn, _ = await accepting
        socks.track(conn)
        return conn.getpeername() == client.getsockname()

    assert run(loop, main()) is True


def test_sock_connect_resolves_localhost(loop, socks):
    listener = socks.listener()
    port = listener.getsockname()[1]
    client = socks.new()

    async def main():
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(client, ("localhost", port))
        conn, _ = await accepting
        socks.track(conn)

    run(loop, main())
    assert client.getpeername() == ("127.0.0.1", port)


@needs_ipv6
def test_sock_connect_ipv6(loop, socks):
    async def main():
        client, conn = await tcp_connection(loop, socks, socket.AF_INET6, "::1")
        await loop.sock_sendall(client, b"v6")
        return await loop.sock_recv(conn, 10), client.getpeername()[0]

    assert run(loop, main()) == (b"v6", "::1")


def test_sock_connect_refused(loop, socks):
    # A bound socket that is not listening: connecting to its port is refused right away, and
    # holding it open keeps any other process from taking the port meanwhile.
    closed_port = socks.new()
    closed_port.bind(("127.0.0.1", 0))
    client = socks.new()
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.sock_connect(client, closed_port.getsockname()))


def test_sock_connect_refused_leaves_no_writer(loop, socks):
    closed_port = socks.new()
    closed_port.bind(("127.0.0.1", 0))
    client = socks.new()

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(client, closed_port.getsockname())
        await asyncio.sleep(0)
        return loop.remove_writer(client)

    assert run(loop, main()) is False


def test_sock_connect_refused_leaves_no_future_holding_the_error(loop, socks):
    # The error's traceback holds the frames it passed through; none of them may keep the future
    # that holds the error, or the two stay alive until a full collection (CPython gh-124859).
    closed_port = socks.new()
    closed_port.bind(("127.0.0.1", 0))
    client = socks.new()

    caught = []

    async def main():
        # Not returned: the task would then hold the error as its result.
        try:
            await loop.sock_connect(client, closed_port.getsockname())
        except ConnectionRefusedError as exc:
            caught.append(exc)

    run(loop, main())
    [exc] = caught
    assert isinstance(exc, ConnectionRefusedError)
    assert not [r for r in gc.get_referrers(exc) if isinstance(r, asyncio.Future)]


def test_many_sequential_connections(loop, socks):
    listener = socks.listener()

    async def main():
        for i in range(10):
            client = socks.new()
            (conn, _), _ = await asyncio.gather(
                loop.sock_accept(listener), loop.sock_connect(client, listener.getsockname())
            )
            socks.track(conn)
            await loop.sock_sendall(client, f"#{i}".encode())
            assert await loop.sock_recv(conn, 10) == f"#{i}".encode()

    run(loop, main())


# --------------------------------------------------------------------------
# Unix sockets
# --------------------------------------------------------------------------


def test_unix_stream_connect_accept(loop, socks):
    path = socks.unix_path("stream.sock")
    listener = socks.new(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(4)
    client = socks.new(socket.AF_UNIX)

    async def main():
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(client, path)
        conn, _ = await accepting
        socks.track(conn)
        await loop.sock_sendall(client, b"over unix")
        assert await loop.sock_recv(conn, 100) == b"over unix"
        receiver = asyncio.ensure_future(recv_exactly(loop, client, len(PAYLOAD_4M)))
        await loop.sock_sendall(conn, PAYLOAD_4M)
        return await receiver

    assert run(loop, main()) == PAYLOAD_4M
    assert client.getpeername() == path


def test_unix_connect_to_missing_path(loop, socks):
    client = socks.new(socket.AF_UNIX)
    with pytest.raises(FileNotFoundError):
        run(loop, loop.sock_connect(client, socks.unix_path("nobody-here.sock")))


@needs_311
def test_unix_datagram_sendto_recvfrom(loop, socks):
    server_path = socks.unix_path("server.dgram")
    client_path = socks.unix_path("client.dgram")
    server = socks.new(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(server_path)
    client = socks.new(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind(client_path)

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recvfrom(server, 100))
        await asyncio.sleep(0)
        assert await loop.sock_sendto(client, b"datagram", server_path) == 8
        return await receiving

    assert run(loop, main()) == (b"datagram", client_path)


# --------------------------------------------------------------------------
# UDP: sock_sendto / sock_recvfrom / sock_recvfrom_into
# --------------------------------------------------------------------------


@needs_311
def test_udp_roundtrip(loop, socks):
    server = socks.udp()
    client = socks.udp()

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recvfrom(server, 1024))
        await asyncio.sleep(0.01)
        assert not receiving.done()
        sent = await loop.sock_sendto(client, b"ping", server.getsockname())
        data, address = await receiving
        assert (sent, data, address) == (4, b"ping", client.getsockname())
        await loop.sock_sendto(server, data.upper(), address)
        return await loop.sock_recvfrom(client, 1024)

    assert run(loop, main()) == (b"PING", server.getsockname())


@needs_311
def test_udp_datagrams_keep_boundaries(loop, socks):
    server = socks.udp()
    client = socks.udp()

    async def main():
        for word in (b"one", b"two", b"three"):
            await loop.sock_sendto(client, word, server.getsockname())
        return [(await loop.sock_recvfrom(server, 1024))[0] for _ in range(3)]

    assert run(loop, main()) == [b"one", b"two", b"three"]


@needs_311
def test_sock_recvfrom_into(loop, socks):
    server = socks.udp()
    client = socks.udp()
    buf = bytearray(32)

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recvfrom_into(server, buf))
        await asyncio.sleep(0)
        await loop.sock_sendto(client, b"into the buffer", server.getsockname())
        return await receiving

    nbytes, address = run(loop, main())
    assert (nbytes, address) == (15, client.getsockname())
    assert bytes(buf[:nbytes]) == b"into the buffer"


@needs_311
def test_sock_recvfrom_into_nbytes(loop, socks):
    server = socks.udp()
    client = socks.udp()
    client.sendto(b"0123456789", server.getsockname())
    buf = bytearray(32)
    nbytes, address = run(loop, loop.sock_recvfrom_into(server, buf, 4))
    assert (nbytes, address) == (4, client.getsockname())
    assert bytes(buf[:4]) == b"0123"
    assert bytes(buf[4:]) == bytes(28)


@needs_311
def test_sock_sendto_resolves_nothing_for_numeric_address(loop, socks):
    server = socks.udp()
    client = socks.udp()
    host, port = server.getsockname()
    assert run(loop, loop.sock_sendto(client, b"numeric", (host, port))) == 7
    assert run(loop, loop.sock_recvfrom(server, 100)) == (b"numeric", client.getsockname())


@needs_ipv6
@needs_311
def test_udp_roundtrip_ipv6(loop, socks):
    server = socks.udp(socket.AF_INET6, "::1")
    client = socks.udp(socket.AF_INET6, "::1")

    async def main():
        await loop.sock_sendto(client, b"six", server.getsockname())
        data, address = await loop.sock_recvfrom(server, 100)
        return data, address[:2]

    assert run(loop, main()) == (b"six", client.getsockname()[:2])


# --------------------------------------------------------------------------
# blocking sockets are rejected in debug mode
# --------------------------------------------------------------------------

BLOCKING_CALLS = {
    "sock_recv": lambda loop, s, peer: loop.sock_recv(s, 10),
    "sock_recv_into": lambda loop, s, peer: loop.sock_recv_into(s, bytearray(10)),
    "sock_sendall": lambda loop, s, peer: loop.sock_sendall(s, b"x"),
    "sock_accept": lambda loop, s, peer: loop.sock_accept(s),
    "sock_connect": lambda loop, s, peer: loop.sock_connect(s, peer),
}
BLOCKING_CALLS_311 = {
    "sock_recvfrom": lambda loop, s, peer: loop.sock_recvfrom(s, 10),
    "sock_recvfrom_into": lambda loop, s, peer: loop.sock_recvfrom_into(s, bytearray(10)),
    "sock_sendto": lambda loop, s, peer: loop.sock_sendto(s, b"x", peer),
}


@pytest.mark.parametrize(
    "method",
    [*BLOCKING_CALLS, *(pytest.param(name, marks=needs_311) for name in BLOCKING_CALLS_311)],
)
def test_blocking_socket_rejected_in_debug_mode(loop, socks, method):
    loop.set_debug(True)
    call = {**BLOCKING_CALLS, **BLOCKING_CALLS_311}[method]
    if method in BLOCKING_CALLS_311:
        sock = socks.udp()
        peer = socks.udp().getsockname()
    else:
        sock = socks.listener() if method == "sock_accept" else socks.new()
        peer = socks.listener().getsockname()
    sock.setblocking(True)
    with pytest.raises(ValueError, match="the socket must be non-blocking"):
        run(loop, call(loop, sock, peer))


def test_socket_with_timeout_rejected_in_debug_mode(loop, socks):
    loop.set_debug(True)
    a, b = socks.pair()
    a.settimeout(1.0)  # a timeout makes the socket blocking internally
    b.send(b"data")
    with pytest.raises(ValueError, match="the socket must be non-blocking"):
        run(loop, loop.sock_recv(a, 10))


def test_non_blocking_socket_accepted_in_debug_mode(loop, socks):
    loop.set_debug(True)
    a, b = socks.pair()
    b.send(b"fine")
    assert run(loop, loop.sock_recv(a, 10)) == b"fine"
