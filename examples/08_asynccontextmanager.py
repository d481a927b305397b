"""contextlib.asynccontextmanager: write an async context manager as a generator."""

import asyncio
from contextlib import asynccontextmanager

from _runner import run

ledger = {"checking": 100, "savings": 500}


@asynccontextmanager
async def transaction(label: str):
    print(f"[{label}] begin")
    await asyncio.sleep(0.01)
    snapshot = dict(ledger)
    try:
        yield ledger
    except Exception as exc:
        ledger.clear()
        ledger.update(snapshot)
        print(f"[{label}] rollback ({exc})")
        raise
    else:
        await asyncio.sleep(0.01)
        print(f"[{label}] commit")
    finally:
        print(f"[{label}] end")


async def transfer(label: str, src: str, dst: str, amount: int) -> None:
    async with transaction(label) as accounts:
        accounts[src] -= amount
        await asyncio.sleep(0.005)
        if accounts[src] < 0:
            raise ValueError(f"{src} would be overdrawn")
        accounts[dst] += amount


async def main() -> None:
    await transfer("t1", "savings", "checking", 150)
    print("after t1:", ledger)
    try:
        await transfer("t2", "checking", "savings", 1000)
    except ValueError as exc:
        print("t2 failed:", exc)
    print("after t2:", ledger)


if __name__ == "__main__":
    run(main())
