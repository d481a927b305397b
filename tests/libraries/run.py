"""Run real libraries' own test suites on ferroloop and on the stdlib loop, and compare.

    python tests/libraries/run.py [anyio] [httpx] [uvicorn] [--keep DIR]

These suites run their async tests through anyio's pytest plugin, whose asyncio backend takes a
``loop_factory``. For each library this script downloads the source distribution of the
installed version from PyPI, adds a ferroloop backend parameter beside the stdlib ``asyncio``
one (the conftest addition below), runs the suite once with both, and reports every test that
fails on ferroloop but passes on the stdlib loop (the oracle). Tests that fail on both (this
machine has no IPv6, a dependency is of another version than the suite expects) say nothing
about the loop; tests without a loop parameter are counted apart.

Tests parametrised with trio are left out: they need the trio release the library's version was
made for, and with an older one some hang on the stdlib loop too.

Needs network access to PyPI and installs the suites' test dependencies into the current
environment. Not part of `make test` (it downloads, and a few tests of these suites are
sensitive to timing and to what earlier tests left behind); `make libraries` runs it. Exit
status 1 when a test fails only on ferroloop.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# anyio's conftest lists its asyncio backends in `asyncio_params`; ferroloop joins them there.
ANYIO_HOOK = (
    "backend_params = asyncio_params.copy()",
    """
import ferroloop as _ferroloop

asyncio_params.append(
    pytest.param(("asyncio", {"debug": True, "loop_factory": _ferroloop.new_event_loop}), id="ferroloop")
)
""",
)
# httpx's and uvicorn's tests take the plugin's backends or their own; an appended conftest fixture
# replaces them with the stdlib loop and ferroloop.
BACKEND_FIXTURE_HOOK = (
    None,
    """

import ferroloop as _ferroloop


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"loop_factory": _ferroloop.new_event_loop}), id="ferroloop"),
    ]
)
def anyio_backend(request):
    return request.param
""",
)


@dataclass
class Suite:
    package: str
    dependencies: list[str]
    # (line to insert before, or None to append; the text) for tests/conftest.py
    hook: tuple[str | None, str]
    pytest_args: tuple[str, ...] = ()


SUITES = {
    "anyio": Suite(
        "anyio",
        ["blockbuster", "hypothesis", "psutil", "pytest-mock", "trustme", "truststore"],
        ANYIO_HOOK,
    ),
    "httpx": Suite(
        "httpx",
        [
            *("chardet", "brotli", "click==8.*", "pygments==2.*", "rich>=10,<14", "h2>=3,<5"),
            *("socksio==1.*", "zstandard", "trustme", "uvicorn"),
        ],
        BACKEND_FIXTURE_HOOK,
    ),
    # uvicorn's conftest defines `anyio_backend` (asyncio only); the appended one replaces it.
    # Its options run the suite on 8 xdist workers; here it runs in one process, without the
    # codspeed benchmarks.
    "uvicorn": Suite(
        "uvicorn",
        [
            *("httpx2", "trustme", "a2wsgi", "wsproto", "websockets", "httptools", "python-dotenv"),
            *("pyyaml", "watchfiles", "pytest-mock"),
        ],
        BACKEND_FIXTURE_HOOK,
        ("-o", "addopts=", "--ignore=tests/benchmarks"),
    ),
}
FERROLOOP_ID = re.compile(r"(?<=[\[-])ferroloop(?=[\]-])")
ASYNCIO_ID = re.compile(r"(?<=[\[-])asyncio(?=[\]-])")


def fetch(package: str, version: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*command, f"{package}=={version}", "-d", str(into)], check=True)
    (archive,) = into.glob(f"{package}-{version}.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / f"{package}-{version}"


def add_ferroloop_backend(source: Path, hook: tuple[str | None, str]) -> None:
    conftest = source / "tests" / "conftest.py"
    text = conftest.read_text()
    anchor, addition = hook
    if anchor is None:
        text += addition
    elif anchor in text:
        text = text.replace(anchor, addition + "\n" + anchor, 1)
    else:
        raise SystemExit(f"{conftest}: no {anchor!r} line; this version's tests need another hook")
    conftest.write_text(text)


def outcomes(report: Path) -> dict[str, dict[str, str]]:
    """loop ("asyncio", "ferroloop" or "none") -> test id -> outcome. A ferroloop test's id is
    written as its stdlib twin's (its ``ferroloop`` parameter as ``asyncio``), so the two match
    even where another parameter is also ``asyncio`` (a portal's target backend)."""
    results: dict[str, dict[str, str]] = {"asyncio": {}, "ferroloop": {}, "none": {}}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if FERROLOOP_ID.search(name):
            loop, key = "ferroloop", FERROLOOP_ID.sub("asyncio", name)
        elif ASYNCIO_ID.search(name):
            loop, key = "asyncio", name
        else:
            loop, key = "none", name
        if case.find("failure") is not None or case.find("error") is not None:
            results[loop][key] = "failed"
        elif case.find("skipped") is not None:
            results[loop][key] = "skipped"
        else:
            results[loop][key] = "passed"
    return results


def run_suite(suite: Suite, work: Path) -> bool:
    version = metadata.version(suite.package)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *suite.dependencies], check=True)
    source = fetch(suite.package, version, work)
    add_ferroloop_backend(source, suite.hook)
    report = work / f"{suite.package}.xml"
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    subprocess.run(
        [*pytest, *suite.pytest_args, "-k", "not trio and not uvloop", "--timeout", "60", f"--junitxml={report}"],
        cwd=source,
        check=False,
        stdout=subprocess.DEVNULL,
    )
    results = outcomes(report)
    only_ferroloop = sorted(
        t for t, v in results["ferroloop"].items() if v == "failed" and results["asyncio"].get(t) == "passed"
    )
    # The stdlib loop's own extra tests (of asyncio-only options) have no ferroloop twin.
    results["asyncio"] = {t: v for t, v in results["asyncio"].items() if t in results["ferroloop"]}
    print(f"{suite.package} {version} test suite (trio tests left out):")
    for loop in ("asyncio", "ferroloop", "none"):
        counts = Counter(results[loop].values())
        label = "no loop parameter" if loop == "none" else loop
        print(f"  {label:17s} {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    print(f"  failing on ferroloop only: {len(only_ferroloop)}")
    for test in only_ferroloop:
        print(f"    {test}")
    return not only_ferroloop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="*", help=f"some of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--keep", help="work in this directory and leave it (default: a temporary one)")
    args = parser.parse_args()
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suites: {', '.join(unknown)}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.suites or SUITES:
            work = Path(args.keep or tmp) / name
            work.mkdir(parents=True, exist_ok=True)
            ok = run_suite(SUITES[name], work) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
