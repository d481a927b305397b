"""asyncio.gather: run several coroutines at once; results come back in argument order."""

import asyncio

from _runner import run


async def read_sensor(name: str, delay: float, value: float) -> float:
    await asyncio.sleep(delay)
    print(f"{name} answered")
    return value


async def main() -> None:
    # The slowest sensor is listed first, so the "answered" lines come out in the
    # reverse order of the arguments while the results stay in argument order.
    readings = await asyncio.gather(
        read_sensor("attic", 0.06, 18.5),
        read_sensor("kitchen", 0.04, 21.0),
        read_sensor("cellar", 0.02, 12.25),
    )
    print("readings:", readings)
    print(f"average: {sum(readings) / len(readings):.2f}")


if __name__ == "__main__":
    run(main())
