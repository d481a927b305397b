"""pytest plugin that ``run.py`` loads into a library's own test suite (``-p ferroloop_suite``).

- ``--ferroloop-outcomes PATH`` writes every test's outcome as JSON (node id -> ``passed``,
  ``failed`` or ``skipped``), so that two runs, or two loop parameters of one run, can be
  compared test by test. A failure or error in any phase (setup, call, teardown) is a failure,
  as is a test that passed but whose teardown then failed; an expected failure counts as skipped.
- ``--ferroloop-policy`` makes every loop that asyncio's default policy creates a ferroloop loop,
  for suites that get their loops from ``asyncio.new_event_loop()``, ``asyncio.run()``,
  ``IsolatedAsyncioTestCase`` or a plugin built on them (aiohttp's ``pyloop``). A test that resets
  the policy would send the tests after it to the stdlib loop, so the policy is put back before
  each test. The number of loops it made goes into the outcomes file, so the runner can tell
  that the suite ran on ferroloop at all.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import ferroloop
import pytest

LOOPS_MADE_KEY = "<ferroloop loops made>"
_RANK = {"passed": 0, "skipped": 1, "failed": 2}


class CountingPolicy(ferroloop.EventLoopPolicy):
    made = 0

    def new_event_loop(self) -> ferroloop.Loop:
        CountingPolicy.made += 1
        return super().new_event_loop()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferroloop")
    group.addoption("--ferroloop-outcomes", metavar="PATH", help="write each test's outcome here as JSON")
    group.addoption("--ferroloop-policy", action="store_true", help="asyncio's default loops are ferroloop loops")


class Recorder:
    def __init__(self, path: Path, policy: bool) -> None:
        self.path = path
        self.policy = policy
        self.outcomes: dict[str, str] = {}

    def _install(self) -> None:
        if self.policy and not isinstance(asyncio.get_event_loop_policy(), CountingPolicy):
            asyncio.set_event_loop_policy(CountingPolicy())

    def pytest_sessionstart(self) -> None:
        self._install()

    def pytest_runtest_setup(self) -> None:
        self._install()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            outcome = "failed"
        elif report.skipped:  # skipped, or an expected failure
            outcome = "skipped"
        else:
            outcome = "passed"
        previous = self.outcomes.get(report.nodeid, "passed")
        self.outcomes[report.nodeid] = max(previous, outcome, key=_RANK.__getitem__)

    def pytest_sessionfinish(self) -> None:
        data: dict[str, Any] = dict(self.outcomes)
        if self.policy:
            data[LOOPS_MADE_KEY] = CountingPolicy.made
        self.path.write_text(json.dumps(data, indent=0, sort_keys=True))


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--ferroloop-outcomes")
    policy = config.getoption("--ferroloop-policy")
    if path or policy:
        recorder = Recorder(Path(path or "/dev/null"), policy)
        config.pluginmanager.register(recorder, "ferroloop-suite-recorder")
        recorder._install()
