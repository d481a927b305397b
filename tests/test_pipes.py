"""Pipe transports (connect_read_pipe / connect_write_pipe): pipes, FIFOs, ptys and character
devices, end of file, flow control and a vanishing reader. Every test runs on ferroloop and on the
stdlib asyncio loop (the oracle)."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

WAIT = 10.0
BIG = 4 * 1024 * 1024


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


class Reader(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.data = bytearray()
        self.events: list[str] = []
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data
        if self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


class Writer(asyncio.BaseProtocol):
    def __init__(self, loop):
        self.lost = loop.create_future()
        self.pauses = 0
        self.resumes = 0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.pauses += 1

    def resume_writing(self):
        self.resumes += 1

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_read_pipe_delivers_data_then_eof_then_connection_lost(loop):
    async def main():
        r, w = os.pipe()
        tr, proto = await loop.connect_read_pipe(lambda: Reader(loop), os.fdopen(r, "rb", 0))
        assert isinstance(tr, asyncio.ReadTransport)
        assert tr.get_extra_info("pipe").fileno() == r
        assert tr.is_reading()
        os.write(w, b"hello ")
        os.write(w, b"pipe")
        os.close(w)
        assert await proto.lost is None
        assert bytes(proto.data) == b"hello pipe"
        assert proto.events == ["made", "data", "eof", "lost"]
        assert tr.is_closing()

    run(loop, main())


def test_read_pipe_pause_and_resume(loop):
    async def main():
        r, w = os.pipe()
        tr, proto = await loop.connect_read_pipe(lambda: Reader(loop), os.fdopen(r, "rb", 0))
        tr.pause_reading()
        assert not tr.is_reading()
        os.write(w, b"held")
        for _ in range(10):
            await asyncio.sleep(0)
        assert bytes(proto.data) == b""
        tr.resume_reading()
        os.close(w)
        await proto.lost
        assert bytes(proto.data) == b"held"

    run(loop, main())


def test_read_pipe_close_calls_connection_lost_once(loop):
    async def main():
        r, w = os.pipe()
        try:
            tr, proto = await loop.connect_read_pipe(lambda: Reader(loop), os.fdopen(r, "rb", 0))
            tr.close()
            tr.close()
            assert tr.is_closing()
            assert await proto.lost is None
            assert proto.events == ["made", "lost"]
            assert tr.get_protocol() is None or tr.get_protocol() is proto
        finally:
            os.close(w)

    run(loop, main())


def test_exception_in_data_received_goes_to_the_handler_and_the_pipe_stays_open(loop, handler_calls):
    class Failing(Reader):
        def data_received(self, data):
            super().data_received(data)
            raise ValueError("bad")

    async def main():
        r, w = os.pipe()
        tr, proto = await loop.connect_read_pipe(lambda: Failing(loop), os.fdopen(r, "rb", 0))
        os.write(w, b"one")
        while not proto.data:
            await asyncio.sleep(0.001)
        assert not tr.is_closing()
        os.close(w)
        assert await proto.lost is None

    run(loop, main())
    assert len(handler_calls) == 1
    assert isinstance(handler_calls[0]["exception"], ValueError)


def test_regular_files_are_rejected_like_asyncio(loop, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"x")

    async def main():
        with open(path, "rb") as f:
            with pytest.raises(ValueError, match=r"Pipe transport is for pipes/sockets only\."):
                await loop.connect_read_pipe(lambda: Reader(loop), f)
        with open(path, "wb") as f:
            with pytest.raises(ValueError, match="Pipe transport is only for pipes, sockets and character devices"):
                await loop.connect_write_pipe(lambda: Writer(loop), f)

    run(loop, main())


def test_write_pipe_buffers_and_flow_controls_a_large_write(loop):
    payload = os.urandom(BIG)

    async def main():
        r, w = os.pipe()
        tr, proto = await loop.connect_write_pipe(lambda: Writer(loop), os.fdopen(w, "wb", 0))
        assert isinstance(tr, asyncio.WriteTransport)
        tr.write(payload)
        assert tr.get_write_buffer_size() > 0
        assert proto.pauses == 1
        _, reader = await loop.connect_read_pipe(lambda: Reader(loop), os.fdopen(r, "rb", 0))
        tr.close()  # flushes first
        assert await proto.lost is None
        await reader.lost
        assert bytes(reader.data) == payload
        assert proto.resumes == 1

    run(loop, main())


def test_write_pipe_reader_gone_with_queued_data_is_a_broken_pipe(loop):
    async def main():
        r, w = os.pipe()
        tr, proto = await loop.connect_write_pipe(lambda: Writer(loop), os.fdopen(w, "wb", 0))
        tr.write(os.urandom(BIG))
        assert tr.get_write_buffer_size() > 0
        os.close(r)
        exc = await proto.lost
        assert isinstance(exc, BrokenPipeError)
        assert tr.get_write_buffer_size() == 0
        tr.write(b"dropped")  # silently dropped once lost

    run(loop, main())


def test_write_pipe_reader_gone_with_nothing_queued_closes_cleanly(loop):
    async def main():
        r, w = os.pipe()
        tr, proto = await loop.connect_write_pipe(lambda: Writer(loop), os.fdopen(w, "wb", 0))
        tr.write(b"small")
        os.close(r)
        assert await proto.lost is None
        assert tr.is_closing()

    run(loop, main())


def test_write_pipe_write_eof_and_abort(loop):
    async def main():
        r, w = os.pipe()
        rf = os.fdopen(r, "rb", 0)
        try:
            tr, proto = await loop.connect_write_pipe(lambda: Writer(loop), os.fdopen(w, "wb", 0))
            assert tr.can_write_eof()
            tr.write(b"last words")
            tr.write_eof()
            assert tr.is_closing()
            assert await proto.lost is None
            assert rf.read() == b"last words"

            r2, w2 = os.pipe()
            os.close(r2)
            tr2, proto2 = await loop.connect_write_pipe(lambda: Writer(loop), os.fdopen(w2, "wb", 0))
            tr2.abort()
            assert await proto2.lost is None
        finally:
            rf.close()

    run(loop, main())


def test_write_pipe_to_a_character_device(loop):
    async def main():
        tr, proto = await loop.connect_write_pipe(lambda: Writer(loop), open(os.devnull, "wb", 0))
        tr.write(b"into the void" * 1000)
        tr.close()
        assert await proto.lost is None

    run(loop, main())


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs os.openpty")
@pytest.mark.skipif(sys.platform != "linux", reason="pty EOF semantics checked on Linux")
def test_reading_a_pty_whose_writer_closed_ends_quietly(loop):
    async def main():
        master, slave = os.openpty()
        _, proto = await loop.connect_read_pipe(lambda: Reader(loop), os.fdopen(master, "rb", 0))
        os.write(slave, b"tty says hi\n")
        while b"hi" not in proto.data:
            await asyncio.sleep(0.001)
        os.close(slave)
        # Linux reports EIO, not EOF, once the slave side is closed: no handler call.
        exc = await proto.lost
        assert exc is None or (isinstance(exc, OSError) and exc.errno == 5)

    run(loop, main())
