"""asyncio.wait_for: give up on an awaitable that takes too long (and cancel it)."""

import asyncio

from _runner import run


async def lookup(record: str, seconds: float) -> str:
    try:
        await asyncio.sleep(seconds)
        return f"{record}: found"
    except asyncio.CancelledError:
        print(f"{record}: lookup cancelled by the timeout")
        raise


async def main() -> None:
    print(await asyncio.wait_for(lookup("cheap", 0.01), timeout=1.0))

    try:
        await asyncio.wait_for(lookup("expensive", 10), timeout=0.05)
    except asyncio.TimeoutError:
        print("expensive: gave up after 0.05 s")

    # A shielded awaitable keeps running after the timeout and can still be awaited.
    background = asyncio.ensure_future(lookup("shielded", 0.1))
    try:
        await asyncio.wait_for(asyncio.shield(background), timeout=0.02)
    except asyncio.TimeoutError:
        print("shielded: timed out, still running:", not background.done())
    print(await background)


if __name__ == "__main__":
    run(main())
