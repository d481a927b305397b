"""Command line: ``python -m ferroloop run script.py [args...]`` (or ``run -m module [args...]``)
runs an unmodified asyncio program with ferroloop as its event loop; ``python -m ferroloop
version`` prints the version."""

from __future__ import annotations

import argparse
import os
import runpy
import sys

from . import __version__, install


def _run(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_usage()
        return 0 if argv else 2
    if argv[0] == "-m":
        if len(argv) < 2:
            parser.error("run -m needs a module name")
        module, rest = argv[1], argv[2:]
        install()
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    script, rest = argv[0], argv[1:]
    if not os.path.exists(script):
        parser.error(f"can't open file {script!r}: no such file")
    install()
    sys.argv = [script, *rest]
    # Like `python script.py`: the script's directory comes first on the import path.
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m ferroloop",
        usage="python -m ferroloop {run [-m module | script] [args...], version}",
        description=__doc__,
    )
    parser.add_argument("command", choices=["run", "version"])
    if argv[:1] == ["run"]:
        return _run(parser, argv[1:])
    ns = parser.parse_args(argv)
    if ns.command == "version":
        print(__version__)
    else:  # "run" with options before it
        parser.error("put options after 'run'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
