"""run_in_executor with a ThreadPoolExecutor: keep blocking calls off the event loop.

The "started" lines are printed from worker threads, so their order varies from run to run.
"""

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from _runner import run


def blocking_checksum(name: str) -> int:
    in_worker = threading.current_thread() is not threading.main_thread()
    # One write per line, so lines from different threads never get mixed together.
    sys.stdout.write(f"{name} started in a worker thread: {in_worker}\n")
    time.sleep(0.05)  # a blocking call, e.g. a legacy client library
    return sum(name.encode())


async def heartbeat(stop: asyncio.Event) -> int:
    beats = 0
    while not stop.is_set():
        beats += 1
        await asyncio.sleep(0.005)
    return beats


async def main() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeat(stop))

    names = ["alpha", "beta", "gamma", "delta"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        sums = await asyncio.gather(*(loop.run_in_executor(pool, blocking_checksum, n) for n in names))
    print("checksums:", dict(zip(names, sums)))

    # None selects the loop's default executor.
    print("default executor:", await loop.run_in_executor(None, sum, [1, 2, 3]))

    stop.set()
    beats = await beating
    print("the loop kept running meanwhile:", beats > 1)


if __name__ == "__main__":
    run(main())
