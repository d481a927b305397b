"""Driving an event loop by hand: call_soon, call_later, call_at, run_until_complete, run_forever."""

import asyncio

from _runner import new_event_loop


async def job(name: str, seconds: float) -> str:
    print(f"{name} started")
    await asyncio.sleep(seconds)
    print(f"{name} finished")
    return name.upper()


def main() -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        print("running before start:", loop.is_running())
        loop.call_soon(print, "call_soon callback", "with", "arguments")
        loop.call_later(0.01, print, "call_later callback (10 ms)")
        loop.call_at(loop.time() + 0.03, print, "call_at callback (30 ms)")
        cancelled = loop.call_later(0.02, print, "this never prints")
        cancelled.cancel()

        result = loop.run_until_complete(job("first job", 0.06))
        print("run_until_complete returned", result)

        results = loop.run_until_complete(asyncio.gather(job("left", 0.02), job("right", 0.01)))
        print("gather returned", results)

        # run_forever() only returns once something calls stop().
        def stop() -> None:
            print("stopping the loop")
            loop.stop()

        loop.call_later(0.01, stop)
        loop.call_soon(lambda: print("running inside run_forever:", loop.is_running()))
        loop.run_forever()
        print("run_forever returned; running:", loop.is_running())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    print("closed:", loop.is_closed())


if __name__ == "__main__":
    main()
