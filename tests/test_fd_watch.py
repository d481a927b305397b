"""add_reader / add_writer / remove_reader / remove_writer on sockets and pipes.

Every test runs on ferroloop and on the stdlib asyncio loop (the oracle) through the ``loop``
fixture of conftest.py. Readiness is driven only by writes the test itself makes, so nothing here
depends on timing; ``run(loop, fut)`` merely bounds each wait so that a missed wakeup fails instead
of hanging.
"""

import asyncio
import errno
import os
import socket
import tempfile

import pytest

WAIT = 5.0  # generous bound for a wakeup that should be immediate


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


class FileNo:
    """The smallest "file object": anything with a fileno() method is accepted like an int fd."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


class Channel:
    """A one-way byte channel: ``rfd`` becomes readable when bytes are written to ``wfd``.

    Backed by a Unix socketpair or an os.pipe(); both ends are non-blocking, and os.read /
    os.write work on either kind, so the tests can treat them alike.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._socks = []
        if kind == "socketpair":
            self._socks = list(socket.socketpair())
            for sock in self._socks:
                sock.setblocking(False)
            self.rfd, self.wfd = (sock.fileno() for sock in self._socks)
        else:
            self.rfd, self.wfd = os.pipe()
            os.set_blocking(self.rfd, False)
            os.set_blocking(self.wfd, False)
        self._open = {self.rfd, self.wfd}

    def send(self, data: bytes) -> None:
        assert os.write(self.wfd, data) == len(data)

    def recv(self, n: int = 65536) -> bytes:
        return os.read(self.rfd, n)

    def close_write(self) -> None:
        self._close(self.wfd)

    def close_read(self) -> None:
        self._close(self.rfd)

    def _close(self, fd: int) -> None:
        if fd not in self._open:
            return
        self._open.discard(fd)
        for sock in self._socks:
            if sock.fileno() == fd:
                sock.close()
                return
        os.close(fd)

    def close(self) -> None:
        self.close_read()
        self.close_write()


@pytest.fixture(params=["socketpair", "pipe"])
def channel(request, loop):
    chan = Channel(request.param)
    yield chan
    chan.close()


@pytest.fixture
def sock_pair(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def as_handle(fd: int, kind: str):
    return fd if kind == "fd" else FileNo(fd)


# --------------------------------------------------------------------------
# callbacks fire, with their arguments
# --------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["fd", "fileobj"])
def test_reader_called_with_args(loop, channel, form):
    done = loop.create_future()
    sentinel = object()

    def on_readable(*args):
        assert loop.remove_reader(channel.rfd) is True
        done.set_result((args, channel.recv()))

    loop.add_reader(as_handle(channel.rfd, form), on_readable, 1, "two", sentinel)
    loop.call_soon(channel.send, b"ping")
    args, data = run(loop, done)
    assert args == (1, "two", sentinel)
    assert args[2] is sentinel
    assert data == b"ping"


@pytest.mark.parametrize("form", ["fd", "fileobj"])
def test_writer_called_with_args(loop, channel, form):
    done = loop.create_future()

    def on_writable(*args):
        assert loop.remove_writer(channel.wfd) is True
        channel.send(b"pong")
        done.set_result(args)

    loop.add_writer(as_handle(channel.wfd, form), on_writable, "a", 2)
    assert run(loop, done) == ("a", 2)
    assert channel.recv() == b"pong"


def test_reader_not_called_without_data(loop, channel):
    calls = []
    loop.add_reader(channel.rfd, calls.append, "read")
    run(loop, asyncio.sleep(0.05))
    assert calls == []
    assert loop.remove_reader(channel.rfd) is True


def test_reader_sees_data_written_before_registration(loop, channel):
    channel.send(b"early")
    done = loop.create_future()

    def on_readable():
        loop.remove_reader(channel.rfd)
        done.set_result(channel.recv())

    loop.add_reader(channel.rfd, on_readable)
    assert run(loop, done) == b"early"


def test_reader_callback_runs_in_loop_thread_with_running_loop(loop, channel):
    done = loop.create_future()

    def on_readable():
        loop.remove_reader(channel.rfd)
        done.set_result(asyncio.get_running_loop())

    loop.add_reader(channel.rfd, on_readable)
    channel.send(b"x")
    assert run(loop, done) is loop


# --------------------------------------------------------------------------
# registration bookkeeping
# --------------------------------------------------------------------------


def test_remove_reader_and_writer_return_values(loop, channel):
    assert loop.remove_reader(channel.rfd) is False
    assert loop.remove_writer(channel.wfd) is False

    loop.add_reader(channel.rfd, lambda: None)
    loop.add_writer(channel.wfd, lambda: None)
    assert loop.remove_reader(channel.rfd) is True
    assert loop.remove_reader(channel.rfd) is False
    assert loop.remove_writer(channel.wfd) is True
    assert loop.remove_writer(channel.wfd) is False


def test_removing_writer_keeps_reader_on_same_fd(loop, sock_pair):
    a, b = sock_pair
    done = loop.create_future()

    def on_readable():
        loop.remove_reader(a)
        done.set_result(a.recv(100))

    loop.add_reader(a, on_readable)
    loop.add_writer(a, pytest.fail, "removed writer must not run")
    assert loop.remove_writer(a) is True
    b.send(b"reader still there")
    assert run(loop, done) == b"reader still there"
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_removing_reader_keeps_writer_on_same_fd(loop, sock_pair):
    a, b = sock_pair
    done = loop.create_future()

    def on_writable():
        loop.remove_writer(a)
        done.set_result("writable")

    b.send(b"unread data")  # `a` is readable too, but its reader is gone
    loop.add_reader(a, pytest.fail, "removed reader must not run")
    loop.add_writer(a, on_writable)
    assert loop.remove_reader(a) is True
    assert run(loop, done) == "writable"
    assert loop.remove_writer(a) is False


def test_remove_by_int_after_add_by_fileobj(loop, sock_pair):
    a, _ = sock_pair
    loop.add_reader(FileNo(a.fileno()), lambda: None)
    loop.add_writer(a, lambda: None)
    # Registrations are keyed by file descriptor, whatever form was passed in.
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_writer(FileNo(a.fileno())) is True
    assert loop.remove_reader(a) is False


def test_replacing_reader_cancels_old_one(loop, channel):
    calls = []
    done = loop.create_future()

    def old_reader():
        calls.append("old")

    def new_reader():
        calls.append("new")
        loop.remove_reader(channel.rfd)
        done.set_result(channel.recv())

    channel.send(b"data")  # already readable when the loop starts
    loop.add_reader(channel.rfd, old_reader)
    # Replace the reader from inside the loop, at a point where the fd may already have been
    # reported readable: the old callback must not run even once after being replaced.
    loop.call_soon(loop.add_reader, channel.rfd, new_reader)
    assert run(loop, done) == b"data"
    assert calls == ["new"]


def test_replacing_writer_cancels_old_one(loop, channel):
    calls = []
    done = loop.create_future()

    def new_writer():
        calls.append("new")
        loop.remove_writer(channel.wfd)
        done.set_result(None)

    loop.add_writer(channel.wfd, calls.append, "old")
    loop.call_soon(loop.add_writer, channel.wfd, new_writer)
    run(loop, done)
    assert calls == ["new"]


def test_replace_reader_directly(loop, channel):
    loop.add_reader(channel.rfd, pytest.fail, "replaced reader must not run")
    done = loop.create_future()

    def second():
        loop.remove_reader(channel.rfd)
        done.set_result(channel.recv())

    loop.add_reader(channel.rfd, second)
    channel.send(b"z")
    assert run(loop, done) == b"z"
    assert loop.remove_reader(channel.rfd) is False


def test_remove_reader_from_within_callback_stops_calls(loop, channel):
    calls = []

    def on_readable():
        calls.append(1)
        loop.remove_reader(channel.rfd)  # the data is left unread on purpose

    loop.add_reader(channel.rfd, on_readable)
    channel.send(b"unread")
    run(loop, asyncio.sleep(0.05))
    assert calls == [1]


def test_reader_removed_before_loop_runs_is_not_called(loop, channel):
    channel.send(b"x")
    loop.add_reader(channel.rfd, pytest.fail, "removed reader must not run")
    assert loop.remove_reader(channel.rfd) is True
    run(loop, asyncio.sleep(0.02))


# --------------------------------------------------------------------------
# level-triggered semantics
# --------------------------------------------------------------------------


def test_level_triggered_reader_called_until_drained(loop, channel):
    chunks = []
    done = loop.create_future()

    def read_a_little():
        chunks.append(channel.recv(2))  # leave the rest for the next call
        if b"".join(chunks) == b"abcdefg":
            loop.remove_reader(channel.rfd)
            done.set_result(None)

    channel.send(b"abcdefg")
    loop.add_reader(channel.rfd, read_a_little)
    run(loop, done)
    assert chunks == [b"ab", b"cd", b"ef", b"g"]


def test_level_triggered_reader_called_again_without_reading(loop, channel):
    calls = []
    done = loop.create_future()

    def peek_only():
        calls.append(1)
        if len(calls) == 3:
            loop.remove_reader(channel.rfd)
            done.set_result(None)

    channel.send(b"!")
    loop.add_reader(channel.rfd, peek_only)
    run(loop, done)
    assert calls == [1, 1, 1]
    assert channel.recv() == b"!"


def test_level_triggered_writer_called_repeatedly(loop, channel):
    calls = []
    done = loop.create_future()

    def on_writable():
        calls.append(1)
        if len(calls) == 3:
            loop.remove_writer(channel.wfd)
            done.set_result(None)

    loop.add_writer(channel.wfd, on_writable)
    run(loop, done)
    assert len(calls) == 3


def test_writer_waits_while_buffer_full(loop, channel):
    # Fill the kernel buffer; the writer must only fire once the reader drains some of it.
    total = 0
    while True:
        try:
            total += os.write(channel.wfd, b"x" * 65536)
        except BlockingIOError:
            break
    assert total > 0
    events = []
    done = loop.create_future()

    def on_writable():
        events.append("writable")
        loop.remove_writer(channel.wfd)
        done.set_result(None)

    def drain():
        events.append("drain")
        drained = 0
        while drained < total:
            try:
                drained += len(channel.recv(1 << 20))
            except BlockingIOError:
                break

    loop.add_writer(channel.wfd, on_writable)
    loop.call_later(0.05, drain)
    run(loop, done)
    assert events == ["drain", "writable"]


def test_reader_and_writer_on_same_fd_are_independent(loop, sock_pair):
    a, b = sock_pair
    events = []
    done = loop.create_future()

    def on_writable():
        events.append("write")
        assert loop.remove_writer(a) is True
        b.send(b"hello")  # only now does `a` become readable

    def on_readable():
        events.append("read")
        assert loop.remove_reader(a) is True
        done.set_result(a.recv(100))

    loop.add_reader(a, on_readable)
    loop.add_writer(a, on_writable)
    assert run(loop, done) == b"hello"
    assert events == ["write", "read"]


def test_multiple_fds_each_get_their_callback(loop):
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        for x, y in pairs:
            x.setblocking(False)
            y.setblocking(False)
        seen = {}
        done = loop.create_future()

        def on_readable(index, sock):
            loop.remove_reader(sock)
            seen[index] = sock.recv(100)
            if len(seen) == len(pairs):
                done.set_result(None)

        for i, (x, _) in enumerate(pairs):
            loop.add_reader(x, on_readable, i, x)
        for i, (_, y) in enumerate(pairs):
            y.send(f"msg{i}".encode())
        run(loop, done)
        assert seen == {i: f"msg{i}".encode() for i in range(len(pairs))}
    finally:
        for x, y in pairs:
            x.close()
            y.close()


# --------------------------------------------------------------------------
# end of file / hang-up
# --------------------------------------------------------------------------


def test_peer_close_triggers_reader(loop, channel):
    done = loop.create_future()

    def on_readable():
        loop.remove_reader(channel.rfd)
        done.set_result(channel.recv())

    loop.add_reader(channel.rfd, on_readable)
    loop.call_soon(channel.close_write)
    assert run(loop, done) == b""  # EOF


def test_peer_close_after_data_delivers_data_then_eof(loop, channel):
    received = []
    done = loop.create_future()

    def on_readable():
        data = channel.recv(3)
        received.append(data)
        if not data:
            loop.remove_reader(channel.rfd)
            done.set_result(None)

    channel.send(b"tail!")
    channel.close_write()
    loop.add_reader(channel.rfd, on_readable)
    run(loop, done)
    assert received == [b"tai", b"l!", b""]


def test_socket_shutdown_wr_triggers_reader(loop, sock_pair):
    a, b = sock_pair
    done = loop.create_future()

    def on_readable():
        loop.remove_reader(a)
        done.set_result(a.recv(10))

    loop.add_reader(a, on_readable)
    loop.call_soon(b.shutdown, socket.SHUT_WR)
    assert run(loop, done) == b""


def test_writer_fires_when_pipe_reader_closed(loop):
    # The write end of a pipe whose read end is gone reports an error condition, which wakes
    # writers (a write would then fail with EPIPE).
    chan = Channel("pipe")
    try:
        done = loop.create_future()

        def on_writable():
            loop.remove_writer(chan.wfd)
            done.set_result(None)

        chan.close_read()
        loop.add_writer(chan.wfd, on_writable)
        run(loop, done)
        with pytest.raises(BrokenPipeError):
            os.write(chan.wfd, b"x")
    finally:
        chan.close()


# --------------------------------------------------------------------------
# exceptions in callbacks
# --------------------------------------------------------------------------


def test_reader_exception_goes_to_handler_and_loop_goes_on(loop, channel, handler_calls):
    calls = []
    done = loop.create_future()

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("first call fails")
        loop.remove_reader(channel.rfd)
        done.set_result(channel.recv())

    channel.send(b"ok")
    loop.add_reader(channel.rfd, flaky)
    assert run(loop, done) == b"ok"
    assert len(calls) == 2
    assert len(handler_calls) == 1
    assert isinstance(handler_calls[0]["exception"], ZeroDivisionError)


# --------------------------------------------------------------------------
# bad file descriptors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_negative_fd_raises_value_error(loop, method):
    with pytest.raises(ValueError):
        getattr(loop, method)(-1, lambda: None)


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
def test_remove_negative_fd_raises_value_error(loop, method):
    with pytest.raises(ValueError):
        getattr(loop, method)(-1)


@pytest.mark.parametrize("fd", [-(2**70), -(2**40)], ids=["beyond-64-bits", "beyond-32-bits"])
@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
def test_hugely_negative_fd_raises_value_error(loop, method, fd):
    args = (lambda: None,) if method.startswith("add") else ()
    with pytest.raises(ValueError, match="Invalid file descriptor"):
        getattr(loop, method)(fd, *args)


@pytest.mark.parametrize("fd", [2**70, 2**40], ids=["beyond-64-bits", "beyond-32-bits"])
@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_fd_too_large_to_register_raises_overflow_error(loop, method, fd):
    with pytest.raises(OverflowError):
        getattr(loop, method)(fd, lambda: None)


@pytest.mark.parametrize("fd", [2**70, 2**40], ids=["beyond-64-bits", "beyond-32-bits"])
@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
def test_removing_an_fd_too_large_to_register_finds_nothing(loop, method, fd):
    assert getattr(loop, method)(fd) is False


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_fileobj_returning_negative_fd_raises_value_error(loop, method):
    with pytest.raises(ValueError):
        getattr(loop, method)(FileNo(-1), lambda: None)


@pytest.mark.parametrize("bad", [object(), "3", 1.5, None], ids=["object", "str", "float", "None"])
@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
def test_object_without_fileno_raises_value_error(loop, method, bad):
    args = (lambda: None,) if method.startswith("add") else ()
    with pytest.raises(ValueError):
        getattr(loop, method)(bad, *args)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_closed_fd_raises_os_error(loop, method):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    fd = r if method == "add_reader" else w
    with pytest.raises(OSError) as excinfo:
        getattr(loop, method)(fd, lambda: None)
    assert excinfo.value.errno == errno.EBADF


def test_remove_reader_of_closed_unregistered_fd_returns_false(loop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(w) is False


@pytest.mark.parametrize("side", ["reader", "writer"])
def test_remove_finds_a_socket_closed_while_watched(loop, side):
    # The socket's fileno() is -1 once closed; the registration is found by the object itself,
    # as asyncio's selector finds it (anyio closes sockets under a pending wait this way).
    a, b = socket.socketpair()
    b.close()
    calls = []
    getattr(loop, f"add_{side}")(a, calls.append, "called")
    a.close()
    assert getattr(loop, f"remove_{side}")(a) is True
    # Gone now: the object is unknown, and its fileno() is still invalid.
    with pytest.raises(ValueError):
        getattr(loop, f"remove_{side}")(a)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == []


def test_a_closed_socket_registered_by_fd_number_is_found_only_by_number(loop):
    # A closed socket whose fd was registered by number is not found through the object.
    a, b = socket.socketpair()
    b.close()
    loop.add_reader(a.fileno(), lambda: None)
    fd = a.fileno()
    a.close()
    with pytest.raises(ValueError):
        loop.remove_reader(a)
    assert loop.remove_reader(fd) is True


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_regular_file_raises_permission_error(loop, method):
    # epoll refuses regular files with EPERM; asyncio lets that PermissionError through.
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError) as excinfo:
            getattr(loop, method)(f.fileno(), lambda: None)
        assert excinfo.value.errno == errno.EPERM
        with pytest.raises(PermissionError):
            getattr(loop, method)(f, lambda: None)
        # The failed registration leaves nothing behind.
        assert loop.remove_reader(f) is False
        assert loop.remove_writer(f) is False


def test_failed_registration_leaves_loop_usable(loop, channel):
    with pytest.raises(ValueError):
        loop.add_reader(-1, lambda: None)
    done = loop.create_future()

    def on_readable():
        loop.remove_reader(channel.rfd)
        done.set_result(channel.recv())

    loop.add_reader(channel.rfd, on_readable)
    channel.send(b"still works")
    assert run(loop, done) == b"still works"


# --------------------------------------------------------------------------
# closed loop
# --------------------------------------------------------------------------


def test_remove_after_loop_close_returns_false(loop, sock_pair):
    a, _ = sock_pair
    loop.add_reader(a, lambda: None)
    loop.add_writer(a, lambda: None)
    loop.close()
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_after_loop_close_raises_runtime_error(loop, sock_pair, method):
    a, _ = sock_pair
    loop.close()
    with pytest.raises(RuntimeError):
        getattr(loop, method)(a, lambda: None)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_watching_a_huge_unopened_fd_raises_ebadf(loop, channel, method):
    """The largest fd number an int can name is not open: the poller refuses it (and the loop
    does not size anything by it), and the loop keeps working."""
    with pytest.raises(OSError) as excinfo:
        getattr(loop, method)(2**31 - 1, lambda: None)
    assert excinfo.value.errno == errno.EBADF
    assert loop.remove_reader(2**31 - 1) is False
    done = loop.create_future()
    loop.add_reader(channel.rfd, lambda: done.done() or done.set_result(channel.recv()))
    channel.send(b"still works")
    try:
        assert run(loop, done) == b"still works"
    finally:
        loop.remove_reader(channel.rfd)


def test_fd_can_be_rewatched_after_remove(loop, channel):
    for round_ in range(3):
        done = loop.create_future()

        def on_readable(fut=done):
            loop.remove_reader(channel.rfd)
            fut.set_result(channel.recv())

        loop.add_reader(channel.rfd, on_readable)
        channel.send(f"round {round_}".encode())
        assert run(loop, done) == f"round {round_}".encode()


def test_each_run_looks_at_io_on_its_first_turn(loop):
    """A one-turn run_until_complete() still dispatches I/O that arrived since the last run."""
    rsock, wsock = socket.socketpair()
    got = []
    loop.add_reader(rsock, lambda: got.append(rsock.recv(10)))
    try:
        loop.run_until_complete(asyncio.sleep(0))
        wsock.send(b"x")
        done = loop.create_future()
        done.set_result(None)
        loop.run_until_complete(done)
        assert got == [b"x"]
    finally:
        loop.remove_reader(rsock)
        rsock.close()
        wsock.close()


def test_io_is_seen_while_callbacks_keep_the_loop_busy(loop):
    """A callback chain that never lets the ready queue empty must not starve readers."""
    rsock, wsock = socket.socketpair()
    turns = 0
    got = []

    def spin():
        nonlocal turns
        turns += 1
        if got or turns > 2_000_000:
            loop.stop()
        else:
            loop.call_soon(spin)

    loop.add_reader(rsock, lambda: got.append(rsock.recv(10)))
    try:
        loop.call_soon(spin)
        loop.call_soon(wsock.send, b"y")
        loop.run_forever()
        assert got == [b"y"]
    finally:
        loop.remove_reader(rsock)
        rsock.close()
        wsock.close()
