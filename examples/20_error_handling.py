"""Error handling: exceptions from awaits, from tasks, from gather, and from plain callbacks."""

import asyncio

from _runner import run


class SensorError(Exception):
    pass


async def read(sensor: str) -> float:
    await asyncio.sleep(0.01)
    if sensor.startswith("broken"):
        raise SensorError(f"{sensor} did not answer")
    return 20.0 + len(sensor)


def failing_callback() -> None:
    raise ZeroDivisionError("division by zero in a callback")


async def main() -> None:
    # 1. An awaited coroutine raises straight into the caller.
    try:
        await read("broken-1")
    except SensorError as exc:
        print("caught:", exc)

    # 2. A task keeps its exception until somebody looks at it.
    task = asyncio.create_task(read("broken-2"))
    await asyncio.wait([task])
    print("task done:", task.done(), "| exception:", repr(task.exception()))

    # 3. gather(return_exceptions=True) collects failures next to results.
    results = await asyncio.gather(read("hall"), read("broken-3"), read("porch"), return_exceptions=True)
    for result in results:
        print("  failed:" if isinstance(result, Exception) else "  value:", result)

    # 4. An exception in a plain callback cannot propagate anywhere, so the loop passes it
    #    to its exception handler; install our own to see it.
    loop = asyncio.get_running_loop()
    seen = asyncio.Event()

    def handler(loop, context):
        exc = context["exception"]
        print(f"loop exception handler: {type(exc).__name__}: {exc}")
        seen.set()

    loop.set_exception_handler(handler)
    loop.call_soon(failing_callback)
    await seen.wait()
    loop.set_exception_handler(None)

    # 5. finally blocks run whatever happens.
    try:
        try:
            await read("broken-4")
        finally:
            print("finally block ran")
    except SensorError:
        print("and the error still propagated")


if __name__ == "__main__":
    run(main())
