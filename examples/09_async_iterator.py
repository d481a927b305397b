"""An async iterator class: __aiter__ returns self, __anext__ awaits and raises StopAsyncIteration."""

import asyncio

from _runner import run


class Paginator:
    """Yields the items of a fake paged API one page fetch at a time."""

    def __init__(self, items: list, page_size: int) -> None:
        self.items = items
        self.page_size = page_size
        self.buffer = []
        self.next_page = 0

    def __aiter__(self) -> "Paginator":
        return self

    async def __anext__(self):
        if not self.buffer:
            start = self.next_page * self.page_size
            if start >= len(self.items):
                raise StopAsyncIteration
            await asyncio.sleep(0.01)  # one request per page
            self.buffer = self.items[start : start + self.page_size]
            print(f"  (fetched page {self.next_page})")
            self.next_page += 1
        return self.buffer.pop(0)


async def main() -> None:
    letters = list("asyncio")
    async for item in Paginator(letters, page_size=3):
        print("item:", item)

    # Async comprehensions work with any async iterator.
    upper = [c.upper() async for c in Paginator(letters, page_size=4) if c not in "aeiou"]
    print("consonants:", "".join(upper))


if __name__ == "__main__":
    run(main())
