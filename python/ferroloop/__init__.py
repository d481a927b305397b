"""ferroloop: a drop-in replacement for asyncio's event loop, with its engine written in Rust.

Use it in one line::

    ferroloop.run(main())                                        # like asyncio.run(main())
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # Python 3.12+
    ferroloop.install()                                          # make asyncio.run() use it

or run an unmodified program: ``python -m ferroloop run script.py [args]``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._ferroloop import __version__
from .loop import Loop

__all__ = ["EventLoopPolicy", "Loop", "__version__", "install", "new_event_loop", "run"]

_T = TypeVar("_T")


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose new loops are ferroloop loops, for code that only calls
    `asyncio.run()`, `asyncio.new_event_loop()` or `asyncio.get_event_loop()`."""

    def new_event_loop(self) -> Loop:
        return new_event_loop()


def install() -> None:
    """Make ferroloop asyncio's default loop by installing `EventLoopPolicy`."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run a coroutine on a new ferroloop loop, like `asyncio.run()`, and return its result."""
    if sys.version_info >= (3, 12):
        return asyncio.run(main, debug=debug, loop_factory=new_event_loop)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)
    return _run_without_runner(main, debug=debug)


def _run_without_runner(main: Coroutine[Any, Any, _T], *, debug: bool | None) -> _T:
    """`asyncio.run()` for Python 3.9 and 3.10, which have no `asyncio.Runner`."""
    if asyncio._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        result: _T = loop.run_until_complete(main)
        return result
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                for task in pending:
                    if not task.cancelled() and task.exception() is not None:
                        loop.call_exception_handler(
                            {
                                "message": "unhandled exception during ferroloop.run() shutdown",
                                "exception": task.exception(),
                                "task": task,
                            }
                        )
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
