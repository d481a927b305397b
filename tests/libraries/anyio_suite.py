"""Run anyio's own test suite on ferroloop and on the stdlib loop, and compare.

    python tests/libraries/anyio_suite.py [--keep DIR]

anyio's tests take a ``loop_factory`` for their asyncio backend. This script downloads the
source distribution of the installed anyio version from PyPI, adds an ``asyncio+ferroloop``
backend parameter next to anyio's own ``asyncio`` one, runs the asyncio tests once for each, and
reports every test that fails on ferroloop but passes on the stdlib loop (the oracle). Tests that
fail on both (this machine has no IPv6, for example) say nothing about the loop.

Tests parametrised with trio as the *other* backend (a blocking portal into trio) are left out:
they need the trio release that anyio's version was made for, and with an older one they hang on
the stdlib loop too.

Needs network access to PyPI and installs anyio's test dependencies into the current
environment. Not part of `make test` (it downloads, and a few of anyio's tests are sensitive to
timing and to what earlier tests left behind); `make libraries` runs it. Exit status 1 when a
test fails only on ferroloop.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

TEST_DEPENDENCIES = ["blockbuster", "hypothesis", "psutil", "pytest-mock", "pytest-timeout", "trustme", "truststore"]
# Where the ferroloop parameter goes: right after anyio's own list of asyncio backends.
ANCHOR = "backend_params = asyncio_params.copy()"
FERROLOOP_PARAM = """
import ferroloop as _ferroloop

asyncio_params.append(
    pytest.param(("asyncio", {"debug": True, "loop_factory": _ferroloop.new_event_loop}), id="asyncio+ferroloop")
)
"""
ORACLE = "asyncio and not uvloop and not ferroloop and not eager and not trio"
SUBJECT = "ferroloop and not trio"


def fetch(version: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*command, f"anyio=={version}", "-d", str(into)], check=True)
    (archive,) = into.glob("anyio-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / f"anyio-{version}"


def add_ferroloop_backend(source: Path) -> None:
    conftest = source / "tests" / "conftest.py"
    text = conftest.read_text()
    if ANCHOR not in text:
        raise SystemExit(f"{conftest}: no {ANCHOR!r} line; this anyio version's tests need another hook")
    conftest.write_text(text.replace(ANCHOR, FERROLOOP_PARAM + "\n" + ANCHOR, 1))


def run(source: Path, keyword: str, report: Path) -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", "-k", keyword]
    subprocess.run(
        [*command, "--timeout", "60", f"--junitxml={report}"],
        cwd=source,
        check=False,
        stdout=subprocess.DEVNULL,
    )


def outcomes(report: Path) -> dict[str, str]:
    """Test id -> passed/failed/skipped, with ferroloop's backend id written as anyio's own
    (``asyncio``), so that the two runs' ids match."""
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        name = re.sub(r"(?<=[\[-])asyncio\+ferroloop(?=[\]-])", "asyncio", name)
        if case.find("failure") is not None or case.find("error") is not None:
            results[name] = "failed"
        elif case.find("skipped") is not None:
            results[name] = "skipped"
        else:
            results[name] = "passed"
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="work in this directory and leave it (default: a temporary one)")
    args = parser.parse_args()
    version = metadata.version("anyio")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *TEST_DEPENDENCIES], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = fetch(version, work)
        add_ferroloop_backend(source)
        run(source, ORACLE, work / "asyncio.xml")
        run(source, SUBJECT, work / "ferroloop.xml")
        oracle = outcomes(work / "asyncio.xml")
        subject = outcomes(work / "ferroloop.xml")
    counts = {
        name: {k: sum(1 for v in res.values() if v == k) for k in ("passed", "failed", "skipped")}
        for name, res in (("asyncio", oracle), ("ferroloop", subject))
    }
    only_ferroloop = sorted(t for t, v in subject.items() if v == "failed" and oracle.get(t) == "passed")
    # The oracle's own tests of asyncio options have no ferroloop variant.
    oracle = {t: v for t, v in oracle.items() if t in subject}
    print(f"anyio {version} test suite, asyncio backend (trio-portal tests left out):")
    for name, c in counts.items():
        print(f"  {name:9s} {c['passed']} passed, {c['failed']} failed or errors, {c['skipped']} skipped")
    print(f"  failing on ferroloop only: {len(only_ferroloop)}")
    for test in only_ferroloop:
        print(f"    {test}")
    return 1 if only_ferroloop else 0


if __name__ == "__main__":
    sys.exit(main())
