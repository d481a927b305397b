"""asyncio.create_task: start work in the background, do something else, then collect it."""

import asyncio

from _runner import run


async def download(filename: str, seconds: float) -> int:
    await asyncio.sleep(seconds)
    print(f"finished {filename}")
    return len(filename) * 100


async def main() -> None:
    jobs = {
        "holiday-video.mp4": asyncio.create_task(download("holiday-video.mp4", 0.07)),
        "notes.txt": asyncio.create_task(download("notes.txt", 0.01)),
        "cat.jpg": asyncio.create_task(download("cat.jpg", 0.04)),
    }
    # Creating a task does not run it yet: nothing has finished at this point.
    print("started", len(jobs), "downloads; any done yet?", any(t.done() for t in jobs.values()))

    total = 0
    for filename, task in jobs.items():
        size = await task
        print(f"{filename}: {size} bytes")
        total += size
    print("total:", total)


if __name__ == "__main__":
    run(main())
