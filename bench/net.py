"""Network benchmarks of asyncio event loops, side by side in one run.

Echo servers in three modes (``sock_*`` calls, asyncio streams, a ``Protocol``) over TCP and
Unix sockets with 1, 10 and 100 KiB messages, the ``Protocol`` echo over TLS, an HTTP/1.1
keep-alive server (a small ``Protocol``), an aiohttp application and an ASGI application under
uvicorn, each run on every loop under test (``bench/net_server.py``). The load comes from
clients that are the same for every loop and are not event loops: ``bench/echo-client`` (Rust,
built here with cargo; rustls for the TLS rows) for echo, and ``wrk`` for HTTP.

For every sample the server runs in a fresh process; the report gives the median throughput
per loop and row, the server's CPU time over the measured window (from /proc), and the ratios of
the subject loop to the others, in throughput and in work per server CPU-second. Samples are
interleaved round robin across loops, as in micro.py, so drift hits every loop alike.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stats import behind_verdict

HERE = Path(__file__).resolve().parent
SERVER = HERE / "net_server.py"
CLIENT_DIR = HERE / "echo-client"
CLIENT = CLIENT_DIR / "target" / "release" / "echo-client"
CEILING_DIR = HERE / "ceiling-server"
CEILING = CEILING_DIR / "target" / "release" / "ceiling-server"
# A "loop" name for the pure-Rust echo server: it runs the protocol-mode echo rows only.
CEILING_SPEC = "ceiling"

DEFAULT_LOOPS = "ferroloop=ferroloop:new_event_loop,asyncio=asyncio:new_event_loop,uvloop=uvloop:new_event_loop"
DEFAULT_SUBJECT = "ferroloop"
MODES = ("sock", "streams", "protocol")
FAMILIES = ("tcp", "unix")
SIZES = (1024, 10 * 1024, 100 * 1024)
CONNS = 10
HTTP_CONNS = 50
PIPELINE = 16
PIPELINE_SCRIPT = HERE / "wrk_pipeline.lua"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Row:
    group: str  # "echo-sock", "echo-streams", "echo-protocol", "echo-tls", "http", "app"
    mode: str
    family: str
    size: int

    @property
    def name(self) -> str:
        if self.mode == "http":
            return "http keep-alive (wrk)" if self.size == 0 else f"http pipelined x{self.size} (wrk)"
        if self.mode == "app":
            return "aiohttp app keep-alive (wrk)"
        if self.mode == "asgi":
            return "uvicorn app keep-alive (wrk)"
        return f"{self.mode} {self.family} {self.size // 1024}KiB"


@dataclass
class Sample:
    row: str
    loop: str
    k: int
    ok: bool
    per_second: float = 0.0  # round trips (echo) or requests (http) per second
    cpu_seconds: float = 0.0  # server CPU over the measured window, user + kernel
    user_seconds: float = 0.0  # the user-space part of cpu_seconds
    wall_seconds: float = 0.0
    peak_rss_kib: int = 0  # the server process's VmHWM when the sample ended
    unsupported: bool = False  # the loop raised NotImplementedError for this server
    error: str = ""

    @property
    def per_cpu_second(self) -> float:
        return self.per_second * self.wall_seconds / self.cpu_seconds if self.cpu_seconds else math.nan


def all_rows() -> list[Row]:
    rows = [Row(f"echo-{m}", m, f, s) for m in MODES for f in FAMILIES for s in SIZES]
    # size = requests per pipelined batch (0: one request at a time). Without pipelining wrk,
    # not the server, is the bottleneck on a 2-core machine; pipelining makes the client cheap
    # per request, so the server's cost shows.
    rows += [Row("echo-tls", "tls", "tcp", s) for s in SIZES]
    rows.append(Row("http", "http", "tcp", 0))
    rows.append(Row("http", "http", "tcp", PIPELINE))
    rows.append(Row("app", "app", "tcp", 0))
    rows.append(Row("app", "asgi", "tcp", 0))
    return rows


def cpu_seconds(pid: int) -> tuple[float, float]:
    """The process's CPU time so far, (user, kernel), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Server:
    """One net_server.py process, listening."""

    def __init__(self, spec: str, mode: str, family: str, tmpdir: str) -> None:
        address = f"unix:{tmpdir}/echo.sock" if family == "unix" else "tcp:127.0.0.1:0"
        if spec == CEILING_SPEC:
            command = [str(CEILING), address]
        else:
            command = [sys.executable, str(SERVER), spec, mode, address]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"server did not start: {self.error_text()}")
        self.address = line[1]

    def error_text(self) -> str:
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return err.strip().splitlines()[-1] if err.strip() else f"exit {self.proc.returncode}"

    def cpu(self) -> tuple[float, float]:
        return cpu_seconds(self.proc.pid)

    def peak_rss(self) -> int:
        return peak_rss_kib(self.proc.pid)

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def cpu_used(start: tuple[float, float], stop: tuple[float, float]) -> tuple[float, float]:
    """(total, user) server CPU seconds between two cpu() readings."""
    user = stop[0] - start[0]
    return user + stop[1] - start[1], user


def run_echo(server: Server, row: Row, seconds: float, warmup: float) -> tuple[float, tuple[float, float], float]:
    client = subprocess.Popen(
        [
            *(str(CLIENT), server.address, "--conns", str(CONNS), "--size", str(row.size)),
            *("--seconds", str(seconds), "--warmup", str(warmup)),
            *(["--tls"] if row.mode == "tls" else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    cpu_start = cpu_stop = None
    result = None
    for line in client.stdout:
        if line.startswith("START"):
            cpu_start = server.cpu()
        elif line.startswith("STOP"):
            cpu_stop = server.cpu()
        elif line.startswith("{"):
            result = json.loads(line)
    client.wait(timeout=30)
    if client.returncode or result is None or cpu_start is None or cpu_stop is None:
        raise RuntimeError(f"client failed: {client.stderr.read().strip() if client.stderr else ''}")
    return result["messages"] / result["seconds"], cpu_used(cpu_start, cpu_stop), result["seconds"]


WRK_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")


def run_wrk(server: Server, pipeline: int, seconds: float, warmup: float) -> tuple[float, tuple[float, float], float]:
    url = "http://" + server.address.removeprefix("tcp:") + "/"

    def wrk(duration: float) -> str:
        # wrk takes whole seconds only; script arguments follow the URL after "--".
        command = ["wrk", "-t1", f"-c{HTTP_CONNS}", f"-d{max(1, round(duration))}s"]
        if pipeline:
            command += ["-s", str(PIPELINE_SCRIPT), url, "--", str(pipeline)]
        else:
            command.append(url)
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout

    wrk(warmup)
    cpu_start, started = server.cpu(), time.monotonic()
    out = wrk(seconds)
    cpu_stop, wall = server.cpu(), time.monotonic() - started
    match = WRK_RPS.search(out)
    if not match or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk failed: {out.strip()}")
    return float(match.group(1)), cpu_used(cpu_start, cpu_stop), wall


class Unsupported(RuntimeError):
    """The loop does not implement what the row's server needs (NotImplementedError)."""


def run_sample(
    spec: str, row: Row, seconds: float, warmup: float, tmpdir: str
) -> tuple[float, tuple[float, float], float, int]:
    try:
        server = Server(spec, row.mode, row.family, tmpdir)
    except RuntimeError as exc:
        if "NotImplementedError" in str(exc):
            raise Unsupported(str(exc)) from None
        raise
    try:
        if row.mode in ("http", "app", "asgi"):
            rate, cpu, wall = run_wrk(server, row.size, seconds, warmup)
        else:
            rate, cpu, wall = run_echo(server, row, seconds, warmup)
        return rate, cpu, wall, server.peak_rss()
    finally:
        server.stop()


def build(crate: Path) -> None:
    if shutil.which("cargo") is None:
        raise SystemExit(f"cargo is needed to build {crate.relative_to(HERE.parent)}")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--manifest-path", str(crate / "Cargo.toml")],
        check=True,
    )


def loop_available(spec: str) -> str:
    if spec == CEILING_SPEC:
        return ""
    module = spec.partition(":")[0]
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    return "" if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["import failed"])[-1]


def geomean(values: list[float]) -> float:
    values = [v for v in values if v > 0 and not math.isnan(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def fmt_rate(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def fmt_us(x: float) -> str:
    return f"{x:.2f}" if x < 1 else f"{x:.1f}"


def cpu_split_table(rows: list[Row], loops: list[str], subject: str, samples: list[Sample]) -> list[str]:
    """Server CPU per message, user space + kernel, in microseconds (medians over samples).

    The kernel part (socket calls, the TCP/Unix stack, polling, wake-ups) is much the same for
    every loop that makes the same system calls; only the user part is the loop's own code. So the
    kernel part bounds what any loop can gain per CPU-second on a row.
    """
    lines = [
        "Server CPU per message (per request for wrk rows), microseconds of user space + kernel, median over"
        " samples; the last column is the subject's user-space share of its server CPU:",
        "",
        "| row | " + " | ".join(loops) + " | user share |",
        "|---|" + "---:|" * (len(loops) + 1),
    ]
    for row in rows:
        cells, share = [row.name], "-"
        for n in loops:
            ok = [s for s in samples if s.row == row.name and s.loop == n and s.ok and s.per_second > 0]
            if not ok:
                cells.append("-")
                continue
            messages = [s.per_second * s.wall_seconds for s in ok]
            user = statistics.median(s.user_seconds / m * 1e6 for s, m in zip(ok, messages))
            kernel = statistics.median((s.cpu_seconds - s.user_seconds) / m * 1e6 for s, m in zip(ok, messages))
            cells.append(f"{fmt_us(user)} + {fmt_us(kernel)}")
            if n == subject and user + kernel > 0:
                share = f"{user / (user + kernel):.0%}"
        lines.append("| " + " | ".join(cells) + f" | {share} |")
    return lines


Medians = dict[tuple[str, str], tuple[float, float]]


def sample_values(samples: list[Sample], row: str, loop: str, per_cpu: bool) -> list[float]:
    """One cell's successful samples, as throughput or as work per server CPU-second."""
    ok = [s for s in samples if s.row == row and s.loop == loop and s.ok]
    return [s.per_cpu_second if per_cpu else s.per_second for s in ok]


def behind_table(rows: list[Row], others: list[str], subject: str, samples: list[Sample], med: Medians) -> list[str]:
    """The rows where the subject's median is below another loop's, each with a bootstrap interval."""
    lines = []
    for idx, what in ((0, "throughput"), (1, "work per server CPU-second")):
        found = []
        for row in rows:
            for o in others:
                r = med[row.name, subject][idx] / med[row.name, o][idx]
                if r < 1:
                    mine, theirs = (sample_values(samples, row.name, n, per_cpu=idx == 1) for n in (subject, o))
                    found.append(f"- {row.name}: {r:.2f} of {o} ({behind_verdict(mine, theirs)})")
        lines += [f"Rows where {subject}'s median {what} is below another loop's:", ""]
        lines += found or ["- none"]
        lines.append("")
    lines += [
        "Each interval is a percentile bootstrap of the ratio of medians (`bench/stats.py`): a row is behind in a"
        " way this run can show only if the whole interval lies below 1.",
        "",
    ]
    return lines


def report(rows: list[Row], loops: list[str], subject: str, samples: list[Sample], args) -> tuple[str, bool]:
    med: Medians = {}
    spread: dict[tuple[str, str], float] = {}
    failed = False
    for row in rows:
        for name in loops:
            ok = [s for s in samples if s.row == row.name and s.loop == name and s.ok]
            mine = [s for s in samples if s.row == row.name and s.loop == name]
            if not ok and all(s.unsupported for s in mine):
                # Not applicable: the ceiling's non-echo rows, or a loop without the feature.
                med[row.name, name] = (math.nan, math.nan)
                continue
            if not ok:
                med[row.name, name] = (math.nan, math.nan)
                failed = True
                continue
            rates = [s.per_second for s in ok]
            med[row.name, name] = (statistics.median(rates), statistics.median(s.per_cpu_second for s in ok))
            spread[row.name, name] = (max(rates) - min(rates)) / 2 / statistics.median(rates)
    others = [n for n in loops if n != subject]
    head = ["row", *[f"{n} /s" for n in loops]]
    head += [f"{subject}/{o}" for o in others]
    head += [f"{subject}/{o} per CPU-s" for o in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    ratios: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        cells = [row.name] + [
            fmt_rate(med[row.name, n][0]) + (f" ±{spread[row.name, n]:.0%}" if (row.name, n) in spread else "")
            for n in loops
        ]
        for idx, label in ((0, "tput"), (1, "cpu")):
            for o in others:
                r = med[row.name, subject][idx] / med[row.name, o][idx]
                ratios.setdefault((row.group, o, label), []).append(r)
                cells.append("-" if math.isnan(r) else f"{r:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Throughput is the median of the samples; ± is half their range, relative to the median.")
    lines.append("")
    lines.append("Geometric means of the ratios per group (throughput / per server CPU-second):")
    lines.append("")
    lines.append("| group | " + " | ".join(f"{subject}/{o}" for o in others) + " |")
    lines.append("|---|" + "---:|" * len(others))
    for group in dict.fromkeys(r.group for r in rows):
        cells = [group]
        for o in others:
            t, c = geomean(ratios[group, o, "tput"]), geomean(ratios[group, o, "cpu"])
            cells.append("-" if math.isnan(t) else f"{t:.2f} / {c:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "A cell of `-` is a row the loop cannot run (the ceiling only echoes; a loop may lack a feature, such as"
        " TLS) or whose samples all failed (reported on stderr)."
    )
    lines.append("")
    lines += behind_table(rows, others, subject, samples, med)
    lines += cpu_split_table(rows, loops, subject, samples)
    lines.append("")
    lines.append("Peak RSS of the server process (VmHWM, MiB, median over samples):")
    lines.append("")
    lines.append("| row | " + " | ".join(loops) + " |")
    lines.append("|---|" + "---:|" * len(loops))
    for row in rows:
        cells = [row.name]
        for n in loops:
            rss = [s.peak_rss_kib for s in samples if s.row == row.name and s.loop == n and s.ok]
            cells.append(f"{statistics.median(rss) / 1024:.1f}" if rss else "-")
        lines.append("| " + " | ".join(cells) + " |")
    setup = (
        f"{len(rows)} rows, {args.repeat} samples per cell, {args.seconds}s measured after {args.warmup}s warm-up; "
        f"echo: {CONNS} connections (bench/echo-client), http: wrk -t1 -c{HTTP_CONNS}"
    )
    return "\n".join([setup, "", *lines]), failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default=DEFAULT_LOOPS, help="NAME=MODULE:ATTR,... (default: %(default)s)")
    parser.add_argument("--subject", default=DEFAULT_SUBJECT)
    parser.add_argument("--rows", help="comma-separated substrings; a row runs if its name contains one")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1KiB TCP rows, 1 sample, 0.3 s")
    parser.add_argument("--json", help="write every sample to this path")
    parser.add_argument(
        "--report-from", metavar="JSON", help="print the report of the samples a previous --json saved, without running"
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="add the pure-Rust echo server (bench/ceiling-server) to the protocol rows, as loop 'ceiling'",
    )
    args = parser.parse_args()

    rows = all_rows()
    if args.quick:
        args.repeat, args.seconds, args.warmup = 1, 0.3, 0.1
        rows = [r for r in rows if r.family == "tcp" and r.size in (0, 1024)]
    if args.rows:
        wanted = [w.strip() for w in args.rows.split(",")]
        rows = [r for r in rows if any(w in r.name for w in wanted)]
    if any(r.mode == "http" for r in rows) and shutil.which("wrk") is None:
        print("note: wrk not found (Debian package 'wrk'); HTTP row skipped", file=sys.stderr)
        rows = [r for r in rows if r.mode != "http"]
    specs = dict(item.split("=", 1) for item in args.loops.split(","))
    if args.ceiling:
        specs["ceiling"] = CEILING_SPEC
    loops = []
    for name, spec in specs.items():
        problem = loop_available(spec)
        if problem:
            print(f"note: loop {name} skipped: {problem}", file=sys.stderr)
        else:
            loops.append(name)
    if args.subject not in loops:
        raise SystemExit(f"subject loop {args.subject!r} is not available")
    build(CLIENT_DIR)
    if CEILING_SPEC in specs.values():
        build(CEILING_DIR)

    samples: list[Sample] = []
    if args.report_from:
        samples = [Sample(**s) for s in json.loads(Path(args.report_from).read_text())]
        names = {s.row for s in samples}
        rows = [r for r in rows if r.name in names]
        loops = [n for n in loops if any(s.loop == n for s in samples)]
        args.repeat = max(s.k for s in samples) + 1 if samples else 0
        text, failed = report(rows, loops, args.subject, samples, args)
        # The samples do not record the window lengths: the header shows this command's.
        print(text)
        return 1 if failed else 0
    with tempfile.TemporaryDirectory() as tmpdir:
        for row in rows:
            for k in range(args.repeat):
                order = loops[k % len(loops) :] + loops[: k % len(loops)]
                for name in order:
                    if specs[name] == CEILING_SPEC and row.mode != "protocol":
                        continue  # the ceiling is an echo server: it has no sock/streams/http modes
                    sample = Sample(row.name, name, k, ok=False)
                    try:
                        rate, cpu, wall, rss = run_sample(specs[name], row, args.seconds, args.warmup, tmpdir)
                        sample.per_second, sample.wall_seconds = rate, wall
                        sample.cpu_seconds, sample.user_seconds = cpu
                        sample.peak_rss_kib, sample.ok = rss, True
                    except Unsupported:
                        sample.unsupported = True
                        samples.append(sample)
                        print(f"  {row.name} / {name}: not supported by this loop", file=sys.stderr)
                        continue
                    except (RuntimeError, subprocess.SubprocessError) as exc:
                        sample.error = str(exc)
                        print(f"  {row.name} / {name}: FAILED {exc}", file=sys.stderr)
                    samples.append(sample)
                    print(f"  {row.name} / {name} #{k}: {fmt_rate(sample.per_second)}/s", file=sys.stderr)
    text, failed = report(rows, loops, args.subject, samples, args)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(s) for s in samples], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
