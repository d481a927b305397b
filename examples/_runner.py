"""Choose the event loop the examples run on.

Every example does ``from _runner import run`` (or ``new_event_loop``) and so runs on ferroloop.
Setting ``FERROLOOP_EXAMPLES_LOOP=asyncio`` swaps in the standard library's loop instead; that is
how the ``.expected`` files were recorded. With ``FERROLOOP_EXAMPLES_SHOW_LOOP=1`` the class of the
loop in use is written to stderr, so a test can tell that the example really ran on ferroloop.
"""

import asyncio
import os
import sys

if os.environ.get("FERROLOOP_EXAMPLES_LOOP", "ferroloop") == "asyncio":
    _run = asyncio.run
    _new_event_loop = asyncio.new_event_loop
else:
    import ferroloop

    _run = ferroloop.run
    _new_event_loop = ferroloop.new_event_loop

_SHOW_LOOP = os.environ.get("FERROLOOP_EXAMPLES_SHOW_LOOP") == "1"


def _show(loop):
    if _SHOW_LOOP:
        cls = type(loop)
        print(f"loop: {cls.__module__}.{cls.__qualname__}", file=sys.stderr, flush=True)


async def _main_showing_loop(coro):
    _show(asyncio.get_running_loop())
    return await coro


def run(coro):
    """Run ``coro`` to completion on a fresh loop, like ``asyncio.run``."""
    if _SHOW_LOOP:
        coro = _main_showing_loop(coro)
    return _run(coro)


def new_event_loop():
    """Return a new, unstarted event loop."""
    loop = _new_event_loop()
    _show(loop)
    return loop
