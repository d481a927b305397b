"""Every benchmark in one run, with one report: ferroloop against stdlib asyncio, uvloop and rloop.

    python bench/all.py [--quick] [--out bench/results]

Runs the three runners in turn, each with every loop it can import, interleaved within a runner:

- ``micro.py``: the micro rows (callbacks, timers, tasks, futures, cross-thread calls, queues,
  executors) and the process rows (subprocess spawn, pipe throughput);
- ``net.py --ceiling``: echo in three modes over TCP and Unix sockets, echo over TLS, HTTP under
  wrk (a small Protocol, plain and pipelined) and an aiohttp and a uvicorn application under wrk,
  plus the pure-Rust echo server (same poller, no Python) on the Protocol rows;
- ``idle_memory.py``: server memory per idle connection.

It writes ``report.md`` (the runners' own tables, preceded by a summary of geometric means per
group and the rows where ferroloop is not ahead) and ``chart.png`` (the group means as bars) to
the output directory, along with each runner's raw JSON. ``--quick`` is the smoke run CI uses: it
checks that everything runs and reports, and its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from net import all_rows  # noqa: E402
from stats import behind_verdict  # noqa: E402

SUBJECT = "ferroloop"
LOOPS = (
    "ferroloop=ferroloop:new_event_loop,asyncio=asyncio:new_event_loop,"
    "uvloop=uvloop:new_event_loop,rloop=rloop:new_event_loop"
)
OTHERS = ("asyncio", "uvloop", "rloop")
# Groups in report order; each is a row of the summary and a cluster of bars in the chart.
GROUP_TITLES = {
    "micro": "micro (callbacks, timers, tasks)",
    "process": "subprocess spawn, pipe",
    "echo-sock": "echo, sock_* calls",
    "echo-streams": "echo, streams",
    "echo-protocol": "echo, Protocol",
    "echo-tls": "echo, Protocol over TLS",
    "http": "HTTP, small Protocol (wrk)",
    "app": "aiohttp and uvicorn apps (wrk)",
}


def geomean(values: list[float]) -> float:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def run(command: list[str], log: Path) -> tuple[int, str]:
    """Runs one runner, streaming its progress (stderr) through, keeping its report (stdout)."""
    print("$", " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
    log.write_text(done.stdout)
    return done.returncode, done.stdout


def micro_medians(doc: dict) -> dict[str, tuple[str, dict[str, float]]]:
    """row -> (group, loop -> median throughput) from micro.py's JSON."""
    out = {}
    for row, info in doc["rows"].items():
        medians = {n: v for n, v in doc["medians"].get(row, {}).items() if v}
        out[row] = (info["group"], medians)
    return out


def net_medians(samples: list[dict], per_cpu: bool) -> dict[str, tuple[str, dict[str, float]]]:
    """row -> (group, loop -> median of throughput, or of work per server CPU-second)."""
    groups = {r.name: r.group for r in all_rows()}
    values: dict[str, dict[str, list[float]]] = {}
    for s in samples:
        if not s["ok"]:
            continue
        v = s["per_second"]
        if per_cpu:
            v = v * s["wall_seconds"] / s["cpu_seconds"] if s["cpu_seconds"] else math.nan
        values.setdefault(s["row"], {}).setdefault(s["loop"], []).append(v)
    return {row: (groups[row], {n: statistics.median(vs) for n, vs in per.items()}) for row, per in values.items()}


Ranges = dict[tuple[str, str], list[float]]


def sample_ranges(micro_doc: dict, net_samples: list[dict], per_cpu: bool) -> Ranges:
    """(row, loop) -> its samples, of throughput or (network rows) of work per CPU-second."""
    values: dict[tuple[str, str], list[float]] = {}
    for s in micro_doc.get("samples", []) if not per_cpu else []:
        if s.get("ok") and s.get("ops_per_sec"):
            values.setdefault((s["row"], s["loop"]), []).append(s["ops_per_sec"])
    for s in net_samples:
        if s["ok"] and s["per_second"] and s["cpu_seconds"]:
            v = s["per_second"] * s["wall_seconds"] / s["cpu_seconds"] if per_cpu else s["per_second"]
            values.setdefault((s["row"], s["loop"]), []).append(v)
    return values


def behind_line(row: str, other: str, ratio: float, ranges: Ranges) -> str:
    """One 'behind' row, with the bootstrap interval of its ratio (`stats.py`)."""
    mine, theirs = ranges.get((row, SUBJECT), []), ranges.get((row, other), [])
    return f"- {row}: {ratio:.2f} of {other} ({behind_verdict(mine, theirs)})"


def summarize(medians: dict[str, tuple[str, dict[str, float]]]) -> tuple[dict, list[tuple[str, str, float]]]:
    """Group -> other loop -> geometric mean of ferroloop's ratio; and every row/loop below 1."""
    ratios: dict[str, dict[str, list[float]]] = {}
    behind = []
    for row, (group, per) in medians.items():
        mine = per.get(SUBJECT)
        for other in OTHERS:
            theirs = per.get(other)
            if not mine or not theirs:
                continue
            r = mine / theirs
            ratios.setdefault(group, {}).setdefault(other, []).append(r)
            if r < 1 and other != "asyncio":
                behind.append((row, other, r))
    means = {g: {o: geomean(rs) for o, rs in per.items()} for g, per in ratios.items()}
    return means, behind


def ceiling_fractions(samples: list[dict]) -> dict[str, float]:
    """Protocol echo row -> ferroloop's work per server CPU-second as a fraction of the ceiling's."""
    per_cpu = net_medians(samples, per_cpu=True)
    out = {}
    for row, (group, per) in per_cpu.items():
        if group == "echo-protocol" and per.get(SUBJECT) and per.get("ceiling"):
            out[row] = per[SUBJECT] / per["ceiling"]
    return out


def chart(means: dict[str, dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in GROUP_TITLES if g in means]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(groups) * len(OTHERS) / 2 + 1.8))
    height = 0.8 / len(OTHERS)
    colors = {"asyncio": "#9e9e9e", "uvloop": "#1f77b4", "rloop": "#d62728"}
    for i, other in enumerate(OTHERS):
        ys = [k + (i - (len(OTHERS) - 1) / 2) * height for k in range(len(groups))]
        xs = [means[g].get(other, math.nan) for g in groups]
        bars = ax.barh(ys, xs, height=height * 0.9, color=colors[other], label=f"ferroloop / {other}")
        for bar, x in zip(bars, xs):
            if math.isfinite(x):
                ax.text(x, bar.get_y() + bar.get_height() / 2, f" {x:.2f}", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ticks = [t for t in (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_yticks(range(len(groups)), [GROUP_TITLES[g] for g in groups])
    ax.invert_yaxis()
    ax.set_xlabel("ferroloop's throughput over the other loop's (geometric mean per group; > 1: ferroloop faster)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (CI): every runner in its quick mode")
    parser.add_argument("--out", default=str(HERE / "results"), help="output directory (default: %(default)s)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The runners run from the repository's root: their command lines (shown in the report) then
    # name the output files relative to it.
    arg_out = out.relative_to(HERE.parent) if out.is_relative_to(HERE.parent) else out
    quick = ["--quick"] if args.quick else []
    py = sys.executable
    started = time.monotonic()

    status = {}
    status["micro"], micro_text = run(
        [py, "bench/micro.py", *quick, "--loops", LOOPS, "--json", str(arg_out / "micro.json")], out / "micro.md"
    )
    status["net"], net_text = run(
        [py, "bench/net.py", *quick, "--ceiling", "--loops", LOOPS, "--json", str(arg_out / "net.json")], out / "net.md"
    )
    idle = ["--conns", "1000", "--repeat", "1"] if args.quick else []
    status["idle"], idle_text = run(
        [py, "bench/idle_memory.py", *idle, "--loops", LOOPS, "--json", str(arg_out / "idle.json")], out / "idle.md"
    )

    medians = {}
    micro_doc = json.loads((out / "micro.json").read_text()) if (out / "micro.json").exists() else {}
    if micro_doc:
        medians.update(micro_medians(micro_doc))
    net_samples = json.loads((out / "net.json").read_text()) if (out / "net.json").exists() else []
    medians.update(net_medians(net_samples, per_cpu=False))
    means, behind = summarize(medians)
    cpu_means, cpu_behind = summarize(net_medians(net_samples, per_cpu=True))
    ceiling = ceiling_fractions(net_samples)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, Python {platform.python_version()}"
    title = f"ferroloop {commit.stdout.strip() or '?'}, {when}, {machine}"
    if quick:
        title += " (QUICK: not a measurement)"
    lines = [
        f"# Benchmark report: {title}",
        "",
        "Reproduce: `python bench/all.py"
        + (" --quick" if quick else "")
        + "` (after `make build-pgo`, the profile-guided build the benchmarks measure).",
        "",
        "## Summary",
        "",
        "Geometric mean per group of ferroloop's throughput over the other loop's (> 1: ferroloop faster);"
        " for the network groups also per server CPU-second.",
        "",
        "| group | vs asyncio | vs uvloop | vs rloop | per CPU-s vs uvloop | per CPU-s vs rloop |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for group in GROUP_TITLES:
        if group not in means:
            continue
        m, c = means[group], cpu_means.get(group, {})
        lines.append(
            f"| {GROUP_TITLES[group]} | {fmt(m.get('asyncio'))} | {fmt(m.get('uvloop'))} | {fmt(m.get('rloop'))}"
            f" | {fmt(c.get('uvloop'))} | {fmt(c.get('rloop'))} |"
        )
    lines += ["", "![benchmark summary](chart.png)", ""]
    if ceiling:
        cells = ", ".join(f"{row} {frac:.0%}" for row, frac in ceiling.items())
        lines += [f"Protocol echo per server CPU-second, as a share of the pure-Rust ceiling: {cells}.", ""]
    lines += [
        "Rows where ferroloop's median is behind uvloop's or rloop's in throughput, each with a bootstrap"
        " interval of the ratio of medians (`bench/stats.py`): a row is behind in a way this run can show only"
        " if the whole interval lies below 1; otherwise the gap is within the run's noise:",
        "",
    ]
    ranges = sample_ranges(micro_doc, net_samples, per_cpu=False)
    lines += [behind_line(row, other, r, ranges) for row, other, r in sorted(behind)] or ["- none"]
    lines += ["", "... and in work per server CPU-second (network rows):", ""]
    cpu_ranges = sample_ranges(micro_doc, net_samples, per_cpu=True)
    lines += [behind_line(row, other, r, cpu_ranges) for row, other, r in sorted(cpu_behind)] or ["- none"]
    lines += ["", "## Micro and process rows (`bench/micro.py`)", "", micro_text.strip(), ""]
    lines += ["## Network rows (`bench/net.py --ceiling`)", "", net_text.strip(), ""]
    lines += ["## Memory per idle connection (`bench/idle_memory.py`)", "", idle_text.strip(), ""]
    failed = [name for name, code in status.items() if code]
    if failed:
        lines += [f"Runners that reported failures: {', '.join(failed)} (see their sections)."]
    lines.append(f"Wall time of the whole run: {time.monotonic() - started:.0f} s.")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    chart(means, out / "chart.png", title)
    print("\n".join(lines[: lines.index("## Micro and process rows (`bench/micro.py`)")]))
    print(f"report: {out / 'report.md'}, chart: {out / 'chart.png'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
