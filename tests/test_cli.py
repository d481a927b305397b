"""`python -m ferroloop run`: an unmodified asyncio program runs with ferroloop as its loop."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent(
    """
    import asyncio, sys

    async def main():
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        print(type(loop).__module__, type(loop).__name__, sys.argv[1:], __name__)

    asyncio.run(main())
    """
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferroloop", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_run_script_uses_ferroloop_and_passes_arguments(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    proc = run_cli("run", str(script), "a", "--flag")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ferroloop.loop", "Loop", "['a',", "'--flag']", "__main__"]


def test_run_module_uses_ferroloop(tmp_path, monkeypatch):
    (tmp_path / "prog_mod.py").write_text(PROGRAM)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    proc = run_cli("run", "-m", "prog_mod", "x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ferroloop.loop", "Loop", "['x']", "__main__"]


def test_script_exception_exits_nonzero_with_traceback(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("import asyncio\nasync def main():\n    raise ValueError('boom')\nasyncio.run(main())\n")
    proc = run_cli("run", str(script))
    assert proc.returncode == 1
    assert "ValueError: boom" in proc.stderr


def test_version_prints_package_version():
    import ferroloop

    proc = run_cli("version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == ferroloop.__version__


@pytest.mark.parametrize("args", [["run"], ["run", "-m"], ["run", "no-such-script.py"], ["bogus"]])
def test_bad_command_line_exits_with_usage_error(args):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr or "usage:" in proc.stdout


def test_arguments_after_the_script_belong_to_the_script(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    proc = run_cli("run", str(script), "-m", "mod")
    assert proc.returncode == 0, proc.stderr
    assert "['-m', 'mod']" in proc.stdout
