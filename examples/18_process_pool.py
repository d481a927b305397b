"""run_in_executor with a ProcessPoolExecutor: move CPU-bound work to other processes."""

import asyncio
import os
from concurrent.futures import ProcessPoolExecutor

from _runner import run


def count_primes(limit: int) -> tuple:
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(sieve[n * n :: n]))
    return limit, sum(sieve), os.getpid()


async def main() -> None:
    loop = asyncio.get_running_loop()
    limits = [10, 1_000, 100_000, 200_000]
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = await asyncio.gather(*(loop.run_in_executor(pool, count_primes, n) for n in limits))
    for limit, primes, _pid in results:
        print(f"primes below {limit}: {primes}")
    print("ran in other processes:", all(pid != os.getpid() for _, _, pid in results))


if __name__ == "__main__":
    run(main())
