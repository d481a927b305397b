"""Real libraries on the loop under test: a uvicorn ASGI server driven by an httpx client, both on
the same loop. Runs on ferroloop and on the stdlib asyncio loop (the oracle)."""

from __future__ import annotations

import asyncio
import socket

import pytest

uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

WAIT = 20.0


async def echo_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": scope["path"].encode() + b":" + body})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uvicorn_server_with_httpx_client(loop):
    port = free_port()

    async def main():
        config = uvicorn.Config(echo_app, host="127.0.0.1", port=port, log_level="warning", loop="none", lifespan="on")
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            assert not serving.done(), serving.exception()
            await asyncio.sleep(0.01)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{base}/echo", content=b"x" * 100_000)
            assert response.status_code == 200
            assert response.content == b"/echo:" + b"x" * 100_000
            many = await asyncio.gather(*(client.get(f"{base}/n{i}") for i in range(50)))
            assert [r.text for r in many] == [f"/n{i}:" for i in range(50)]
        server.should_exit = True
        await serving

    loop.run_until_complete(asyncio.wait_for(main(), WAIT))
