"""aiohttp: a local aiohttp server and a ClientSession talking to it, both on one loop."""

import asyncio

from _runner import run
from aiohttp import ClientSession, web


async def greet(request: web.Request) -> web.Response:
    await asyncio.sleep(0.005)
    return web.Response(text=f"hello, {request.match_info['name']}")


async def add(request: web.Request) -> web.Response:
    numbers = await request.json()
    return web.json_response({"sum": sum(numbers), "count": len(numbers)})


async def start_server() -> tuple:
    app = web.Application()
    app.add_routes([web.get("/greet/{name}", greet), web.post("/add", add)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # port 0: the OS picks a free port
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def fetch_text(session: ClientSession, url: str) -> str:
    async with session.get(url) as response:
        return f"{response.status} {await response.text()}"


async def main() -> None:
    runner, base = await start_server()
    try:
        async with ClientSession() as session:
            names = ["ada", "grace", "linus"]
            pages = await asyncio.gather(*(fetch_text(session, f"{base}/greet/{n}") for n in names))
            for page in pages:
                print(page)

            async with session.post(f"{base}/add", json=[3, 4, 5]) as response:
                print(response.status, await response.json())

            async with session.get(f"{base}/missing") as response:
                print("missing page:", response.status)
    finally:
        await runner.cleanup()
    print("server stopped")


if __name__ == "__main__":
    run(main())
