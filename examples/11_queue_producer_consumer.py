"""asyncio.Queue: a producer feeds a bounded queue, workers drain it, join() waits for the lot."""

import asyncio

from _runner import run


async def bake(queue: asyncio.Queue, orders: list) -> None:
    for order in orders:
        await queue.put(order)  # waits while the queue is full
        print(f"queued {order}")
    print("all orders queued")


async def deliver(name: str, queue: asyncio.Queue, delivered: list) -> None:
    while True:
        order = await queue.get()
        try:
            await asyncio.sleep(0.002 * len(order))
            delivered.append(order)
        finally:
            queue.task_done()


async def main() -> None:
    orders = ["bagel", "muffin", "croissant", "scone", "baguette", "pretzel", "brioche"]
    queue: asyncio.Queue = asyncio.Queue(maxsize=2)
    delivered: list = []

    couriers = [asyncio.create_task(deliver(f"courier-{i}", queue, delivered)) for i in range(3)]
    await bake(queue, orders)
    await queue.join()  # every queued order has been marked done
    print("queue empty:", queue.empty())
    print("delivered:", sorted(delivered))
    print("nothing lost:", sorted(delivered) == sorted(orders))

    for courier in couriers:
        courier.cancel()
    results = await asyncio.gather(*couriers, return_exceptions=True)
    print("couriers stopped:", all(isinstance(r, asyncio.CancelledError) for r in results))


if __name__ == "__main__":
    run(main())
