"""gather with return_exceptions=True: failures come back as values instead of being raised."""

import asyncio

from _runner import run


class PaymentDeclined(Exception):
    pass


async def charge(customer: str, amount: int) -> str:
    await asyncio.sleep(amount / 10000)
    if amount > 300:
        raise PaymentDeclined(f"{customer}: {amount} is over the limit")
    return f"{customer} paid {amount}"


async def main() -> None:
    orders = [("ann", 120), ("bob", 450), ("cid", 80), ("dee", 999)]

    results = await asyncio.gather(*(charge(c, a) for c, a in orders), return_exceptions=True)
    for (customer, _), result in zip(orders, results):
        if isinstance(result, Exception):
            print(f"{customer}: FAILED with {type(result).__name__}: {result}")
        else:
            print(f"{customer}: ok, {result}")

    # Without return_exceptions the first failure is raised out of gather.
    try:
        await asyncio.gather(*(charge(c, a) for c, a in orders))
    except PaymentDeclined as exc:
        print("without return_exceptions gather raised:", exc)


if __name__ == "__main__":
    run(main())
