"""Command line: ``python -m ferroloop run script.py [args...]`` runs an unmodified asyncio
program with ferroloop as its event loop; ``python -m ferroloop version`` prints the version."""

from __future__ import annotations

import argparse
import runpy
import sys

from . import __version__, install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferroloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a Python script (or -m module) with ferroloop as asyncio's loop")
    run.add_argument("-m", dest="module", help="run a library module as a script, like python -m")
    run.add_argument("target", nargs="?", help="the script to run")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    commands.add_parser("version", help="print ferroloop's version")
    ns = parser.parse_args(argv)

    if ns.command == "version":
        print(__version__)
        return 0
    if (ns.module is None) == (ns.target is None):
        parser.error("run needs exactly one of a script path or -m module")
    install()
    if ns.module is not None:
        rest = [ns.target, *ns.args] if ns.target is not None else ns.args
        sys.argv = [ns.module, *rest]
        runpy.run_module(ns.module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [ns.target, *ns.args]
        runpy.run_path(ns.target, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
