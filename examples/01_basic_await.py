"""Basic async/await: a coroutine that awaits other coroutines one after another."""

import asyncio

from _runner import run


async def brew(drink: str, minutes: int) -> str:
    print(f"putting the {drink} on")
    await asyncio.sleep(minutes / 1000)  # stand-in for slow I/O
    return f"{drink} is ready after {minutes} minutes"


async def main() -> None:
    print(await brew("tea", 3))
    print(await brew("coffee", 5))
    print("breakfast served")


if __name__ == "__main__":
    run(main())
