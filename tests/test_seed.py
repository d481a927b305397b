"""The user's seed: every pattern of the asyncio guide in ../shared/seed runs unchanged on
ferroloop with the same stdout as on CPython's own loop (the seed's runner checks it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SEED_DIR = Path(os.environ.get("FERROLOOP_SEED_DIR", Path(__file__).resolve().parents[2] / "shared" / "seed"))
RUNNER = SEED_DIR / "run_examples.py"
EXAMPLES = sorted(p.stem for p in (SEED_DIR / "examples").glob("[0-9][0-9]_*.py")) if RUNNER.exists() else []

pytestmark = pytest.mark.skipif(not RUNNER.exists(), reason=f"the seed is not at {SEED_DIR} (set FERROLOOP_SEED_DIR)")


def test_seed_has_twenty_examples():
    assert len(EXAMPLES) == 20


@pytest.mark.timeout(180)
@pytest.mark.parametrize("example", EXAMPLES)
def test_seed_example_matches_cpython_output_on_ferroloop(example):
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "--loop", "ferroloop:new_event_loop", "-k", example],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0 and summary == "1 passed, 0 failed", proc.stdout + proc.stderr
