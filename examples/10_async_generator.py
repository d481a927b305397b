"""Async generators: ``yield`` inside ``async def``, chained into a small pipeline."""

import asyncio

from _runner import run


async def ticker(count: int, interval: float):
    for n in range(count):
        await asyncio.sleep(interval)
        yield n


async def squares(source):
    async for n in source:
        yield n * n


async def numbers_forever():
    n = 0
    try:
        while True:
            await asyncio.sleep(0)
            yield n
            n += 1
    finally:
        # Runs when the consumer stops early and the generator is closed.
        print(f"numbers_forever closed after yielding {n}")


async def main() -> None:
    async for value in squares(ticker(5, 0.01)):
        print("square:", value)

    evens = [n async for n in squares(ticker(6, 0.005)) if n % 2 == 0]
    print("even squares:", evens)

    gen = numbers_forever()
    async for n in gen:
        if n == 3:
            break
    await gen.aclose()
    print("done")


if __name__ == "__main__":
    run(main())
