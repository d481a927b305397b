"""asyncio.Semaphore: let at most N coroutines into a section at once."""

import asyncio

from _runner import run

LIMIT = 2


async def call_api(n: int, gate: asyncio.Semaphore, stats: dict) -> str:
    async with gate:
        stats["inside"] += 1
        stats["peak"] = max(stats["peak"], stats["inside"])
        await asyncio.sleep(0.01)
        stats["inside"] -= 1
    return f"response-{n}"


async def main() -> None:
    gate = asyncio.Semaphore(LIMIT)
    stats = {"inside": 0, "peak": 0}
    responses = await asyncio.gather(*(call_api(n, gate, stats) for n in range(7)))
    print(responses)
    print(f"peak concurrency: {stats['peak']} (limit {LIMIT})")
    print("semaphore free again:", not gate.locked())

    # A BoundedSemaphore refuses to be released more often than it was acquired.
    bounded = asyncio.BoundedSemaphore(1)
    async with bounded:
        pass
    try:
        bounded.release()
    except ValueError as exc:
        print("BoundedSemaphore:", exc)


if __name__ == "__main__":
    run(main())
