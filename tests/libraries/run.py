"""Run real libraries' own test suites on ferroloop and on the stdlib loop, and compare.

    python tests/libraries/run.py [anyio] [httpx] [uvicorn] [aiohttp] [redis] [asyncpg] [--keep DIR]

For each library this script downloads the source distribution of the installed version from
PyPI, installs the suite's test dependencies into the current environment, runs the suite with
the stdlib loop and with ferroloop, and reports every test that fails on ferroloop but passes on
the stdlib loop (the oracle). Such a test is run once more on both loops, and only one that
fails on ferroloop again counts: a few tests of these suites depend on timing or on what earlier
tests left behind. Tests that fail on both loops (this machine has no IPv6, a dependency is of
another version than the suite expects) say nothing about the loop.

How ferroloop gets under a suite:

- anyio, httpx and uvicorn run their async tests through anyio's pytest plugin, whose asyncio
  backend takes a ``loop_factory``: an addition to the suite's ``tests/conftest.py`` (below)
  gives each test a ferroloop parameter beside the stdlib ``asyncio`` one, and one run does
  both. Tests without a loop parameter are counted apart. Tests parametrised with trio are left
  out: they need the trio release the library's version was made for, and with an older one
  some hang on the stdlib loop too.
- aiohttp's, redis-py's and asyncpg's tests take their loops from asyncio's default policy
  (aiohttp's ``pyloop``, pytest-asyncio, asyncpg's test case): the suite runs twice, the second
  time with ferroloop's policy installed by the ``ferroloop_suite`` plugin
  (``--ferroloop-policy``), which also checks that ferroloop loops were made.

redis-py's and asyncpg's suites talk to a real server, which this script starts on a free
loopback port for the two runs: ``redis-server`` and PostgreSQL's ``initdb``/``pg_ctl`` (found
through ``pg_config``; run as the ``postgres`` user when this script runs as root, which
PostgreSQL refuses). On Debian: ``apt-get install redis-server postgresql``. A suite whose server
is missing, or whose library is not installed, is reported and left out. asyncpg's tests that
make clusters of their own are among those failing on both loops here (they run ``initdb`` as
the current user).

Every run loads ``ferroloop_suite.py`` (beside this file), which records each test's outcome.
The tests import the installed library, not the downloaded copy: the copy's package directory is
removed (asyncpg's is not even built) and the interpreter runs with ``-P``.

Needs network access to PyPI. Not part of `make test` (it downloads, and takes a while);
`make libraries` runs it. Exit status 1 when a test fails only on ferroloop, twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ferroloop_suite import LOOPS_MADE_KEY

HERE = Path(__file__).resolve().parent

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
    # For suites on anyio's plugin: (line to insert before, or None to append; the text) for
    # tests/conftest.py, adding ferroloop as a loop parameter. None: the suite takes its loops
    # from asyncio's default policy and runs twice, the second time with ferroloop's.
    hook: tuple[str | None, str] | None
    pytest_args: tuple[str, ...] = ()
    tests: str = "tests"
    # A server the suite needs, started for its runs: "redis" or "postgres".
    server: str | None = None
    # pytest-asyncio, installed for redis-py's suite, is turned off for the others: it warns
    # about its own defaults, which suites that turn warnings into errors fail on.
    uses_pytest_asyncio: bool = False


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
    # aiohttp's options add coverage, xdist and doctests; here it runs in one process with the
    # markers its own CI deselects by default, without the codspeed benchmarks. Its
    # `filterwarnings = error` stays: an unclosed transport fails a test.
    "aiohttp": Suite(
        "aiohttp",
        [
            *("freezegun", "pkgconfig", "proxy.py>=2.4.4rc5", "pytest-mock", "setuptools-git", "gunicorn"),
            *("aiodns", "backports.zstd", "brotli", "blockbuster", "isal", "zlib_ng", "trustme", "coverage"),
        ],
        None,
        (
            *("-o", "addopts=", "-m", "not dev_mode and not autobahn and not internal"),
            "--ignore-glob=tests/test_benchmarks_*",
        ),
    ),
    # The asyncio client's tests only (the rest never make a loop), without those that need Redis
    # modules or a cluster. Its options run under xdist and coverage; the capture option it sets
    # is one pytest no longer has.
    "redis": Suite(
        "redis",
        [*("pytest-asyncio", "ujson", "numpy", "pybreaker", "xxhash", "redis-entraid"), "opentelemetry-sdk"],
        None,
        ("-o", "addopts=", "-m", "not redismod and not onlycluster"),
        tests="tests/test_asyncio",
        server="redis",
        uses_pytest_asyncio=True,
    ),
    "asyncpg": Suite("asyncpg", ["distro"], None, server="postgres"),
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


@dataclass
class Target:
    """A suite's downloaded source, and the options and environment that point it at its server."""

    suite: Suite
    source: Path
    server_args: list[str]
    server_env: dict[str, str]


def run_pytest(target: Target, name: str, *, ids: list[str] | None = None, policy: bool = False) -> dict[str, str]:
    """One pytest run of the suite (or of `ids`); test id -> outcome."""
    suite, source = target.suite, target.source
    outcomes = source.parent / f"{name}.json"
    outcomes.unlink(missing_ok=True)
    env = dict(os.environ, **target.server_env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "ferroloop_suite"]
    command += [*suite.pytest_args, *target.server_args, "-k", "not trio and not uvloop", "--timeout", "60"]
    if not suite.uses_pytest_asyncio:
        command += ["-p", "no:asyncio"]
    command += [f"--ferroloop-outcomes={outcomes}", *(["--ferroloop-policy"] if policy else [])]
    # Node ids go through a file: there can be hundreds.
    if ids is not None:
        listed = source.parent / f"{name}.ids"
        listed.write_text("\n".join(ids) + "\n")
        command.append(f"@{listed}")
    else:
        command.append(suite.tests)
    with open(source.parent / f"{name}.log", "w") as log:
        subprocess.run(command, cwd=source, env=env, check=False, stdout=log, stderr=subprocess.STDOUT)
    if not outcomes.exists():
        raise SystemExit(f"{suite.package}: pytest wrote no outcomes; see {source.parent / name}.log")
    results: dict[str, str] = json.loads(outcomes.read_text())
    if policy and not results.pop(LOOPS_MADE_KEY, 0):
        raise SystemExit(f"{suite.package}: no ferroloop loop was made; the suite did not run on ferroloop")
    return results


def split_by_parameter(results: dict[str, str]) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """loop ("asyncio", "ferroloop" or "none") -> test key -> outcome, and each ferroloop key's
    node id. A ferroloop test's key is its stdlib twin's id (its ``ferroloop`` parameter written
    as ``asyncio``), so the two match even where another parameter is also ``asyncio`` (a
    portal's target backend)."""
    loops: dict[str, dict[str, str]] = {"asyncio": {}, "ferroloop": {}, "none": {}}
    ferroloop_ids = {}
    for test, outcome in results.items():
        if FERROLOOP_ID.search(test):
            key = FERROLOOP_ID.sub("asyncio", test)
            loops["ferroloop"][key] = outcome
            ferroloop_ids[key] = test
        elif ASYNCIO_ID.search(test):
            loops["asyncio"][test] = outcome
        else:
            loops["none"][test] = outcome
    return loops, ferroloop_ids


def only_on_ferroloop(loops: dict[str, dict[str, str]]) -> list[str]:
    return sorted(t for t, v in loops["ferroloop"].items() if v == "failed" and loops["asyncio"].get(t) == "passed")


def compare_by_parameter(target: Target) -> tuple[dict[str, dict[str, str]], list[str], list[str]]:
    loops, ferroloop_ids = split_by_parameter(run_pytest(target, "run"))
    suspects = only_on_ferroloop(loops)
    confirmed: list[str] = []
    if suspects:
        again, _ = split_by_parameter(
            run_pytest(target, "again", ids=[i for t in suspects for i in (t, ferroloop_ids[t])])
        )
        confirmed = only_on_ferroloop(again)
    return loops, suspects, confirmed


def compare_by_policy(target: Target) -> tuple[dict[str, dict[str, str]], list[str], list[str]]:
    loops = {
        "asyncio": run_pytest(target, "asyncio"),
        "ferroloop": run_pytest(target, "ferroloop", policy=True),
        "none": {},
    }
    suspects = only_on_ferroloop(loops)
    confirmed: list[str] = []
    if suspects:
        again = {
            "asyncio": run_pytest(target, "asyncio-again", ids=suspects),
            "ferroloop": run_pytest(target, "ferroloop-again", ids=suspects, policy=True),
        }
        confirmed = only_on_ferroloop(again)
    return loops, suspects, confirmed


class ServerMissing(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on port {port} within 30 s")


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerMissing("needs redis-server (Debian: apt-get install redis-server)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with open(work / "redis-server.log", "w") as log:
        process = subprocess.Popen(command, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, "redis-server")
        yield [f"--redis-url=redis://127.0.0.1:{port}"], {}
    finally:
        process.terminate()
        process.wait()


def run_as(account: pwd.struct_passwd | None, command: list[str], *, check: bool = True) -> None:
    """Runs `command` (as `account`, if given), its output captured."""
    as_user = {} if account is None else {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    subprocess.run(command, check=check, capture_output=True, **as_user)


@contextlib.contextmanager
def postgres_server(work: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    try:
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise ServerMissing("needs PostgreSQL's server (Debian: apt-get install postgresql)") from None
    bindir = Path(found.stdout.strip())
    if not (bindir / "initdb").exists():
        raise ServerMissing(f"needs PostgreSQL's server: no initdb in {bindir}")
    # PostgreSQL refuses to run as root: then it runs as the postgres user, in a directory of its
    # own outside the work directory (which that user may not be able to enter).
    account = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerMissing("runs as root, and there is no postgres user to run PostgreSQL as") from None
    home = Path(tempfile.mkdtemp(prefix="ferroloop-pg-"))
    if account is not None:
        os.chown(home, account.pw_uid, account.pw_gid)
    data = home / "data"
    port = free_port()
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        run_as(account, [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"])
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
        run_as(account, [*pg_ctl, "-o", options, "-l", str(home / "log"), "-w", "start"])
        yield [], {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "postgres"}
    finally:
        run_as(account, [*pg_ctl, "-m", "immediate", "stop"], check=False)
        with contextlib.suppress(OSError):
            shutil.copy(home / "log", work / "postgres.log")
        shutil.rmtree(home, ignore_errors=True)


SERVERS = {"redis": redis_server, "postgres": postgres_server}


def run_suite(suite: Suite, work: Path) -> bool:
    try:
        version = metadata.version(suite.package)
    except metadata.PackageNotFoundError:
        # The suite tests the installed release; without one there is nothing to compare.
        print(f"{suite.package} test suite: not run, the package is not installed (pip install {suite.package})")
        return True
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *suite.dependencies], check=True)
    source = fetch(suite.package, version, work)
    # The tests must import the installed package (asyncpg's copy is not even compiled).
    shutil.rmtree(source / suite.package, ignore_errors=True)
    if suite.hook is not None:
        add_ferroloop_backend(source, suite.hook)
    with contextlib.ExitStack() as stack:
        server_args: list[str] = []
        server_env: dict[str, str] = {}
        if suite.server is not None:
            try:
                server_args, server_env = stack.enter_context(SERVERS[suite.server](work))
            except ServerMissing as missing:
                print(f"{suite.package} {version} test suite: not run, it {missing}")
                return True
        target = Target(suite, source, server_args, server_env)
        if suite.hook is not None:
            loops, suspects, confirmed = compare_by_parameter(target)
        else:
            loops, suspects, confirmed = compare_by_policy(target)
    # Tests that only one loop runs (the stdlib loop's extra tests of asyncio-only options) are
    # left out of the counts.
    common = loops["asyncio"].keys() & loops["ferroloop"].keys()
    print(f"{suite.package} {version} test suite ({len(common)} tests run on both loops):")
    for loop in ("asyncio", "ferroloop", "none"):
        counts = Counter(v for t, v in loops[loop].items() if loop == "none" or t in common)
        if loop == "none" and not counts:
            continue
        label = "no loop parameter" if loop == "none" else loop
        print(f"  {label:17s} {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    print(f"  failing on ferroloop only: {len(confirmed)} (of {len(suspects)} in the first run, run again)")
    for test in confirmed:
        print(f"    {test}")
    flaky = sorted(set(suspects) - set(confirmed))
    if flaky:
        print(f"  not failing again: {', '.join(flaky)}")
    return not confirmed


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
