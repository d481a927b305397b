"""Streams: a line-based TCP server (`asyncio.start_server`) and clients (`open_connection`)."""

import asyncio

from _runner import run


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # One line in, one line out, until the client half-closes.
    while line := await reader.readline():
        writer.write(b"echo: " + line.upper())
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def client(port: int, name: str, lines: list[str]) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    for line in lines:
        writer.write(f"{name}: {line}\n".encode())
        await writer.drain()
        replies.append((await reader.readline()).decode().rstrip())
    writer.write_eof()
    assert await reader.read() == b""  # the server closed its side too
    writer.close()
    await writer.wait_closed()
    return replies


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        results = await asyncio.gather(
            client(port, "ann", ["hello", "bye"]),
            client(port, "bob", ["ping"]),
        )
    for replies in results:
        for reply in replies:
            print(reply)
    print("server still serving:", server.is_serving())


if __name__ == "__main__":
    run(main())
