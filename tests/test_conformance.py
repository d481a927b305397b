"""CPython's own asyncio test suite on ferroloop: one pytest test per test_asyncio module, each
run by tests/conformance/run.py in its own process (see tests/conformance/README.md). A module
passes when every test the stdlib loop passes also passes on ferroloop, apart from the listed
white-box exclusions and known failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).parent / "conformance" / "run.py"
sys.path.insert(0, str(RUNNER.parent))
try:
    from run import MODULE_GROUPS
finally:
    sys.path.pop(0)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("module", MODULE_GROUPS["all"])
def test_cpython_asyncio_module_passes_on_ferroloop(module, tmp_path):
    report = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "--modules", module, "-j", "1", "-v", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert report.exists(), proc.stdout
    assert json.loads(report.read_text())  # the runner wrote per-test results
