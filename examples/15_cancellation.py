"""Cancellation: cancel a running task, let it clean up, and observe that it was cancelled."""

import asyncio

from _runner import run


async def poll_forever(warmed_up: asyncio.Event) -> None:
    tick = 0
    try:
        while True:
            tick += 1
            print(f"poll #{tick}")
            if tick == 3:
                warmed_up.set()
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        print(f"poller cancelled during poll #{tick}, cleaning up")
        await asyncio.sleep(0.01)  # cleanup may still await
        print("cleanup finished")
        raise


async def stubborn() -> str:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        return "swallowed the cancellation"
    return "not reached"


async def main() -> None:
    warmed_up = asyncio.Event()
    task = asyncio.create_task(poll_forever(warmed_up))
    await warmed_up.wait()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        print("caller saw CancelledError; task.cancelled() =", task.cancelled())

    # A task that catches CancelledError and returns is not considered cancelled.
    other = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    other.cancel()
    print("stubborn result:", await other, "| cancelled():", other.cancelled())


if __name__ == "__main__":
    run(main())
