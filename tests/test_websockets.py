"""The websockets library (its asyncio implementation) on the loop under test: a server and its
clients on the same loop, on ferroloop and on the stdlib asyncio loop (the oracle).

websockets' own test suite is not in its source distribution, so `make libraries` cannot run it;
these tests cover what it leans on the loop for: streams over the loop's transports with flow
control (large messages), keep-alive pings (timers), closing handshakes and many connections."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

websockets = pytest.importorskip("websockets")
pytest.importorskip("websockets.asyncio.server")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402

WAIT = 20.0


async def echo(connection) -> None:
    async for message in connection:
        await connection.send(message)


def run(loop, main) -> None:
    loop.run_until_complete(asyncio.wait_for(main(), WAIT))


def test_websocket_echo_of_text_binary_and_large_messages(loop):
    big = bytes(range(256)) * 16384  # 4 MiB: many reads and writes, and paused writing

    async def main():
        async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", max_size=None) as client:
                await client.send("héllo")
                assert await client.recv() == "héllo"
                await client.send(b"\x00\x01")
                assert await client.recv() == b"\x00\x01"
                await client.send(big)
                assert await client.recv() == big
                pong = await client.ping()
                assert await asyncio.wait_for(pong, WAIT) >= 0

    run(loop, main)


def test_websocket_close_codes_reach_both_sides(loop):
    seen = []

    async def handler(connection):
        try:
            await connection.recv()
        except websockets.ConnectionClosed as closed:
            seen.append((closed.rcvd.code, closed.rcvd.reason))

    async def main():
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            client = await connect(f"ws://127.0.0.1:{port}")
            await client.close(code=4001, reason="bye")
            assert client.close_code == 4001
            server.close()
            await server.wait_closed()
        assert seen == [(4001, "bye")]

    run(loop, main)


def test_websocket_server_with_many_concurrent_clients(loop):
    async def one_client(port: int, i: int) -> list[str]:
        async with connect(f"ws://127.0.0.1:{port}") as client:
            replies = []
            for j in range(5):
                await client.send(f"{i}:{j}")
                replies.append(await client.recv())
            return replies

    async def main():
        async with serve(echo, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            results = await asyncio.gather(*(one_client(port, i) for i in range(50)))
        assert results == [[f"{i}:{j}" for j in range(5)] for i in range(50)]

    run(loop, main)


def test_websocket_keepalive_ping_timeout_closes_a_silent_peer(loop):
    async def main():
        # A raw TCP peer that completes the handshake, then never answers pings.
        async def silent(reader, writer):
            request = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key")
            )
            # RFC 6455's answer to the key.
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            await reader.read()  # until the client gives up and closes
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            client = await connect(f"ws://127.0.0.1:{port}", ping_interval=0.05, ping_timeout=0.05, close_timeout=0.1)
            with pytest.raises(websockets.ConnectionClosedError):
                await client.recv()
            await client.close()

    run(loop, main)
