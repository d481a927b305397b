"""asyncio.Lock: protect a read-await-write sequence from interleaving tasks."""

import asyncio

from _runner import run


class Account:
    def __init__(self) -> None:
        self.balance = 0
        self.lock = asyncio.Lock()

    async def deposit_unsafely(self, amount: int) -> None:
        current = self.balance
        await asyncio.sleep(0)  # another task can run here and read the same balance
        self.balance = current + amount

    async def deposit(self, amount: int) -> None:
        async with self.lock:
            current = self.balance
            await asyncio.sleep(0)
            self.balance = current + amount


async def main() -> None:
    racy = Account()
    await asyncio.gather(*(racy.deposit_unsafely(10) for _ in range(40)))
    print("without the lock, updates were lost:", racy.balance < 400)

    safe = Account()
    await asyncio.gather(*(safe.deposit(10) for _ in range(40)))
    print("with the lock the balance is", safe.balance)
    print("lock released:", not safe.lock.locked())


if __name__ == "__main__":
    run(main())
