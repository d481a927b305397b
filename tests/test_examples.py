"""Run every program in examples/ and compare its stdout with the recorded ``.expected`` file.

Each example runs in a fresh interpreter, once on ferroloop and once on the stdlib asyncio loop
(the oracle the ``.expected`` files were recorded on). ``examples/_runner.py`` picks the loop from
``FERROLOOP_EXAMPLES_LOOP`` and, with ``FERROLOOP_EXAMPLES_SHOW_LOOP=1``, reports the loop class on
stderr so that a silent fallback to asyncio cannot pass as a ferroloop run.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(path.stem for path in EXAMPLES_DIR.glob("[0-9][0-9]_*.py"))

# Examples whose output order is not fully determined by the program. Their lines are compared
# after sorting:
# - 17_thread_pool prints its "started" lines from ThreadPoolExecutor worker threads, and the order
#   in which the OS schedules those threads varies from run to run.
UNORDERED = {"17_thread_pool"}

# Every example finishes in well under 2 s; this only stops a hung loop from stalling the suite.
RUN_TIMEOUT = 30

LOOP_LINE = re.compile(r"^loop: (\S+)$", re.MULTILINE)


def run_example(name: str, loop_name: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FERROLOOP_EXAMPLES_LOOP=loop_name, FERROLOOP_EXAMPLES_SHOW_LOOP="1")
    env.pop("PYTHONASYNCIODEBUG", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / f"{name}.py")],
        cwd=EXAMPLES_DIR.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def test_example_set_is_complete():
    assert len(EXAMPLES) == 23
    assert [name[:2] for name in EXAMPLES] == [f"{n:02d}" for n in range(1, 24)]
    readme = (EXAMPLES_DIR / "README.md").read_text()
    for name in EXAMPLES:
        assert (EXAMPLES_DIR / f"{name}.expected").is_file(), f"{name}.expected is missing"
        assert f"[{name}]({name}.py)" in readme, f"{name} is not listed in examples/README.md"


@pytest.mark.parametrize("example", EXAMPLES)
def test_example(example, loop_name):
    result = run_example(example, loop_name)
    assert result.returncode == 0, f"{example} exited with {result.returncode}; stderr:\n{result.stderr}"

    loops_used = LOOP_LINE.findall(result.stderr)
    assert loops_used, f"{example} did not report its loop; stderr:\n{result.stderr}"
    for loop_class in loops_used:
        assert loop_class.split(".")[0] == loop_name, f"{example} ran on {loop_class}, not on {loop_name}"

    expected = (EXAMPLES_DIR / f"{example}.expected").read_text().splitlines()
    actual = result.stdout.splitlines()
    if example in UNORDERED:
        expected.sort()
        actual.sort()
    assert actual == expected, f"stderr:\n{result.stderr}"
