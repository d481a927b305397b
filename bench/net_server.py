"""The servers the network benchmarks measure, run on one event loop in one process.

    python bench/net_server.py LOOP_SPEC MODE ADDRESS

LOOP_SPEC is a loop factory as ``module:attr``; MODE is one of

- ``sock``: ``loop.sock_accept()`` and a task per connection doing ``sock_recv()`` /
  ``sock_sendall()``;
- ``streams``: ``asyncio.start_server()`` with ``reader.read()`` / ``writer.write()`` +
  ``drain()``;
- ``protocol``: an ``asyncio.Protocol`` whose ``data_received`` writes the data back;
- ``http``: a minimal HTTP/1.1 keep-alive server as a ``Protocol`` (for wrk);
- ``tls``: the ``protocol`` echo over TLS (``create_server(ssl=...)``), with the test
  certificate that ships with CPython's test package (``test/certdata/keycert.pem``);
- ``app``: an aiohttp web application answering ``GET /`` (for wrk): a real framework's
  parser, routing and response code on top of the loop's transports;
- ``asgi``: the same answer from a minimal ASGI application served by uvicorn (with httptools),
  which writes a response's head and its body with two ``transport.write()`` calls.

ADDRESS is ``tcp:HOST:PORT`` (port 0 picks one) or ``unix:PATH``. Once listening, the
server prints ``READY ADDRESS`` (with the real port) and serves until stdin is closed, so the
driver's exit always ends it.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import ssl
import sys

READ_SIZE = 256 * 1024
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\nHello, World!"
)


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class HttpProtocol(asyncio.Protocol):
    """Answers every request (headers only, no body) with a fixed response; pipelining works."""

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        pending = self.pending + data if self.pending else data
        count = pending.count(b"\r\n\r\n")
        if count:
            self.transport.write(HTTP_RESPONSE * count)
            pending = pending[pending.rfind(b"\r\n\r\n") + 4 :]
        self.pending = pending


async def echo_with_sock_calls(loop, conn):
    try:
        while data := await loop.sock_recv(conn, READ_SIZE):
            await loop.sock_sendall(conn, data)
    except ConnectionError:
        pass
    finally:
        conn.close()


async def accept_forever(loop, listener):
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(echo_with_sock_calls(loop, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def echo_with_streams(reader, writer):
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def listening_socket(address: str) -> socket.socket:
    if address.startswith("unix:"):
        path = address[5:]
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        host, port = address.removeprefix("tcp:").rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    return f"unix:{name}" if sock.family == socket.AF_UNIX else f"tcp:{name[0]}:{name[1]}"


def where(address: str) -> dict:
    """create_server()/start_server() arguments for ADDRESS (host and port, or path): every loop
    then binds its own socket, as applications do (rloop 0.5 rejects sock= with EBADF)."""
    if address.startswith("unix:"):
        path = address[5:]
        if os.path.exists(path):
            os.unlink(path)
        return {"path": path}
    host, port = address.removeprefix("tcp:").rsplit(":", 1)
    return {"host": host, "port": int(port), "reuse_address": True, "backlog": 1024}


def server_tls_context() -> ssl.SSLContext:
    """A server context with the self-signed certificate of CPython's test package (key and
    certificate in one file): a benchmark needs a certificate, not a trusted one."""
    import test

    path = os.path.join(os.path.dirname(test.__file__), "certdata", "keycert.pem")
    if not os.path.exists(path):  # Python < 3.11.4 kept the file at the package's top
        path = os.path.join(os.path.dirname(test.__file__), "keycert.pem")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(path)
    return context


async def start_app(address: str):
    """An aiohttp application with one route, served by aiohttp's own runner on this loop."""
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="Hello, World!")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = address.removeprefix("tcp:").rsplit(":", 1)
    site = web.TCPSite(runner, host, int(port), reuse_address=True, backlog=1024)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"tcp:{host}:{port}"


async def start_asgi(address: str):
    """A minimal ASGI application served by uvicorn's httptools protocol on this loop."""
    import uvicorn

    body = b"Hello, World!"
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
    }
    response = {"type": "http.response.body", "body": body}

    async def app(scope, receive, send):
        await send(start)
        await send(response)

    host, port = address.removeprefix("tcp:").rsplit(":", 1)
    config = uvicorn.Config(
        app, host=host, port=int(port), http="httptools", lifespan="off", access_log=False, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise SystemExit("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    return (server, task), describe(server.servers[0].sockets[0])


async def serve(mode: str, address: str) -> None:
    loop = asyncio.get_running_loop()
    unix = address.startswith("unix:")
    if mode == "sock":
        sock = listening_socket(address)
        server_task = loop.create_task(accept_forever(loop, sock))
        listening = describe(sock)
    elif mode == "streams":
        start = asyncio.start_unix_server if unix else asyncio.start_server
        server = await start(echo_with_streams, limit=READ_SIZE, **where(address))
        listening = describe(server.sockets[0])
    elif mode in ("protocol", "http", "tls"):
        factory = HttpProtocol if mode == "http" else EchoProtocol
        create = loop.create_unix_server if unix else loop.create_server
        tls = {"ssl": server_tls_context()} if mode == "tls" else {}
        server = await create(factory, **where(address), **tls)
        listening = describe(server.sockets[0])
    elif mode == "app":
        server, listening = await start_app(address)
    elif mode == "asgi":
        (server, server_task), listening = await start_asgi(address)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("READY", listening, flush=True)
    # Serve until the driver closes our stdin (or exits).
    closed = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: closed.done() or closed.set_result(None))
    await closed
    loop.remove_reader(sys.stdin.fileno())
    if mode == "sock":
        server_task.cancel()
        sock.close()
    elif mode == "app":
        await server.cleanup()
    elif mode == "asgi":
        server.should_exit = True
        await server_task
    else:
        server.close()
        await server.wait_closed()


def main() -> None:
    spec, mode, address = sys.argv[1:4]
    module, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module), attr)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(mode, address))


if __name__ == "__main__":
    main()
