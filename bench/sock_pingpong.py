"""Two tasks in one loop echo a message back and forth over a socketpair with sock_recv() and
sock_sendall(): every receive has to wait, so this times the sock_* wait path with no client
process in the way. For instruction counts (the performance log's use of it)::

    valgrind --tool=callgrind python bench/sock_pingpong.py ferroloop:new_event_loop 5000
    valgrind --tool=callgrind python bench/sock_pingpong.py ferroloop:new_event_loop 10000

and divide the difference of the two totals by 5000 (instructions per round trip: two waiting
receives and two sends). Without valgrind it prints round trips per second.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import sys
import time

MESSAGE = b"x" * 64


async def side(loop: asyncio.AbstractEventLoop, sock: socket.socket, first: bool, rounds: int) -> int:
    if first:
        await loop.sock_sendall(sock, MESSAGE)
    received = 0
    for _ in range(rounds):
        data = await loop.sock_recv(sock, 1024)
        received += len(data)
        await loop.sock_sendall(sock, data)
    return received


async def main(rounds: int) -> float:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        t0 = time.perf_counter()
        got = await asyncio.gather(side(loop, a, True, rounds), side(loop, b, False, rounds))
        elapsed = time.perf_counter() - t0
    if got != [rounds * len(MESSAGE)] * 2:
        raise SystemExit(f"lost data: received {got}")
    return elapsed


if __name__ == "__main__":
    module, _, attr = sys.argv[1].partition(":")
    rounds = int(sys.argv[2])
    loop = getattr(importlib.import_module(module), attr)()
    try:
        elapsed = loop.run_until_complete(main(rounds))
    finally:
        loop.close()
    print(f"{sys.argv[1]}: {rounds / elapsed:,.0f} round trips/s")
