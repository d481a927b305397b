"""asyncio.wait: react to whichever task finishes first, then use a timeout for the rest."""

import asyncio

from _runner import run


async def ask_mirror(name: str, latency: float) -> str:
    await asyncio.sleep(latency)
    return f"answer from {name}"


async def main() -> None:
    mirrors = {"fast": 0.01, "medium": 0.5, "slow": 0.8}
    tasks = [asyncio.create_task(ask_mirror(n, s), name=n) for n, s in mirrors.items()]

    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    print("first done:", [t.result() for t in done])
    print("still pending:", sorted(t.get_name() for t in pending))

    # Nobody needs the other answers any more.
    for task in pending:
        task.cancel()
    await asyncio.wait(pending)
    print("cancelled:", sorted(t.get_name() for t in tasks if t.cancelled()))

    # wait() with a timeout never raises: it reports what finished in time.
    quick = asyncio.create_task(asyncio.sleep(0.01, result="quick"), name="quick")
    sleepy = asyncio.create_task(asyncio.sleep(5, result="sleepy"), name="sleepy")
    done, pending = await asyncio.wait({quick, sleepy}, timeout=0.1)
    print("within the timeout:", sorted(t.result() for t in done))
    print("past the timeout:", sorted(t.get_name() for t in pending))
    sleepy.cancel()
    await asyncio.gather(sleepy, return_exceptions=True)
    print("sleepy cancelled:", sleepy.cancelled())


if __name__ == "__main__":
    run(main())
