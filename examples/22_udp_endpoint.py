"""Datagrams: a UDP echo endpoint and a client (`create_datagram_endpoint`)."""

import asyncio

from _runner import run


class EchoEndpoint(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data[::-1], addr)  # type: ignore[attr-defined]


class Client(asyncio.DatagramProtocol):
    def __init__(self, expected: int) -> None:
        self.replies: list[bytes] = []
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.append(data)
        if len(self.replies) == self.expected:
            self.done.set_result(None)


async def main() -> None:
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(EchoEndpoint, local_addr=("127.0.0.1", 0))
    address = server.get_extra_info("sockname")
    words = [b"stressed", b"drawer", b"level"]
    client, protocol = await loop.create_datagram_endpoint(lambda: Client(len(words)), remote_addr=address)
    for word in words:
        client.sendto(word)
    await asyncio.wait_for(protocol.done, 5)
    for word, reply in zip(words, protocol.replies):
        print(word.decode(), "->", reply.decode())
    client.close()
    server.close()


if __name__ == "__main__":
    run(main())
