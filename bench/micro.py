"""Micro-benchmarks of asyncio event loops, side by side in one run.

Measures ferroloop, the stdlib asyncio loop and uvloop (or any loops given as
``--loops name=module:attr,...``) on the rows defined in micro_rows.py, and
prints, per group of rows, a Markdown table of median throughputs with
throughput ratios and their geometric means, and a table of the samples'
peak RSS. See bench/README.md for how to run it and read it.

Method, in short: every sample runs in a fresh subprocess on a fresh loop,
with a warm-up run of the same body before the timed one; samples are
interleaved round robin across loops (row r, sample k: each loop once, in an
order rotated by k) so that drift of a noisy machine hits every loop alike;
a loop that cannot be imported is skipped with a note; a sample whose result
check fails, crashes or times out turns its cell into FAILED.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from micro_rows import GATHER_WIDTH, GROUPS, ROWS

ROWS_SCRIPT = Path(__file__).resolve().with_name("micro_rows.py")

DEFAULT_LOOPS = "ferroloop=ferroloop:new_event_loop,asyncio=asyncio:new_event_loop,uvloop=uvloop:new_event_loop"
DEFAULT_SUBJECT = "ferroloop"
BASELINE = "asyncio"

# Operations per timed sample at --scale 1, picked so one sample takes about
# 0.3 s on the stdlib loop on a small (2 core) machine. The warm-up run before
# it does WARMUP_FRACTION of that.
FULL_OPS = {
    "call_soon": 400_000,
    "call_later_half_cancelled": 100_000,
    "create_task_await": 200_000,
    "sleep0_pingpong": 200_000,
    "future_roundtrip": 60_000,
    "call_soon_threadsafe": 80_000,
    "gather_10k_sleep0": 4 * GATHER_WIDTH,
    "queue_4_consumers": 100_000,
    "run_in_executor": 15_000,
    "subprocess_spawn": 300,
    "pipe_throughput": 320,  # MiB
}
WARMUP_FRACTION = 0.1
QUICK_SCALE = 0.05
FULL_REPEAT = 5
QUICK_REPEAT = 3
FULL_TIMEOUT = 20.0
QUICK_TIMEOUT = 10.0

assert set(FULL_OPS) == set(ROWS), "FULL_OPS and micro_rows.ROWS disagree"
ROW_GROUP = {row: group for group, rows in GROUPS.items() for row in rows}
# What one op of a row is, where it is not obvious from a count (shown in the ops/sample column).
OPS_UNIT = {"pipe_throughput": " MiB"}


@dataclass
class Loop:
    name: str
    spec: str
    ok: bool = False
    version: str = ""
    loop_type: str = ""
    error: str = ""


@dataclass
class Sample:
    row: str
    loop: str
    k: int
    ok: bool
    ops: int
    seconds: float | None = None
    ops_per_sec: float | None = None
    error: str = ""
    wall: float = 0.0
    peak_rss_kib: int | None = None  # the child's peak RSS, interpreter baseline included


@dataclass
class Cell:
    median: float | None = None
    spread: float | None = None  # half of (max - min), relative to the median
    samples: int = 0
    error: str = ""  # non-empty: the cell is FAILED (or not run)
    peak_rss_kib: float | None = None  # median over the samples that reported one

    @property
    def failed(self) -> bool:
        return bool(self.error)


@dataclass
class Plan:
    groups: list[str]  # selected groups that have selected rows, in display order
    rows: list[str]
    ops: dict[str, int]
    warmup: dict[str, int]
    repeat: int
    timeout: float
    mode: str
    loops: list[Loop] = field(default_factory=list)


# --------------------------------------------------------------------------- arguments


def parse_loops(text: str) -> list[Loop]:
    loops = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, target = part.partition("=")
        if not eq or ":" not in target or not name:
            raise SystemExit(f"bad loop spec {part!r}: expected NAME=MODULE:ATTR")
        if any(lp.name == name for lp in loops):
            raise SystemExit(f"loop name {name!r} given twice")
        loops.append(Loop(name=name, spec=part))
    if not loops:
        raise SystemExit("no loops given")
    return loops


def scaled_ops(row: str, scale: float) -> int:
    ops = max(1, round(FULL_OPS[row] * scale))
    if row == "gather_10k_sleep0":
        # Whole gathers of GATHER_WIDTH coroutines, at least one.
        ops = max(1, round(ops / GATHER_WIDTH)) * GATHER_WIDTH
    return ops


def selection(option: str | None, what: str, known: Iterable[str]) -> list[str] | None:
    """The names a comma separated option selects (None: all), refusing unknown ones."""
    if not option:
        return None
    known = list(known)
    wanted = [w.strip() for w in option.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return wanted


def build_plan(args: argparse.Namespace) -> Plan:
    groups = list(GROUPS)
    wanted_groups = selection(args.groups, "groups", GROUPS)
    if wanted_groups is not None:
        groups = [g for g in groups if g in wanted_groups]
    rows = [r for g in groups for r in GROUPS[g]]
    wanted_rows = selection(args.rows, "rows", FULL_OPS)
    if wanted_rows is not None:
        rows = [r for r in rows if r in wanted_rows]
    if not rows:
        raise SystemExit("no rows selected: --rows names none of the rows of the --groups given")
    groups = [g for g in groups if any(ROW_GROUP[r] == g for r in rows)]
    scale = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)
    ops = {r: scaled_ops(r, scale) for r in rows}
    warmup = {r: max(1, int(ops[r] * WARMUP_FRACTION)) for r in rows}
    repeat = args.repeat if args.repeat is not None else (QUICK_REPEAT if args.quick else FULL_REPEAT)
    timeout = args.timeout if args.timeout is not None else (QUICK_TIMEOUT if args.quick else FULL_TIMEOUT)
    mode = ("quick" if args.quick else "full") + (f", scale {scale:g}" if args.scale is not None else "")
    return Plan(groups=groups, rows=rows, ops=ops, warmup=warmup, repeat=repeat, timeout=timeout, mode=mode)


# --------------------------------------------------------------------------- subprocesses


def _run_child(argv: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run micro_rows.py with argv; return (its JSON result or None, error text).

    The error text is empty on success. A failed child that still printed its
    JSON result returns it too (with the error), for the fields it carries.
    """
    cmd = [sys.executable, str(ROWS_SCRIPT), *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g} s (hung, or lost a callback)"
    lines = proc.stdout.strip().splitlines()
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    if isinstance(result, dict) and result.get("ok") and proc.returncode == 0:
        return result, ""
    if isinstance(result, dict) and result.get("error"):
        return result, str(result["error"])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return result if isinstance(result, dict) else None, f"exit code {proc.returncode}: {tail}"


def probe_loops(loops: list[Loop], timeout: float) -> None:
    for lp in loops:
        result, error = _run_child(["--probe", lp.spec], timeout)
        if error or result is None:
            lp.error = error or "no result"
            continue
        lp.ok = True
        lp.version = str(result.get("version", ""))
        lp.loop_type = str(result.get("loop_type", ""))


def run_sample(plan: Plan, lp: Loop, row: str, k: int) -> Sample:
    ops = plan.ops[row]
    t0 = time.perf_counter()
    result, error = _run_child(["--sample", lp.spec, row, str(ops), str(plan.warmup[row])], plan.timeout)
    wall = time.perf_counter() - t0
    rss = result.get("peak_rss_kib") if result is not None else None
    rss = int(rss) if isinstance(rss, (int, float)) else None
    if error or result is None:
        return Sample(row=row, loop=lp.name, k=k, ok=False, ops=ops, error=error, wall=wall, peak_rss_kib=rss)
    seconds = float(result["seconds"])
    if not seconds > 0 or int(result["ops"]) != ops:
        return Sample(
            row=row, loop=lp.name, k=k, ok=False, ops=ops, error=f"bad sample {result}", wall=wall, peak_rss_kib=rss
        )
    return Sample(
        row=row,
        loop=lp.name,
        k=k,
        ok=True,
        ops=ops,
        seconds=seconds,
        ops_per_sec=ops / seconds,
        wall=wall,
        peak_rss_kib=rss,
    )


def run_all(plan: Plan, progress: bool) -> list[Sample]:
    """Row by row; within a row, sample k of every loop before sample k + 1."""
    loops = [lp for lp in plan.loops if lp.ok]
    samples: list[Sample] = []
    failed: set[tuple[str, str]] = set()
    total = len(plan.rows) * plan.repeat * len(loops)
    done = 0
    for row in plan.rows:
        for k in range(plan.repeat):
            shift = k % len(loops) if loops else 0
            for lp in loops[shift:] + loops[:shift]:
                done += 1
                if (row, lp.name) in failed:
                    # The cell is FAILED already; do not spend more time on it.
                    continue
                s = run_sample(plan, lp, row, k)
                samples.append(s)
                if not s.ok:
                    failed.add((row, lp.name))
                if progress:
                    shown = f"{fmt_rate(s.ops_per_sec)} ops/s" if s.ok else f"FAILED: {s.error}"
                    print(f"[{done}/{total}] {row} #{k + 1} {lp.name}: {shown}", file=sys.stderr, flush=True)
    return samples


# --------------------------------------------------------------------------- statistics


def summarize(plan: Plan, samples: list[Sample]) -> dict[str, dict[str, Cell]]:
    cells: dict[str, dict[str, Cell]] = {}
    for row in plan.rows:
        cells[row] = {}
        for lp in plan.loops:
            if not lp.ok:
                continue
            mine = [s for s in samples if s.row == row and s.loop == lp.name]
            bad = [s for s in mine if not s.ok]
            if bad:
                cells[row][lp.name] = Cell(samples=len(mine), error=bad[0].error)
                continue
            rates = [s.ops_per_sec for s in mine if s.ops_per_sec is not None]
            if not rates:
                cells[row][lp.name] = Cell(error="no samples")
                continue
            med = statistics.median(rates)
            spread = (max(rates) - min(rates)) / 2 / med
            rss = [s.peak_rss_kib for s in mine if s.peak_rss_kib is not None]
            cells[row][lp.name] = Cell(
                median=med,
                spread=spread,
                samples=len(rates),
                peak_rss_kib=statistics.median(rss) if rss else None,
            )
    return cells


def pick_subject(loops: list[Loop], wanted: str) -> str | None:
    """The loop whose ratios against all others are shown.

    ``wanted`` if it is available; otherwise the first available loop other
    than the stdlib baseline, so that without ferroloop the table still shows
    uvloop/asyncio.
    """
    names = [lp.name for lp in loops if lp.ok]
    if wanted in names:
        return wanted
    others = [n for n in names if n != BASELINE]
    if others and len(names) > 1:
        return others[0]
    return None


def ratio_table(
    plan: Plan, cells: dict[str, dict[str, Cell]], subject: str | None, rows: list[str]
) -> tuple[list[str], dict[str, dict[str, float | None]], dict[str, tuple[float | None, int]]]:
    """Ratio columns (subject/other), per-row ratios, and per-column geometric means over ``rows``."""
    if subject is None:
        return [], {}, {}
    others = [lp.name for lp in plan.loops if lp.ok and lp.name != subject]
    columns = [f"{subject}/{o}" for o in others]
    ratios: dict[str, dict[str, float | None]] = {}
    for row in rows:
        ratios[row] = {}
        a = cells[row].get(subject)
        for o, col in zip(others, columns):
            b = cells[row].get(o)
            ok = a and b and not a.failed and not b.failed and a.median and b.median
            ratios[row][col] = a.median / b.median if ok else None
    geo: dict[str, tuple[float | None, int]] = {}
    for col in columns:
        vals = [ratios[row][col] for row in rows if ratios[row][col]]
        geo[col] = (math.exp(statistics.fmean(math.log(v) for v in vals)) if vals else None, len(vals))
    return columns, ratios, geo


# --------------------------------------------------------------------------- report


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def fmt_ops(n: int, unit: str = "") -> str:
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k{unit}"
    return f"{n}{unit}"


def group_rows(plan: Plan, group: str) -> list[str]:
    return [r for r in plan.rows if ROW_GROUP[r] == group]


def command_line() -> str:
    exe = os.path.basename(sys.executable) or "python"
    return shlex.join([exe, *sys.argv])


def git_revision() -> str:
    try:
        root = ROWS_SCRIPT.parent
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=False
        )
        if rev.returncode != 0:
            return "no commit yet"
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()
        return rev.stdout.strip() + (" (work tree has changes)" if dirty else "")
    except OSError:
        return "unknown"


def environment() -> dict:
    return {
        "command": command_line(),
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "git": git_revision(),
        "asyncio_debug": bool(os.environ.get("PYTHONASYNCIODEBUG")) or sys.flags.dev_mode,
    }


def render(
    plan: Plan,
    env: dict,
    cells: dict[str, dict[str, Cell]],
    subject: str | None,
    wall: float,
) -> str:
    out: list[str] = []
    w = out.append
    w("## ferroloop micro-benchmarks")
    w("")
    w("```")
    w(f"$ {env['command']}")
    w("```")
    w("")
    w(f"- Python {env['python']} ({env['implementation']}), {env['platform']}, {env['cpus']} CPUs, git {env['git']}")
    for lp in plan.loops:
        if lp.ok:
            w(f"- {lp.name} {lp.version}: `{lp.loop_type}` from `{lp.spec}`")
        else:
            w(f"- {lp.name}: SKIPPED, cannot be imported or started from `{lp.spec}`: {lp.error}")
    w(
        f"- mode {plan.mode}: {plan.repeat} samples per cell, each in a fresh subprocess after a warm-up "
        f"of {WARMUP_FRACTION:.0%} of its ops; loops interleaved round robin"
    )
    if env["asyncio_debug"]:
        w("- WARNING: asyncio debug mode is on (PYTHONASYNCIODEBUG or -X dev); numbers are not representative")
    w("")

    loops = [lp.name for lp in plan.loops if lp.ok]
    if not loops:
        w("No loop could be imported; nothing was measured.")
        return "\n".join(out) + "\n"
    any_ratios = False
    for group in plan.groups:
        rows = group_rows(plan, group)
        columns, ratios, geo = ratio_table(plan, cells, subject, rows)
        any_ratios = any_ratios or bool(columns)
        w(f"### {group}")
        w("")
        header = ["row", "ops/sample", *[f"{n} ops/s" for n in loops], *columns]
        w("| " + " | ".join(header) + " |")
        w("|" + "|".join(["---", "---:", *["---:"] * (len(loops) + len(columns))]) + "|")
        for row in rows:
            line = [row, fmt_ops(plan.ops[row], OPS_UNIT.get(row, ""))]
            for n in loops:
                c = cells[row][n]
                line.append("FAILED" if c.failed else f"{fmt_rate(c.median)} ±{c.spread:.0%}")
            for col in columns:
                r = ratios[row][col]
                line.append(f"{r:.2f}" if r else "-")
            w("| " + " | ".join(line) + " |")
        if columns:
            line = ["geometric mean", "", *[""] * len(loops)]
            for col in columns:
                g, count = geo[col]
                note = "" if count == len(rows) else f" ({count} of {len(rows)} rows)"
                line.append((f"**{g:.2f}**" if g else "-") + note)
            w("| " + " | ".join(line) + " |")
        w("")
        w("Peak RSS (MiB, median over samples):")
        w("")
        w("| row | " + " | ".join(loops) + " |")
        w("|" + "|".join(["---", *["---:"] * len(loops)]) + "|")
        for row in rows:
            line = [row]
            for n in loops:
                c = cells[row][n]
                if c.failed:
                    line.append("FAILED")
                elif c.peak_rss_kib is None:
                    line.append("-")
                else:
                    line.append(f"{c.peak_rss_kib / 1024:.1f}")
            w("| " + " | ".join(line) + " |")
        w("")
        w(
            "Peak RSS is the sample subprocess's own `ru_maxrss` (its children not included), so it includes "
            "a fresh interpreter's baseline with asyncio and the loop module imported: compare differences "
            "between loops and rows, not the absolute size."
        )
        w("")
    w(
        "Throughput is operations per second, the median of the samples; ± is half the range of the "
        "samples relative to the median."
    )
    if any_ratios:
        w(
            f"Ratios are {subject}'s median throughput over the other loop's: above 1 means {subject} is faster. "
            "A missing ratio means one of its cells FAILED. Each group has its own geometric mean."
        )
    else:
        w("No ratio columns: fewer than two loops ran.")
    failures = [(row, n, cells[row][n].error) for row in plan.rows for n in loops if cells[row][n].failed]
    if failures:
        w("")
        w("FAILED cells (the remaining samples of a cell are skipped after its first failure):")
        for row, n, err in failures:
            w(f"- {row} / {n}: {err}")
    w("")
    w(f"Wall time {wall:.1f} s.")
    return "\n".join(out) + "\n"


def write_json(
    path: str, plan: Plan, env: dict, samples: list[Sample], cells: dict[str, dict[str, Cell]], subject: str | None
) -> None:
    ratios: dict[str, dict[str, float | None]] = {}
    geomean: dict[str, dict[str, dict]] = {}
    for group in plan.groups:
        _, group_ratios, geo = ratio_table(plan, cells, subject, group_rows(plan, group))
        ratios.update(group_ratios)
        geomean[group] = {col: {"value": g, "rows": n} for col, (g, n) in geo.items()}
    doc = {
        "environment": env,
        "mode": plan.mode,
        "repeat": plan.repeat,
        "timeout": plan.timeout,
        "loops": [asdict(lp) for lp in plan.loops],
        "groups": {g: group_rows(plan, g) for g in plan.groups},
        "rows": {r: {"group": ROW_GROUP[r], "ops": plan.ops[r], "warmup_ops": plan.warmup[r]} for r in plan.rows},
        "samples": [asdict(s) for s in samples],
        "medians": {
            r: {n: (None if c.failed else c.median) for n, c in per_loop.items()} for r, per_loop in cells.items()
        },
        "peak_rss_kib_medians": {
            r: {n: (None if c.failed else c.peak_rss_kib) for n, c in per_loop.items()} for r, per_loop in cells.items()
        },
        "failed": {r: {n: c.error for n, c in per_loop.items() if c.failed} for r, per_loop in cells.items()},
        "subject": subject,
        "ratios": ratios,
        # Per group: ratio column -> geometric mean over that group's rows.
        "geomean": geomean,
    }
    target = Path(path)
    if target.parent:
        target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=2) + "\n")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Micro-benchmarks of asyncio event loops, side by side (see bench/README.md)."
    )
    p.add_argument("--loops", default=DEFAULT_LOOPS, help="comma separated NAME=MODULE:ATTR (default: %(default)s)")
    p.add_argument(
        "--subject",
        default=DEFAULT_SUBJECT,
        help="loop whose ratios against the others are shown (default: %(default)s; "
        "if unavailable, the first available loop other than asyncio)",
    )
    p.add_argument("--groups", help="comma separated subset of row groups (default: all): " + ", ".join(GROUPS))
    p.add_argument("--rows", help="comma separated subset of rows (default: all): " + ", ".join(FULL_OPS))
    p.add_argument("--repeat", type=int, help=f"samples per loop and row (default {FULL_REPEAT}, quick {QUICK_REPEAT})")
    p.add_argument("--quick", action="store_true", help=f"smoke run: ops x{QUICK_SCALE:g}, fewer samples")
    p.add_argument("--scale", type=float, help="multiply every row's op count by this (overrides --quick's)")
    p.add_argument(
        "--timeout", type=float, help=f"seconds per sample (default {FULL_TIMEOUT:g}, quick {QUICK_TIMEOUT:g})"
    )
    p.add_argument("--json", metavar="PATH", help="also write raw samples and the summary as JSON to PATH")
    p.add_argument("--no-progress", action="store_true", help="do not print one line per sample on stderr")
    args = p.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.scale is not None and args.scale <= 0:
        p.error("--scale must be positive")

    t0 = time.perf_counter()
    plan = build_plan(args)
    plan.loops = parse_loops(args.loops)
    env = environment()
    probe_loops(plan.loops, plan.timeout)
    for lp in plan.loops:
        if not lp.ok:
            print(f"note: skipping loop {lp.name}: {lp.error}", file=sys.stderr)
    samples = run_all(plan, progress=not args.no_progress)
    cells = summarize(plan, samples)
    subject = pick_subject(plan.loops, args.subject)
    wall = time.perf_counter() - t0
    sys.stdout.write(render(plan, env, cells, subject, wall))
    if args.json:
        write_json(args.json, plan, env, samples, cells, subject)
    any_failed = any(c.failed for per_loop in cells.values() for c in per_loop.values())
    return 1 if any_failed else 0


if __name__ == "__main__":
    sys.exit(main())
