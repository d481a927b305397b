"""The per-connection halves of `Loop`'s networking methods, taken from CPython's own loop.

`create_connection`, `create_server`, the Unix variants, `create_datagram_endpoint`,
`connect_accepted_socket`, `start_tls` (before Python 3.11; later ones take `_tls.start_tls`),
`sendfile`, the pipe and subprocess entry points and the `Server` they return are CPython's
implementations, taken unchanged from the running interpreter's `BaseEventLoop`,
`BaseSelectorEventLoop` and `_UnixSelectorEventLoop` and bound to `Loop`. They run once per
connection or call (argument checks, name resolution, happy eyeballs, binding, the error messages),
and keeping them identical keeps every edge case identical. What they build are ferroloop's
transports: they call the loop's `_make_socket_transport`, `_make_datagram_transport`,
`_make_ssl_transport`, `_make_read_pipe_transport`, `_make_write_pipe_transport` and
`_make_subprocess_transport`, which `Loop` overrides (`_transports.py`, `_subprocess.py`), so all
per-byte work is native.

Taking the functions from the running interpreter (not copying their source) keeps them matched
with that interpreter's version. `Loop` provides what they expect of a selector loop:
`_transports`, `_debug`, the `_add_*`/`_remove_*` watcher methods, and a read-only `_selector`
view (their `repr` asks it what an fd is watched for).
"""

from __future__ import annotations

import selectors
from asyncio import base_events, selector_events, unix_events
from typing import TYPE_CHECKING, Any, Protocol

_BORROWED: dict[type, tuple[str, ...]] = {
    base_events.BaseEventLoop: (
        "_check_sendfile_params",
        "_connect_sock",
        "_create_connection_transport",
        "_create_server_getaddrinfo",
        "_ensure_resolved",
        "_log_subprocess",
        "_sendfile_fallback",
        "_sock_sendfile_fallback",
        "connect_accepted_socket",
        "connect_read_pipe",
        "connect_write_pipe",
        "create_connection",
        "create_datagram_endpoint",
        "create_server",
        "sendfile",
        "sock_sendfile",
        "start_tls",
        "subprocess_exec",
        "subprocess_shell",
    ),
    selector_events.BaseSelectorEventLoop: (
        "_accept_connection",
        "_accept_connection2",
        "_ensure_fd_no_transport",
        "_sendfile_native",
        "_start_serving",
        "_stop_serving",
    ),
    unix_events._UnixSelectorEventLoop: (
        "_child_watcher_callback",
        "_sock_add_cancellation_callback",
        "_sock_sendfile_native",
        "_sock_sendfile_native_impl",
        "_sock_sendfile_update_filepos",
        "create_unix_connection",
        "create_unix_server",
    ),
}


def _collect() -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for source, names in _BORROWED.items():
        # Later sources override earlier ones, as in CPython's own class hierarchy; a name a
        # given Python version lacks is skipped.
        methods.update({name: source.__dict__[name] for name in names if name in source.__dict__})
    return methods


if TYPE_CHECKING:
    # For type checkers: the borrowed methods have the signatures of CPython's selector loop.

    class StdlibNetworking(unix_events.SelectorEventLoop):
        """CPython's per-connection networking code, bound to ferroloop's engine."""

        def _ensure_fd_no_transport(self, fd: Any) -> None: ...

else:
    StdlibNetworking = type(
        "StdlibNetworking",
        (),
        {
            **_collect(),
            "__doc__": "CPython's per-connection networking code, bound to ferroloop's engine.",
            "__slots__": (),
        },
    )


class _Watchers(Protocol):
    def _get_reader(self, fd: Any) -> Any: ...
    def _get_writer(self, fd: Any) -> Any: ...


class SelectorView:
    """The read-only part of a `selectors.BaseSelector` that CPython's transports use:
    `get_key()`, answered from the loop's native fd table."""

    __slots__ = ("_loop",)

    def __init__(self, loop: _Watchers) -> None:
        self._loop = loop

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        reader, writer = self._loop._get_reader(fileobj), self._loop._get_writer(fileobj)
        if reader is None and writer is None:
            raise KeyError(f"{fileobj!r} is not registered")
        events = (selectors.EVENT_READ if reader is not None else 0) | (
            selectors.EVENT_WRITE if writer is not None else 0
        )
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return selectors.SelectorKey(fileobj, fd, events, (reader, writer))
