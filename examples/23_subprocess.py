"""Subprocesses: run a child with pipes, feed its stdin, read its output, get its exit status."""

import asyncio
import sys

from _runner import run

CHILD = """
import sys
words = sys.stdin.read().split()
for word in sorted(words):
    print(word)
print(len(words), "words", file=sys.stderr)
sys.exit(3)
"""


async def main() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(b"pear apple fig banana")
    print("stdout:", out.decode().split())
    print("stderr:", err.decode().strip())
    print("exit status:", proc.returncode)

    # Line by line while the child runs, and a large output (bigger than a pipe's buffer).
    big = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('x' * 1_000_000)", stdout=asyncio.subprocess.PIPE, limit=2**21
    )
    line = await big.stdout.readuntil(b"\n")  # type: ignore[union-attr]
    print("read", len(line) - 1, "bytes in one line; exit status", await big.wait())


if __name__ == "__main__":
    run(main())
