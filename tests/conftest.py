"""Shared fixtures for the ferroloop test-suite.

Every behaviour test runs twice: once on ferroloop and once on the stdlib
asyncio loop, which serves as the oracle.  A test that fails on the
``asyncio`` parametrization is a wrong test.

Fixtures (stable API, other test modules rely on them):

``loop_name``
    ``"ferroloop"`` or ``"asyncio"``; the test id suffix is the same string,
    so ``pytest -k asyncio`` selects the oracle half.
``factory``
    zero-argument callable creating a new, unclosed loop of the kind under
    test (``ferroloop.new_event_loop`` / ``asyncio.new_event_loop``).  Loops
    it creates and the test leaves open are closed at teardown.  Suitable as
    ``asyncio.Runner(loop_factory=factory)``.
``loop``
    a fresh loop from ``factory``, installed as the current event loop for the
    duration of the test.  At teardown async generators and the default
    executor are shut down, the loop is closed and the current loop reset to
    ``None``.  The test then fails if the loop's exception handler was called
    (unless the test requested ``handler_calls``), if file descriptors leaked,
    or if ResourceWarnings were emitted while collecting garbage.
``handler_calls``
    list of the context dicts passed to the loop's exception handler.  Using
    this fixture declares that handler calls are expected; the test should
    assert on the list itself.
``loop_module``
    the imported module providing the loop (``ferroloop`` or ``asyncio``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import sys
import time
import warnings

import pytest

LOOP_NAMES = ("ferroloop", "asyncio")

_FD_DIR = "/proc/self/fd"
_FD_GRACE_SECONDS = 2.0


def pytest_configure(config):
    # The per-test timeout (``timeout`` in pyproject.toml) is what turns a hung
    # loop into a failure instead of a stuck CI job; refuse to run without it.
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError("pytest-timeout is required for this test-suite: pip install pytest-timeout")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _open_fds() -> dict[int, str] | None:
    """Map of open fd -> link target, or None when /proc is unavailable."""
    if not os.path.isdir(_FD_DIR):
        return None
    result = {}
    for entry in os.listdir(_FD_DIR):
        fd = int(entry)
        try:
            result[fd] = os.readlink(os.path.join(_FD_DIR, entry))
        except OSError:
            # The directory fd used by listdir() itself is gone by now.
            continue
    return result


def _new_fds(before: dict[int, str]) -> dict[int, str]:
    after = _open_fds() or {}
    return {fd: target for fd, target in after.items() if before.get(fd) != target}


class _TestState:
    """Bookkeeping shared by the fixtures of one test."""

    def __init__(self) -> None:
        self.handler_calls: list[dict] = []
        self.handler_calls_expected = False
        self.resource_warnings: list[str] = []

    def record_handler_call(self, loop, context) -> None:
        self.handler_calls.append(dict(context))

    def collect_garbage(self) -> None:
        """gc.collect() while recording ResourceWarnings raised by finalizers."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Finalizers can free further cycles; stop once nothing is found.
            for _ in range(3):
                if not gc.collect():
                    break
        for w in caught:
            if issubclass(w.category, ResourceWarning):
                self.resource_warnings.append(f"{w.category.__name__}: {w.message}")


def _describe_handler_calls(calls: list[dict]) -> str:
    lines = []
    for ctx in calls:
        parts = [f"message={ctx.get('message')!r}"]
        if ctx.get("exception") is not None:
            exc = ctx["exception"]
            parts.append(f"exception={type(exc).__name__}: {exc}")
        for key in sorted(k for k in ctx if k not in ("message", "exception")):
            parts.append(f"{key}={ctx[key]!r}")
        lines.append("  " + ", ".join(parts))
    return "\n".join(lines)


def _import_loop_module(name: str):
    # Deliberately not importorskip: an unbuilt ferroloop must show up as
    # errors, not as a quietly skipped half of the suite.
    return importlib.import_module(name)


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_event_loop_policy():
    """Tests may install ferroloop's policy; never let that leak into others."""
    # The policy API is deprecated from Python 3.14 on; saving and restoring
    # it here must not trip filterwarnings=error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(policy)


@pytest.fixture(params=LOOP_NAMES, ids=LOOP_NAMES)
def loop_name(request) -> str:
    return request.param


@pytest.fixture
def loop_module(loop_name):
    return _import_loop_module(loop_name)


@pytest.fixture
def _test_state() -> _TestState:
    return _TestState()


@pytest.fixture
def _resource_guard(_test_state):
    """Fail the test on unexpected handler calls, fd leaks or ResourceWarnings.

    Requested by ``factory`` (hence by ``loop``) so that its teardown runs after
    every loop of the test has been closed.
    """
    before = _open_fds()
    yield
    # Finalizers of tasks/futures still referenced from the test frame may call
    # the exception handler ("Task exception was never retrieved"), so collect
    # before judging.
    _test_state.collect_garbage()
    problems = []
    if _test_state.handler_calls and not _test_state.handler_calls_expected:
        problems.append(
            "loop exception handler called unexpectedly:\n" + _describe_handler_calls(_test_state.handler_calls)
        )
    if _test_state.resource_warnings:
        problems.append("unclosed-resource warnings:\n  " + "\n  ".join(_test_state.resource_warnings))
    if before is not None:
        # Executor / resolver threads may still be releasing descriptors.
        deadline = time.monotonic() + _FD_GRACE_SECONDS
        leaked = _new_fds(before)
        while leaked and time.monotonic() < deadline:
            time.sleep(0.02)
            gc.collect()
            leaked = _new_fds(before)
        if leaked:
            desc = ", ".join(f"{fd}->{target}" for fd, target in sorted(leaked.items()))
            problems.append(f"file descriptors leaked: {desc}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def factory(loop_name, loop_module, _resource_guard):
    """Callable creating loops of the kind under test; leftovers get closed."""
    created = []
    new_event_loop = loop_module.new_event_loop

    def make_loop():
        new_loop = new_event_loop()
        created.append(new_loop)
        return new_loop

    make_loop.__name__ = f"{loop_name}_new_event_loop"
    yield make_loop
    for leftover in created:
        if not leftover.is_closed() and not leftover.is_running():
            leftover.close()


@pytest.fixture
def loop(factory, _test_state):
    """A fresh loop of the kind under test, installed as the current loop."""
    the_loop = factory()
    the_loop.set_exception_handler(_test_state.record_handler_call)
    asyncio.set_event_loop(the_loop)
    try:
        yield the_loop
    finally:
        try:
            if the_loop.is_running():
                pytest.fail("loop is still running at teardown", pytrace=False)
            if not the_loop.is_closed():
                try:
                    the_loop.run_until_complete(the_loop.shutdown_asyncgens())
                    the_loop.run_until_complete(the_loop.shutdown_default_executor())
                finally:
                    the_loop.close()
        finally:
            asyncio.set_event_loop(None)
    # Unexpected exception-handler calls, fd leaks and ResourceWarnings are
    # judged by _resource_guard, whose teardown runs right after this one.


@pytest.fixture
def handler_calls(loop, _test_state) -> list[dict]:
    """Recorded exception-handler contexts; declares such calls expected."""
    _test_state.handler_calls_expected = True
    return _test_state.handler_calls


@pytest.fixture
def is_ferroloop(loop_name) -> bool:
    return loop_name == "ferroloop"


def pytest_report_header(config):
    try:
        import ferroloop
    except ImportError as exc:
        status = f"not importable ({exc})"
    else:
        status = getattr(ferroloop, "__version__", "importable")
    return [f"ferroloop: {status}", f"python: {sys.version.split()[0]}"]
