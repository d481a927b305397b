"""Memory per idle connection: what an accepted, idle TCP connection costs a server, per loop.

For every sample a server process runs one loop with ``create_server()`` and a ``Protocol``
that keeps its transport and does nothing else. It reads its resident set size after a warm-up
connection (so lazily imported code and first-use caches are paid for), then the driver (this
process, plain blocking sockets, no event loop) opens N connections and keeps them open; once the
server has seen all N ``connection_made`` calls it collects garbage, reads its RSS again and
reports ``(after - before) / N``. Both ends of a connection are in different processes, so only
the server's side is counted: the transport, the protocol, the loop's fd table entry, the
socket's Python objects, and the allocator's overhead for all of them.

    python bench/idle_memory.py [--conns 10000] [--repeat 3] [--loops NAME=MODULE:ATTR,...] [--json PATH]

The kernel's socket buffers are not in the process's RSS and are the same for every loop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import resource
import socket
import statistics
import subprocess
import sys
from pathlib import Path

DEFAULT_LOOPS = (
    "ferroloop=ferroloop:new_event_loop,asyncio=asyncio:new_event_loop,"
    "uvloop=uvloop:new_event_loop,rloop=rloop:new_event_loop"
)
SUBJECT = "ferroloop"


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"the open-file limit ({hard}) is below the {needed} this run needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# --------------------------------------------------------------------------- server side


class Idle(asyncio.Protocol):
    """Keeps its transport; counts connections for the server's current phase."""

    def __init__(self, phase: dict) -> None:
        self.phase = phase

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        phase = self.phase
        phase["seen"] += 1
        if phase["seen"] == phase["want"] and not phase["done"].done():
            phase["done"].set_result(None)


async def serve(conns: int) -> None:
    loop = asyncio.get_running_loop()
    phase = {"seen": 0, "want": 1, "done": loop.create_future()}
    server = await loop.create_server(lambda: Idle(phase), "127.0.0.1", 0, backlog=4096)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await phase["done"]  # the warm-up connection
    await asyncio.sleep(0.2)
    gc.collect()
    before = rss_bytes()
    phase.update(seen=0, want=conns, done=loop.create_future())
    print("GO", flush=True)
    await phase["done"]
    # Let the accept path's own work finish (asyncio completes each accept in a task).
    await asyncio.sleep(0.2)
    gc.collect()
    after = rss_bytes()
    print(json.dumps({"per_conn": (after - before) / conns, "before": before, "after": after}), flush=True)
    # Hold the connections until the driver closes our stdin.
    closed = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: closed.done() or closed.set_result(None))
    await closed
    loop.remove_reader(sys.stdin.fileno())
    server.close()


def server_main(spec: str, conns: int) -> None:
    raise_fd_limit(conns + 100)
    module, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module), attr)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(conns))


# --------------------------------------------------------------------------- driver side


def sample(spec: str, conns: int) -> float:
    """Bytes of server RSS per idle connection, from one fresh server process."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--server", spec, str(conns)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    socks: list[socket.socket] = []
    try:
        line = proc.stdout.readline().split()
        if line[:1] != ["READY"]:
            raise RuntimeError(f"server did not start: {proc.stderr.read().strip()[-300:] if proc.stderr else ''}")
        address = ("127.0.0.1", int(line[1]))
        socks.append(socket.create_connection(address))
        if proc.stdout.readline().strip() != "GO":
            raise RuntimeError("server did not measure its baseline")
        for _ in range(conns):
            socks.append(socket.create_connection(address))
        result = json.loads(proc.stdout.readline())
        return float(result["per_conn"])
    finally:
        for s in socks:
            s.close()
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    if sys.argv[1:2] == ["--server"]:
        server_main(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loops", default=DEFAULT_LOOPS, help="NAME=MODULE:ATTR,... (default: %(default)s)")
    parser.add_argument("--json", help="write the samples to this path")
    args = parser.parse_args()
    raise_fd_limit(args.conns + 100)
    specs = dict(item.split("=", 1) for item in args.loops.split(","))
    loops = []
    for name, spec in specs.items():
        probe = subprocess.run([sys.executable, "-c", f"import {spec.partition(':')[0]}"], capture_output=True)
        if probe.returncode:
            print(f"note: loop {name} skipped: cannot import it", file=sys.stderr)
        else:
            loops.append(name)
    samples: dict[str, list[float]] = {n: [] for n in loops}
    failed = False
    for k in range(args.repeat):
        for name in loops[k % len(loops) :] + loops[: k % len(loops)]:
            try:
                value = sample(specs[name], args.conns)
            except (RuntimeError, ValueError, OSError) as exc:
                print(f"  {name} #{k}: FAILED {exc}", file=sys.stderr)
                failed = True
                continue
            samples[name].append(value)
            print(f"  {name} #{k}: {value:.0f} B per connection", file=sys.stderr)
    print(f"{args.conns} idle TCP connections per server, {args.repeat} samples per loop (median)\n")
    print(f"| loop | bytes per idle connection | {SUBJECT} / loop (above 1: {SUBJECT} uses more) |")
    print("|---|---:|---:|")
    subject = statistics.median(samples[SUBJECT]) if samples.get(SUBJECT) else float("nan")
    for name in loops:
        if not samples[name]:
            print(f"| {name} | FAILED | - |")
            continue
        value = statistics.median(samples[name])
        print(f"| {name} | {value:.0f} | {subject / value:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"conns": args.conns, "samples": samples}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
