"""Instructions per operation of micro-benchmark rows, counted by callgrind.

    python bench/instructions.py [--loops NAME=MODULE:ATTR,...] [--rows a,b] [--ops N]

Timings on a shared 2-core VM spread by tens of percent; instruction counts barely move, so
this is how the performance log compares two builds of one loop, or two loops, on a code path.
Each count is the difference between two runs of a row's sample (``micro_rows.py --sample``)
with N and 2N operations, divided by N, which cancels interpreter start-up, imports and
warm-up. The count is of instructions, not time: a change that saves instructions can still
lose to cache or pipeline effects, so a kept change also needs timings that do not get worse.

Needs valgrind (Debian package ``valgrind``). Rows with threads (call_soon_threadsafe,
run_in_executor) count whatever interleaving valgrind's serialised threads produce, which
differs from a real run's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from micro import parse_loops
from micro_rows import ROWS

ROWS_SCRIPT = Path(__file__).resolve().with_name("micro_rows.py")
DEFAULT_LOOPS = "ferroloop=ferroloop:new_event_loop,uvloop=uvloop:new_event_loop"
COLLECTED = re.compile(r"Collected : ([0-9,]+)")


def instructions(spec: str, row: str, ops: int) -> int:
    """Instructions executed by one sample of ``row`` with ``ops`` operations."""
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={os.path.join(tmp, 'out')}",
                # The interpreter itself, not a wrapper script (pyenv's shims are shell scripts).
                os.path.realpath(sys.executable),
                str(ROWS_SCRIPT),
                "--sample",
                spec,
                row,
                str(ops),
                "0",
            ],
            capture_output=True,
            text=True,
            check=False,
            # A fixed hash seed: string hashes decide dict layouts, and with them instruction counts.
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    match = COLLECTED.search(result.stderr)
    if result.returncode or not match:
        raise RuntimeError(f"{spec} {row}: callgrind run failed:\n{result.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", default=DEFAULT_LOOPS, help="comma separated NAME=MODULE:ATTR")
    parser.add_argument("--rows", default="call_soon,sleep0_pingpong", help="comma separated rows")
    parser.add_argument("--ops", type=int, default=20_000, help="N: operations of the smaller run")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"unknown rows: {', '.join(unknown)} (known: {', '.join(ROWS)})", file=sys.stderr)
        return 2
    loops = parse_loops(args.loops)
    print("| row | " + " | ".join(f"{lp.name} instr/op" for lp in loops) + " |")
    print("|---|" + "---:|" * len(loops))
    for row in rows:
        cells = []
        for lp in loops:
            small = instructions(lp.spec, row, args.ops)
            large = instructions(lp.spec, row, 2 * args.ops)
            cells.append(str(round((large - small) / args.ops)))
        print(f"| {row} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
