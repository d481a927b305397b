"""aiohttp's server and client together on the loop under test: routing, request bodies,
streamed responses, keep-alive reuse and WebSockets. Runs on ferroloop and on the stdlib asyncio
loop (the oracle)."""

from __future__ import annotations

import asyncio

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

WAIT = 20.0


def run(loop, aw, timeout=WAIT):
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


def make_app() -> web.Application:
    async def hello(request):
        return web.Response(text=f"hello {request.match_info['name']}")

    async def echo(request):
        body = await request.read()
        return web.Response(body=body[::-1], headers={"X-Length": str(len(body))})

    async def stream(request):
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(100):
            await response.write(b"%05d" % i * 200)
        await response.write_eof()
        return response

    async def websocket(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application()
    app.router.add_get("/hello/{name}", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", websocket)
    return app


async def serve():
    runner = web.AppRunner(make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def test_aiohttp_client_and_server(loop):
    async def main():
        runner, base = await serve()
        try:
            async with aiohttp.ClientSession() as session:
                for name in ("a", "b", "c"):  # keep-alive: one connection, reused
                    async with session.get(f"{base}/hello/{name}") as resp:
                        assert resp.status == 200
                        assert await resp.text() == f"hello {name}"
                body = bytes(range(256)) * 4096
                async with session.post(f"{base}/echo", data=body) as resp:
                    assert resp.headers["X-Length"] == str(len(body))
                    assert await resp.read() == body[::-1]
                async with session.get(f"{base}/stream") as resp:
                    chunks = [chunk async for chunk in resp.content.iter_chunked(4096)]
                    assert b"".join(chunks) == b"".join(b"%05d" % i * 200 for i in range(100))
                async with session.get(f"{base}/missing") as resp:
                    assert resp.status == 404
        finally:
            await runner.cleanup()

    run(loop, main())


def test_aiohttp_websocket_round_trips(loop):
    async def main():
        runner, base = await serve()
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(f"{base}/ws") as ws:
                await ws.send_str("shout")
                assert (await ws.receive()).data == "SHOUT"
                await ws.send_bytes(b"\x01\x02\x03")
                assert (await ws.receive()).data == b"\x03\x02\x01"
                await ws.close()
        finally:
            await runner.cleanup()

    run(loop, main())


def test_aiohttp_many_concurrent_requests(loop):
    async def main():
        runner, base = await serve()
        try:
            connector = aiohttp.TCPConnector(limit=20)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def one(i):
                    async with session.get(f"{base}/hello/{i}") as resp:
                        return await resp.text()

                results = await asyncio.gather(*(one(i) for i in range(200)))
                assert results == [f"hello {i}" for i in range(200)]
        finally:
            await runner.cleanup()

    run(loop, main())
