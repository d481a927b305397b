"""Instructions per operation of micro-benchmark rows, counted by callgrind.

    python bench/instructions.py [--loops NAME=MODULE:ATTR,...] [--rows a,b] [--ops N]

Timings on a shared 2-core VM spread by tens of percent; instruction counts barely move, so
this is how the performance log compares two builds of one loop, or two loops, on a code path.
Each count is the difference between two runs of a row's sample (``micro_rows.py --sample``)
with N and 2N operations, divided by N, which cancels interpreter start-up, imports and
warm-up. The count is of instructions, not time: a change that saves instructions can still
lose to cache or pipeline effects, so a kept change also needs timings that do not get worse.

With ``--own``, each cell also gives the instructions spent in the loop's own compiled code (the
shared objects inside its package: ``_ferroloop``, uvloop's or rloop's extension), counted by
function self cost, so the rest is what the interpreter, asyncio's C tasks and futures, libc and
the kernel's entry stubs spend for the row whichever loop runs it. That rest bounds what any
loop's own code can still gain on a row. Functions of the interpreter that the loop calls (a
context copy, an allocation) count as the interpreter's.

Needs valgrind (Debian package ``valgrind``). Rows with threads (call_soon_threadsafe,
run_in_executor) count whatever interleaving valgrind's serialised threads produce, which
differs from a real run's.
"""

from __future__ import annotations

import argparse
import importlib.util
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
OBJECT_NAME = re.compile(r"c?ob=\((\d+)\)(?: (.*))?")


def self_cost_by_object(path: str) -> dict[str, int]:
    """Self instructions per object file (executable or shared library) in a callgrind output.

    Cost lines after ``ob=`` belong to that object; the line after ``calls=`` is the inclusive
    cost of a call, already counted where the callee runs, so it is skipped. Names are compressed:
    ``ob=(3) /path`` the first time, ``ob=(3)`` after.
    """
    names: dict[str, str] = {}
    costs: dict[str, int] = {}
    current = ""
    skip = False
    with open(path) as f:
        for line in f:
            if skip:
                skip = False
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) > 1:
                    costs[current] = costs.get(current, 0) + int(parts[1])
            elif line.startswith(("ob=", "cob=")):
                match = OBJECT_NAME.match(line.strip())
                if match and match.group(2):
                    names[match.group(1)] = match.group(2)
                if line.startswith("ob=") and match:
                    current = names.get(match.group(1), match.group(1))
            elif line.startswith("calls="):
                skip = True
    return costs


def package_dir(spec: str) -> str | None:
    """The directory of the package a loop spec (``NAME=MODULE:ATTR``) comes from, if it holds compiled code."""
    module = spec.rpartition("=")[2].partition(":")[0]
    found = importlib.util.find_spec(module.partition(".")[0])
    if found is None or not found.submodule_search_locations:
        return None
    directory = os.path.realpath(next(iter(found.submodule_search_locations)))
    has_extension = any(name.endswith(".so") for _, _, files in os.walk(directory) for name in files)
    return directory + os.sep if has_extension else None


def instructions(spec: str, row: str, ops: int) -> tuple[int, int]:
    """Instructions executed by one sample of ``row`` with ``ops`` operations: (all, the loop's own)."""
    own_dir = package_dir(spec)
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
        costs = self_cost_by_object(os.path.join(tmp, "out")) if own_dir else {}
    own = sum(c for name, c in costs.items() if os.path.realpath(name).startswith(own_dir or "\0"))
    return int(match.group(1).replace(",", "")), own


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", default=DEFAULT_LOOPS, help="comma separated NAME=MODULE:ATTR")
    parser.add_argument("--rows", default="call_soon,sleep0_pingpong", help="comma separated rows")
    parser.add_argument("--ops", type=int, default=20_000, help="N: operations of the smaller run")
    parser.add_argument("--own", action="store_true", help="also count the loop's own compiled code (see above)")
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
    head = [f"{lp.name} instr/op" for lp in loops]
    if args.own:
        head += [f"{lp.name} own" for lp in loops]
    print("| row | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    for row in rows:
        totals, owns = [], []
        for lp in loops:
            small, small_own = instructions(lp.spec, row, args.ops)
            large, large_own = instructions(lp.spec, row, 2 * args.ops)
            totals.append(str(round((large - small) / args.ops)))
            owns.append(str(round((large_own - small_own) / args.ops)) if package_dir(lp.spec) else "-")
        cells = totals + owns if args.own else totals
        print(f"| {row} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
