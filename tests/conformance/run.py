"""Run CPython's own asyncio test suite against an arbitrary event loop factory.

Why: ferroloop claims to be a drop-in replacement for the asyncio event loop. The most
demanding public definition of "drop-in" is the test suite CPython ships for asyncio
(``test.test_asyncio``). This runner executes the installed copy of that suite against a
loop factory given as ``--loop module:attr`` (default ``ferroloop:new_event_loop``), so
the same command can run the stdlib loop (``asyncio:new_event_loop``, the oracle),
uvloop, or ferroloop, and the results can be compared module by module.

How the loop under test is bound (see README.md for details):

* Modules that define loop-generic mixins bound to concrete stdlib loops (test_events,
  test_sock_lowlevel, test_sendfile, ...) get new TestCase classes that bind the same
  mixins to the factory; the module's own selector/proactor classes are removed.
* Everywhere else an event loop policy is installed whose ``new_event_loop`` calls the
  factory, so ``asyncio.run``, ``asyncio.new_event_loop``, ``asyncio.Runner`` and
  ``IsolatedAsyncioTestCase`` produce loops under test. ``asyncio.DefaultEventLoopPolicy``
  is replaced as well, so tests that reset the policy keep getting the factory's loops.
* Every loop the factory creates is counted, so the report shows how much of a module
  really ran on the loop under test (many tests use CPython's virtual-time ``TestLoop``).

Each module runs in its own subprocess with a time budget. The child runs the module with
unittest, streams one JSON line per finished test to a file, and the parent aggregates:
a crash is attributed to the test that was running and the module is resumed after it;
a module that exceeds its budget (or makes no progress for --stall-timeout seconds)
counts every test that did not finish as hung.

Test ids are ``<module>.<Class>.<test>`` (without the ``test.test_asyncio.`` prefix).
``exclusions.txt`` lists tests that are not run (CPython white-box tests, deferred
networking); ``known_failures.txt`` lists tests expected to fail on ferroloop (reported
as xfail; a listed test that passes is an error, so the list stays honest).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import fnmatch
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import unittest
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
PACKAGE = "test.test_asyncio"

# Modules of the core (non-networking) issue, in the order they are reported.
CORE_MODULES = [
    "test_tasks",
    "test_futures",
    "test_futures2",
    "test_locks",
    "test_queues",
    "test_taskgroups",
    "test_timeouts",
    "test_waitfor",
    "test_runners",
    "test_pep492",
    "test_context",
]
DEFAULT_MODULES = [*CORE_MODULES, "test_events", "test_sock_lowlevel"]
# Modules that are mostly transports, servers, pipes, subprocesses and TLS.
NETWORK_MODULES = [
    "test_server",
    "test_sendfile",
    "test_streams",
    "test_subprocess",
    "test_buffered_proto",
    "test_ssl",
    "test_unix_events",
    "test_sslproto",
]
MODULE_GROUPS = {"default": DEFAULT_MODULES, "core": CORE_MODULES, "network": NETWORK_MODULES}
MODULE_GROUPS["all"] = DEFAULT_MODULES + NETWORK_MODULES

DEFAULT_LOOP = "ferroloop:new_event_loop"
TRACEBACK_TAIL_LINES = 25
MAX_CRASH_RESTARTS = 20

# Outcomes of a single test id, as stored in the JSON results.
PASSED, FAILED, ERROR, SKIPPED, HUNG, EXCLUDED = "passed", "failed", "error", "skipped", "hung", "excluded"
XFAIL, XPASS = "xfail", "xpass"


# ---------------------------------------------------------------------------
# Rule files: exclusions.txt and known_failures.txt
# ---------------------------------------------------------------------------


@dataclass
class Rule:
    """One ``pattern  # reason`` line. The pattern matches a module, class or test id (globs allowed)."""

    pattern: str
    reason: str
    source: str

    @property
    def category(self) -> str:
        """The reason's leading ``word:`` tag (e.g. ``white-box``, ``network``), or ''."""
        head, sep, _ = self.reason.partition(":")
        return head.strip() if sep and " " not in head.strip() else ""

    def matches(self, test_id: str) -> bool:
        return fnmatch.fnmatchcase(test_id, self.pattern) or fnmatch.fnmatchcase(test_id, self.pattern + ".*")


def load_rules(path: Path) -> list[Rule]:
    rules = []
    if not path.exists():
        return rules
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition("#")
        pattern, reason = pattern.strip(), reason.strip()
        if not sep or not reason or " " in pattern:
            raise SystemExit(f"{path.name}:{lineno}: expected 'test.id.or.glob  # reason', got {raw!r}")
        rules.append(Rule(pattern, reason, f"{path.name}:{lineno}"))
    return rules


def first_match(rules: list[Rule], test_id: str) -> Rule | None:
    return next((rule for rule in rules if rule.matches(test_id)), None)


# ---------------------------------------------------------------------------
# Child side: factory, policy, bindings, result recording
# ---------------------------------------------------------------------------


def resolve_object(spec: str) -> Any:
    """Import ``module:attr`` (attr may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected module:attr, got {spec!r}")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class LoopFactory:
    """Wraps the factory under test: counts the loops it creates and breaks policy recursion.

    ``asyncio:new_event_loop`` would ask whatever policy is current (ours, or one a test
    installed) for a loop, so it is replaced by the stdlib default policy's loop. Any other
    factory that re-enters itself through the policy gets a stdlib loop for the inner call.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        stdlib_policy = asyncio.DefaultEventLoopPolicy  # captured before install_policy() replaces it
        self._stdlib_loop = lambda: stdlib_policy().new_event_loop()
        self._factory = self._stdlib_loop if factory is asyncio.new_event_loop else factory
        self._local = threading.local()
        self._lock = threading.Lock()
        self.created = 0
        self.loop_type = ""

    def __call__(self) -> Any:
        if getattr(self._local, "active", False):
            return self._stdlib_loop()
        self._local.active = True
        try:
            loop = self._factory()
        finally:
            self._local.active = False
        with self._lock:
            self.created += 1
            if not self.loop_type:
                self.loop_type = f"{type(loop).__module__}.{type(loop).__qualname__}"
        return loop


def install_policy(make_loop: LoopFactory) -> None:
    """Make the factory's loops the default everywhere asyncio creates a loop from the policy."""
    base = asyncio.DefaultEventLoopPolicy

    class FactoryEventLoopPolicy(base):
        def new_event_loop(self):
            return make_loop()

    FactoryEventLoopPolicy.__qualname__ = FactoryEventLoopPolicy.__name__ = f"Factory{base.__name__}"
    # set_event_loop_policy(None) re-creates asyncio.DefaultEventLoopPolicy; keep it ours.
    asyncio.DefaultEventLoopPolicy = FactoryEventLoopPolicy
    if hasattr(asyncio, "unix_events"):
        asyncio.unix_events.DefaultEventLoopPolicy = FactoryEventLoopPolicy
    asyncio.set_event_loop_policy(FactoryEventLoopPolicy())


# Classes that bind a generic mixin to a specific stdlib loop (selector or proactor flavour).
STDLIB_LOOP_CLASSES = (
    "SelectEventLoopTests",
    "PollEventLoopTests",
    "EPollEventLoopTests",
    "KqueueEventLoopTests",
    "ProactorEventLoopTests",
)


@dataclass(frozen=True)
class Bind:
    """Create ``name`` from ``bases`` (names in the module) with ``hook`` returning a factory loop.

    ``hook`` is a loop-returning method (``create_event_loop``, ``new_loop``), or ``setUp``,
    meaning "call the next setUp, then set ``self.loop`` to a factory loop".
    """

    name: str
    bases: tuple[str, ...]
    hook: str
    drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Patch:
    """Replace method ``hook`` of existing class ``cls`` (for bases shared by many test classes)."""

    cls: str
    hook: str


MODULE_BINDINGS: dict[str, list[Bind | Patch]] = {
    "test_events": [
        Bind(
            "EventLoopTests",
            ("EventLoopTestsMixin", "SubprocessTestsMixin", "test_utils.TestCase"),
            "create_event_loop",
            STDLIB_LOOP_CLASSES,
        )
    ],
    "test_sock_lowlevel": [
        Bind("SockTests", ("BaseSockTestsMixin", "test_utils.TestCase"), "create_event_loop", STDLIB_LOOP_CLASSES)
    ],
    "test_sendfile": [
        Bind("SendfileTests", ("SendfileTestsBase", "test_utils.TestCase"), "create_event_loop", STDLIB_LOOP_CLASSES)
    ],
    "test_server": [
        Bind(
            "StartServerTests",
            ("SelectorStartServerTests",),
            "new_loop",
            ("SelectorStartServerTests", "ProactorStartServerTests"),
        )
    ],
    "test_buffered_proto": [
        Bind(
            "BufferedProtocolTests",
            ("BufferedProtocolSelectorTests",),
            "new_loop",
            ("BufferedProtocolSelectorTests", "BufferedProtocolProactorTests"),
        )
    ],
    "test_sslproto": [
        Bind(
            "StartTLSTests", ("SelectorStartTLSTests",), "new_loop", ("SelectorStartTLSTests", "ProactorStartTLSTests")
        )
    ],
    "test_unix_events": [
        Bind("UnixSocketTests", ("SelectorEventLoopUnixSocketTests",), "setUp", ("SelectorEventLoopUnixSocketTests",))
    ],
    # BaseTest.new_loop builds a BaseEventLoop with a mocked selector; run asyncio.run/Runner on real loops.
    "test_runners": [Patch("BaseTest", "new_loop")],
    # BaseTest.setUp builds a BaseEventLoop with a mocked selector; use a factory loop instead.
    "test_pep492": [Patch("BaseTest", "setUp")],
}


def patch_harness() -> None:
    """Keep test_asyncio's helpers from requiring CPython loop internals the tests do not exercise.

    ``test_utils.TestCase.close_loop`` (the cleanup of every ``set_event_loop``) reads
    ``loop._default_executor``. For loops without that attribute, shut the default executor
    down through the public ``shutdown_default_executor()`` and let the original helper do
    the rest (closing, waiting for child-watcher threads) on a view without an executor.
    """
    from test.test_asyncio import utils as test_utils

    original = test_utils.TestCase.close_loop

    def close_loop(loop):
        if hasattr(loop, "_default_executor"):
            return original(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        view = types.SimpleNamespace(_default_executor=None, close=loop.close, is_closed=loop.is_closed)
        return original(view)

    test_utils.TestCase.close_loop = staticmethod(close_loop)


def _lookup(module: Any, dotted: str) -> Any:
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _make_hook(owner: type, hook: str, make_loop: LoopFactory, module_name: str) -> Callable:
    """Build the replacement method ``hook`` for class ``owner``."""
    if hook == "setUp":

        def setUp(self):
            super(owner, self).setUp()
            self.loop = make_loop()
            self.set_event_loop(self.loop)

        return setUp
    if hook == "new_loop" and module_name == "test_runners":
        # Same contract as test_runners.BaseTest.new_loop: tearDown checks shutdown_ag_run.
        def new_loop(self):
            loop = make_loop()
            loop.shutdown_ag_run = False
            original = loop.shutdown_asyncgens

            async def shutdown_asyncgens():
                loop.shutdown_ag_run = True
                await original()

            loop.shutdown_asyncgens = shutdown_asyncgens
            return loop

        return new_loop

    def create(self):
        return make_loop()

    create.__name__ = hook
    return create


def bind_module(module: Any, make_loop: LoopFactory) -> None:
    short = module.__name__.rpartition(".")[2]
    for spec in MODULE_BINDINGS.get(short, []):
        if isinstance(spec, Patch):
            cls = _lookup(module, spec.cls)
        else:
            bases = tuple(_lookup(module, name) for name in spec.bases)
            cls = type(spec.name, bases, {"__module__": module.__name__, "__qualname__": spec.name})
        setattr(cls, spec.hook, _make_hook(cls, spec.hook, make_loop, short))
        if isinstance(spec, Patch):
            continue
        for name in spec.drop:
            if hasattr(module, name):
                delattr(module, name)
        setattr(module, spec.name, cls)


def short_id(test_id: str) -> str:
    return test_id.removeprefix(PACKAGE + ".")


def iter_tests(suite: unittest.TestSuite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


# Severity of per-test outcomes: subtests and cleanups fold into the worst one.
OUTCOME_RANK = {PASSED: 0, SKIPPED: 1, FAILED: 2, ERROR: 3}
# unittest reports class/module fixture problems as e.g. "setUpClass (test.test_asyncio.test_x.Cls)".
FIXTURE_RE = re.compile(r"^(\w+) \(([\w.]+)\)$")


def fixture_id(description: str) -> str:
    """``setUpClass (test.test_asyncio.test_x.Cls)`` -> ``test_x.Cls [setUpClass]``."""
    match = FIXTURE_RE.match(description)
    if not match:
        return f"{short_id(description)} [fixture]"
    return f"{short_id(match.group(2))} [{match.group(1)}]"


class Watchdog:
    """Dumps all thread stacks into the child's log shortly before the parent would kill it."""

    MARGIN = 2.0

    def __init__(self, budget: float, stall: float) -> None:
        self._deadline = time.monotonic() + budget
        self._stall = stall

    def arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        limit = min(remaining, self._stall) if self._stall > 0 else remaining
        faulthandler.dump_traceback_later(max(limit - self.MARGIN, 0.5), exit=False)


class RecordingResult(unittest.TestResult):
    """Aggregates outcomes per test id (subtests fold into their test) and streams JSON lines."""

    def __init__(self, out, make_loop: LoopFactory, watchdog: Watchdog) -> None:
        super().__init__()
        self._out = out
        self._make_loop = make_loop
        self._watchdog = watchdog
        self._current: dict[str, Any] | None = None
        self._loops_before = 0

    def emit(self, **record: Any) -> None:
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def _tail(self, err, test) -> str:
        text = self._exc_info_to_string(err, test)
        return "\n".join(text.rstrip().splitlines()[-TRACEBACK_TAIL_LINES:])

    def _note(self, outcome: str, detail: str, test) -> None:
        if isinstance(test, unittest.TestCase) and self._current is not None:
            if OUTCOME_RANK[outcome] >= OUTCOME_RANK[self._current["outcome"]]:
                self._current["outcome"] = outcome
                self._current["detail"] = detail
            return
        # A problem outside any test (setUpClass, tearDownModule, ...) gets its own record.
        total = self._make_loop.created
        self.emit(event="result", id=fixture_id(test.id()), outcome=outcome, detail=detail, loops=0, total=total)

    def startTest(self, test) -> None:
        super().startTest(test)
        self._current = {"id": short_id(test.id()), "outcome": PASSED, "detail": ""}
        self._loops_before = self._make_loop.created
        self._watchdog.arm()
        self.emit(event="start", id=self._current["id"])

    def stopTest(self, test) -> None:
        super().stopTest(test)
        if self._current is not None:
            total = self._make_loop.created
            loops, loop_type = total - self._loops_before, self._make_loop.loop_type
            self.emit(event="result", loops=loops, total=total, loop_type=loop_type, **self._current)
        self._current = None

    def addError(self, test, err) -> None:
        super().addError(test, err)
        self._note(ERROR, self._tail(err, test), test)

    def addFailure(self, test, err) -> None:
        super().addFailure(test, err)
        self._note(FAILED, self._tail(err, test), test)

    def addSubTest(self, test, subtest, err) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = FAILED if issubclass(err[0], test.failureException) else ERROR
            self._note(kind, f"{subtest._subDescription()}\n{self._tail(err, test)}", test)

    def addSkip(self, test, reason) -> None:
        super().addSkip(test, reason)
        self._note(SKIPPED, reason, test)

    def addExpectedFailure(self, test, err) -> None:
        super().addExpectedFailure(test, err)  # an @expectedFailure that fails is a pass

    def addUnexpectedSuccess(self, test) -> None:
        super().addUnexpectedSuccess(test)
        self._note(FAILED, "unexpected success of a test marked @expectedFailure", test)


def child_main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    with open(config["results"], "a", encoding="utf-8", buffering=1) as out:

        def emit(**record: Any) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        watchdog = Watchdog(config["budget"], config["stall"])
        watchdog.arm()
        # A process started in the background by a non-interactive shell inherits SIGINT ignored,
        # and Python then leaves it so: `_thread.interrupt_main()` does nothing and the tests that
        # use it (test_runners) wait forever, on any loop. Give the tests what an interactive run has.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            make_loop = LoopFactory(resolve_object(config["loop"]))
            install_policy(make_loop)
            patch_harness()
            module = importlib.import_module(f"{PACKAGE}.{config['module']}")
            bind_module(module, make_loop)
            suite = unittest.defaultTestLoader.loadTestsFromModule(module)
        except unittest.SkipTest as exc:
            emit(event="module_skipped", reason=str(exc))
            emit(event="done", total=0, loop_type="")
            return 0
        except BaseException:
            emit(event="load_error", detail=traceback.format_exc())
            return 1

        exclusions = [Rule(**rule) for rule in config["exclusions"]]
        skip = set(config["skip"])
        collected, excluded, selected = [], [], unittest.TestSuite()
        for test in iter_tests(suite):
            test_id = short_id(test.id())
            collected.append(test_id)
            if first_match(exclusions, test_id) is not None:
                excluded.append(test_id)
            elif test_id not in skip:
                selected.addTest(test)
        emit(event="collected", tests=collected, excluded=excluded)

        recorder = RecordingResult(out, make_loop, watchdog)
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # what unittest.main() does without -W
            selected.run(recorder)
        faulthandler.cancel_dump_traceback_later()
        emit(event="done", total=make_loop.created, loop_type=make_loop.loop_type)
    return 0


# ---------------------------------------------------------------------------
# Parent side: run modules in subprocesses and aggregate
# ---------------------------------------------------------------------------


@dataclass
class TestRecord:
    outcome: str
    detail: str = ""
    reason: str = ""
    loops: int = 0


@dataclass
class ModuleReport:
    module: str
    tests: dict[str, TestRecord] = field(default_factory=dict)
    loops: int = 0
    loop_type: str = ""
    status: str = "ok"  # ok | hung | crashed | load-error | skipped
    note: str = ""
    duration: float = 0.0
    log_tail: str = ""

    def count(self, outcome: str) -> int:
        return sum(1 for rec in self.tests.values() if rec.outcome == outcome)

    @property
    def on_loop(self) -> int:
        return sum(1 for rec in self.tests.values() if rec.loops > 0)

    def row(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "passed": self.count(PASSED),
            "failed": self.count(FAILED) + self.count(XPASS),
            "errors": self.count(ERROR),
            "skipped": self.count(SKIPPED),
            "hung": self.count(HUNG),
            "excluded": self.count(EXCLUDED),
            "xfail": self.count(XFAIL),
            "loops": self.loops,
            "on-loop": self.on_loop,
            "time": f"{self.duration:.1f}s",
        }


@dataclass
class Options:
    loop: str
    timeout: float
    stall: float
    exclusions: list[Rule]
    known: list[Rule]
    env: dict[str, str]


def _child_env() -> dict[str, str]:
    """The parent's environment with PYTHONPATH made absolute (children run in temp dirs)."""
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


def _read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
                events.append(json.loads(line))
    return events


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: its test subprocesses too
    proc.wait()


def _tail_file(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()[-lines:])


def _wait_for_child(proc: subprocess.Popen, results: Path, budget: float, stall: float) -> tuple[int | None, str]:
    """Wait for the child; return (exit status, '') or (None, why it was declared hung)."""
    deadline = time.monotonic() + max(budget, 1.0)
    last_size, last_progress = -1, time.monotonic()
    while True:
        try:
            return proc.wait(timeout=0.25), ""
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        size = results.stat().st_size if results.exists() else 0
        if size != last_size:
            last_size, last_progress = size, now
        if now >= deadline:
            return None, "module exceeded its time budget (--timeout)"
        if stall > 0 and now - last_progress >= stall:
            return None, f"no progress for {stall:g}s"


def run_module(module: str, opts: Options) -> ModuleReport:
    """Run one module in child processes (restarting after crashes) within its time budget."""
    report = ModuleReport(module)
    start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"conformance-{module}-"))
    collected: list[str] = []
    excluded: set[str] = set()
    done: dict[str, TestRecord] = {}
    try:
        for attempt in range(MAX_CRASH_RESTARTS + 1):
            budget = opts.timeout - (time.monotonic() - start)
            results, log = workdir / f"results-{attempt}.jsonl", workdir / f"log-{attempt}.txt"
            config = {
                "module": module,
                "loop": opts.loop,
                "results": str(results),
                "budget": budget,
                "stall": opts.stall,
                "skip": sorted(done),
                "exclusions": [vars(rule) for rule in opts.exclusions],
            }
            config_path = workdir / f"config-{attempt}.json"
            config_path.write_text(json.dumps(config), encoding="utf-8")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(config_path)]
            with open(log, "wb") as log_file:
                proc = subprocess.Popen(
                    cmd, cwd=workdir, env=opts.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
                )
                returncode, timed_out = _wait_for_child(proc, results, budget, opts.stall)
                _kill_group(proc)

            running = None
            finished = False
            attempt_loops = 0
            for event in _read_events(results):
                kind = event["event"]
                attempt_loops = max(attempt_loops, event.get("total", 0))
                if kind == "collected" and not collected:
                    collected, excluded = event["tests"], set(event["excluded"])
                elif kind == "start":
                    running = event["id"]
                elif kind == "result":
                    done[event["id"]] = TestRecord(event["outcome"], event["detail"], loops=event["loops"])
                    running = None
                elif kind == "done":
                    finished = True
                elif kind == "module_skipped":
                    report.status, report.note = "skipped", event["reason"]
                elif kind == "load_error":
                    report.status, report.note = "load-error", event["detail"]
                report.loop_type = report.loop_type or event.get("loop_type", "")
            report.loops += attempt_loops

            if finished or report.status in ("skipped", "load-error"):
                break
            log_tail = _tail_file(log)
            if running is None:
                report.log_tail = log_tail  # nothing to attach it to: show it with the module
            if timed_out:
                report.status = "hung"
                report.note = timed_out + (f" while running {running}" if running else "")
                for test_id in collected:
                    if test_id not in done and test_id not in excluded:
                        done[test_id] = TestRecord(HUNG, f"not run: {report.note}")
                if running is not None:
                    done[running] = TestRecord(HUNG, f"{report.note}\n{log_tail}")
                break
            # The child died (segfault, abort, os._exit...): blame the running test and resume after it.
            report.status = "crashed"
            why = f"child exited with status {returncode}" + (f" while running {running}" if running else "")
            report.note = f"{report.note}; {why}" if report.note else why
            if running is None or not collected:
                break  # no test to blame: resuming would crash the same way
            done[running] = TestRecord(ERROR, f"crashed: {why}\n{log_tail}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if report.status == "load-error":
        done[f"{module} [import]"] = TestRecord(ERROR, report.note)
    _settle_unfinished(report, collected, excluded, done)
    _apply_rules(done, opts)
    report.tests = done
    report.duration = time.monotonic() - start
    return report


def _settle_unfinished(report: ModuleReport, collected: list[str], excluded: set[str], done: dict) -> None:
    """Give every collected test an outcome: excluded, or the fate of the fixture that kept it from running."""
    fixtures = {tid.rpartition(" [")[0]: rec for tid, rec in done.items() if tid.endswith("]")}
    for test_id in collected:
        if test_id in excluded:
            done[test_id] = TestRecord(EXCLUDED)
        elif test_id not in done and report.status != "skipped":
            owner = next((f for f in fixtures if test_id.startswith(f + ".") or test_id.split(".")[0] == f), None)
            if owner is not None and fixtures[owner].outcome == SKIPPED:
                done[test_id] = TestRecord(SKIPPED, fixtures[owner].detail)
            else:
                why = f"fixture of {owner} failed" if owner else f"{report.status}: {report.note}"
                done[test_id] = TestRecord(ERROR, f"not run ({why})")
    # A skipped setUpClass/setUpModule is accounted for by its tests.
    for tid in [tid for tid, rec in done.items() if tid.endswith("]") and rec.outcome == SKIPPED]:
        del done[tid]


def _apply_rules(done: dict[str, TestRecord], opts: Options) -> None:
    """Attach exclusion reasons and turn known failures into xfail (and their passes into xpass)."""
    for test_id, record in done.items():
        if record.outcome == EXCLUDED:
            rule = first_match(opts.exclusions, test_id)
            record.reason = rule.reason if rule else ""
            continue
        rule = first_match(opts.known, test_id)
        if rule is None:
            continue
        record.reason = rule.reason
        if record.outcome in (FAILED, ERROR, HUNG):
            record.outcome = XFAIL
        elif record.outcome == PASSED:
            record.outcome = XPASS


# ---------------------------------------------------------------------------
# Reporting and command line
# ---------------------------------------------------------------------------

COLUMNS = ["module", "passed", "failed", "errors", "skipped", "hung", "excluded", "xfail", "loops", "on-loop", "time"]


def format_table(rows: list[dict[str, Any]]) -> str:
    widths = {col: max(len(col), *(len(str(row[col])) for row in rows)) for col in COLUMNS}

    def line(cells: dict[str, Any]) -> str:
        return "  ".join(
            str(cells[c]).ljust(widths[c]) if c == "module" else str(cells[c]).rjust(widths[c]) for c in COLUMNS
        )

    header = {col: col for col in COLUMNS}
    rule = {col: "-" * widths[col] for col in COLUMNS}
    return "\n".join([line(header), line(rule), *(line(row) for row in rows)])


def total_row(reports: list[ModuleReport]) -> dict[str, Any]:
    rows = [r.row() for r in reports]
    total: dict[str, Any] = {col: sum(row[col] for row in rows) for col in COLUMNS if col not in ("module", "time")}
    total["module"] = "TOTAL"
    total["time"] = ""
    return total


def unused_rules(rules: list[Rule], reports: list[ModuleReport]) -> list[Rule]:
    """Rules for modules that ran but that matched no test (probably stale or misspelt)."""
    ran = {r.module for r in reports if r.status not in ("load-error",)}
    ids = [test_id for r in reports for test_id in r.tests]
    unused = []
    for rule in rules:
        module = rule.pattern.split(".", 1)[0]
        if any(ch in module for ch in "*?[") or module not in ran:
            continue
        if not any(rule.matches(test_id) for test_id in ids):
            unused.append(rule)
    return unused


def parse_modules(value: str) -> list[str]:
    modules: list[str] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        for name in MODULE_GROUPS.get(item, [item]):
            name = name if name.startswith("test_") else f"test_{name}"
            if name not in modules:
                modules.append(name)
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run CPython's test.test_asyncio against an event loop factory.",
        epilog=f"module groups for --modules: {', '.join(sorted(MODULE_GROUPS))}",
    )
    parser.add_argument("--loop", default=DEFAULT_LOOP, help="loop factory as module:attr (default: %(default)s)")
    parser.add_argument(
        "--modules",
        default="all",
        help="comma-separated test_asyncio modules and/or groups (default: every module, the 'all' group)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="time budget per module in seconds (default: 300)")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="declare a module hung when no test finishes for this long (0: off; default: 120)",
    )
    parser.add_argument("-j", "--jobs", type=int, default=2, help="modules run in parallel (default: 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failing tests")
    parser.add_argument("--json", metavar="PATH", help="write full per-test results to PATH")
    parser.add_argument("--exclusions", default=str(HERE / "exclusions.txt"), help="exclusion file")
    parser.add_argument("--known-failures", default=str(HERE / "known_failures.txt"), help="expected-failure file")
    parser.add_argument(
        "--run-excluded",
        default="",
        metavar="CATEGORIES",
        help="comma-separated reason categories whose exclusions are ignored, e.g. 'network'",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return child_main(args.child)

    try:
        resolve_object(args.loop)
    except Exception as exc:
        print(f"error: cannot import loop factory {args.loop!r}: {exc!r}", file=sys.stderr)
        return 2
    modules = parse_modules(args.modules)
    run_excluded = {c.strip() for c in args.run_excluded.split(",") if c.strip()}
    exclusions = [r for r in load_rules(Path(args.exclusions)) if r.category not in run_excluded]
    opts = Options(
        args.loop, args.timeout, args.stall_timeout, exclusions, load_rules(Path(args.known_failures)), _child_env()
    )

    started = time.monotonic()
    print(f"loop factory: {args.loop}; {len(modules)} modules, {max(args.jobs, 1)} jobs", file=sys.stderr, flush=True)
    reports: dict[str, ModuleReport] = {}
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = {pool.submit(run_module, module, opts): module for module in modules}
        try:
            for future in futures:
                report = future.result()
                reports[report.module] = report
                row = report.row()
                print(
                    f"  {report.module}: {row['passed']} passed, {row['failed'] + row['errors'] + row['hung']} failed"
                    f" ({report.status}, {row['time']})",
                    file=sys.stderr,
                    flush=True,
                )
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    ordered = [reports[m] for m in modules]
    elapsed = time.monotonic() - started

    problems = []
    for report in ordered:
        if report.status != "ok":
            problems.append(f"{report.module}: {report.status}: {report.note.splitlines()[0] if report.note else ''}")
        for test_id, rec in sorted(report.tests.items()):
            if rec.outcome in (FAILED, ERROR, HUNG, XPASS):
                label = "UNEXPECTED PASS" if rec.outcome == XPASS else rec.outcome.upper()
                problems.append(f"{label}: {test_id}" + (f"  (known failure: {rec.reason})" if rec.reason else ""))
                if args.verbose and rec.detail:
                    problems.append("    " + rec.detail.replace("\n", "\n    "))
        if args.verbose and report.status in ("hung", "crashed") and report.log_tail:
            problems.append(f"--- {report.module} child output (tail) ---\n{report.log_tail}")

    loop_types = sorted({r.loop_type for r in ordered if r.loop_type})
    print(f"loop factory: {args.loop} -> {', '.join(loop_types) or 'no loops created'}")
    if problems:
        print("\n".join(problems))
        print()
    total = total_row(ordered)
    print(format_table([*(r.row() for r in ordered), total]))
    stale = unused_rules(opts.exclusions, ordered) + unused_rules(opts.known, ordered)
    for rule in stale:
        print(f"note: {rule.source}: '{rule.pattern}' matched no test")
    print(f"elapsed: {elapsed:.1f}s")
    failed = total["failed"] + total["errors"] + total["hung"]
    print(f"{total['passed']} passed, {failed} failed, {total['skipped']} skipped")

    if args.json:
        payload = {
            "loop": args.loop,
            "loop_types": loop_types,
            "python": sys.version,
            "elapsed": round(elapsed, 2),
            "totals": {k: v for k, v in total.items() if k not in ("module", "time")},
            "modules": {
                r.module: {
                    **{k: v for k, v in r.row().items() if k != "module"},
                    "status": r.status,
                    "note": r.note,
                    "tests": {tid: {k: v for k, v in vars(rec).items() if v != ""} for tid, rec in r.tests.items()},
                }
                for r in ordered
            },
        }
        Path(args.json).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
