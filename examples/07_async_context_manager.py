"""An async context manager class: __aenter__ and __aexit__ may await."""

import asyncio

from _runner import run


class Reservation:
    """Holds a table at a restaurant for the duration of an ``async with`` block."""

    def __init__(self, guest: str) -> None:
        self.guest = guest
        self.table = None

    async def __aenter__(self) -> "Reservation":
        await asyncio.sleep(0.01)  # pretend to call the restaurant
        self.table = len(self.guest)
        print(f"{self.guest}: got table {self.table}")
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        await asyncio.sleep(0.01)
        outcome = "cleanly" if exc_type is None else f"after {exc_type.__name__}: {exc}"
        print(f"{self.guest}: table {self.table} released {outcome}")
        # Returning True swallows a LookupError raised inside the block; anything else propagates.
        return exc_type is not None and issubclass(exc_type, LookupError)

    async def order(self, dish: str) -> str:
        await asyncio.sleep(0.005)
        if dish not in ("soup", "salad"):
            raise KeyError(dish)
        return f"{dish} for table {self.table}"


async def main() -> None:
    async with Reservation("alice") as booking:
        print(await booking.order("soup"))

    async with Reservation("bob") as booking:
        print(await booking.order("salad"))
        print(await booking.order("lobster"))
    print("bob's KeyError was swallowed by __aexit__")

    try:
        async with Reservation("carol"):
            raise RuntimeError("fire alarm")
    except RuntimeError as exc:
        print("carol's error reached the caller:", exc)


if __name__ == "__main__":
    run(main())
