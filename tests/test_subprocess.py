"""Subprocesses: spawning, pipes in every combination, large outputs, signals and reaping.

Every test runs on ferroloop and on the stdlib asyncio loop (the oracle)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading

import pytest

WAIT = 30.0
PY = sys.executable
PIPE = asyncio.subprocess.PIPE


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


def test_communicate_moves_outputs_far_larger_than_a_pipe_buffer(loop):
    size = 8 * 1024 * 1024
    code = (
        "import sys; data = sys.stdin.buffer.read(); "
        "sys.stdout.buffer.write(data[::-1]); sys.stderr.buffer.write(data[:1000]); sys.exit(len(data) % 7)"
    )

    async def main():
        payload = os.urandom(size)
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate(payload)
        assert out == payload[::-1]
        assert err == payload[:1000]
        assert proc.returncode == size % 7

    run(loop, main())


def test_shell_with_stderr_to_stdout_and_exit_status(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo out; echo err 1>&2; exit 5", stdout=PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, err = await proc.communicate()
        assert sorted(out.split()) == [b"err", b"out"]
        assert err is None
        assert proc.returncode == 5

    run(loop, main())


def test_devnull_and_file_descriptors_as_standard_streams(loop, tmp_path):
    target = tmp_path / "out.txt"

    async def main():
        with open(target, "wb") as f:
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", "import sys; print(sys.stdin.read() == '')", stdin=asyncio.subprocess.DEVNULL, stdout=f
            )
            assert await proc.wait() == 0
        assert target.read_text().strip() == "True"
        r, w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(PY, "-c", "print('via fd')", stdout=w)
            os.close(w)
            w = -1
            assert await proc.wait() == 0
            assert os.read(r, 100) == b"via fd\n"
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    run(loop, main())


def test_line_by_line_reading_while_the_child_runs(loop):
    code = "import sys\nfor i in range(5):\n    print(i, flush=True)\n    sys.stdin.readline()\n"

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdin=PIPE, stdout=PIPE)
        seen = []
        for _ in range(5):
            line = await proc.stdout.readline()
            seen.append(int(line))
            proc.stdin.write(b"next\n")
            await proc.stdin.drain()
        assert seen == list(range(5))
        assert await proc.stdout.read() == b""
        assert await proc.wait() == 0
        proc.stdin.close()
        await proc.stdin.wait_closed()

    run(loop, main())


@pytest.mark.parametrize(
    ("action", "expected"),
    [("terminate", -signal.SIGTERM), ("kill", -signal.SIGKILL), ("send_signal", -signal.SIGINT)],
)
def test_signalling_a_child_reports_the_negative_signal_number(loop, action, expected):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_DFL); print(); time.sleep(60)",
            stdout=PIPE,
        )
        await proc.stdout.readline()
        if action == "send_signal":
            proc.send_signal(signal.SIGINT)
        else:
            getattr(proc, action)()
        assert await proc.wait() == expected
        assert proc.returncode == expected
        await proc.communicate()

    run(loop, main())


def test_many_short_children_are_all_reaped(loop):
    async def main():
        procs = [await asyncio.create_subprocess_exec(PY, "-c", f"raise SystemExit({i})") for i in range(20)]
        codes = await asyncio.gather(*(p.wait() for p in procs))
        assert codes == list(range(20))

    run(loop, main())


def test_subprocess_protocol_sees_pipe_data_then_exit(loop):
    class Collect(asyncio.SubprocessProtocol):
        def __init__(self):
            self.data = {1: bytearray(), 2: bytearray()}
            self.events = []
            self.done = loop.create_future()

        def pipe_data_received(self, fd, data):
            self.data[fd] += data

        def pipe_connection_lost(self, fd, exc):
            self.events.append(("pipe_lost", fd))

        def process_exited(self):
            self.events.append("exited")

        def connection_lost(self, exc):
            self.events.append("lost")
            self.done.set_result(exc)

    async def main():
        transport, proto = await loop.subprocess_exec(
            Collect, PY, "-c", "import sys; print('o'); print('e', file=sys.stderr)", stdin=None
        )
        assert isinstance(transport, asyncio.SubprocessTransport)
        assert transport.get_pid() > 0
        assert await proto.done is None
        assert transport.get_returncode() == 0
        assert bytes(proto.data[1]).strip() == b"o"
        assert bytes(proto.data[2]).strip() == b"e"
        # The process exit is reported after both pipes were drained, and connection_lost last.
        assert proto.events[-1] == "lost"
        assert sorted(e for e in proto.events if e != "lost" and e != "exited") == [("pipe_lost", 1), ("pipe_lost", 2)]
        transport.close()

    run(loop, main())


def test_children_are_reaped_without_a_helper_thread(loop, request, is_ferroloop):
    if not is_ferroloop:
        request.applymarker(pytest.mark.xfail(reason="asyncio 3.11 waits for each child in a thread", strict=False))

    async def main():
        before = threading.active_count()
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(0.2)")
        during = threading.active_count()
        assert await proc.wait() == 0
        assert during == before

    run(loop, main())
