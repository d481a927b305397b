"""Named tasks: give a task a name, read it back from inside and outside, rename it."""

import asyncio

from _runner import run


async def heartbeat(beats: int) -> str:
    me = asyncio.current_task()
    for n in range(1, beats + 1):
        print(f"[{me.get_name()}] beat {n}")
        await asyncio.sleep(0.01)
    return f"{me.get_name()} stopped after {beats} beats"


async def main() -> None:
    task = asyncio.create_task(heartbeat(3), name="pulse-monitor")
    print("name:", task.get_name())
    print("done before awaiting:", task.done())

    await asyncio.sleep(0.015)  # let it beat a couple of times, then rename it
    task.set_name("pulse-monitor-renamed")

    print(await task)
    print("done after awaiting:", task.done())
    print("main runs in a task too:", asyncio.current_task() is not None)


if __name__ == "__main__":
    run(main())
