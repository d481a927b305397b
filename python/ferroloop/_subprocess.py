"""Child processes reaped through pidfds, with no helper thread and no SIGCHLD handler.

asyncio on Python 3.11 reaps subprocesses with a child watcher, by default a
`ThreadedChildWatcher`: one thread per child, blocked in `waitpid()`. On Linux 5.3+ a process
can be watched as a file descriptor instead (`os.pidfd_open`, Python 3.9+): it becomes readable
when the process exits, so the loop waits for it like any other fd, in the same poll, and reaps
it with a non-blocking `waitpid()`. This is what `Loop` does whenever pidfds are available;
elsewhere it falls back to asyncio's child watcher, as CPython's own loop does.

Only the reaping differs from asyncio: the transport is asyncio's `_UnixSubprocessTransport`
(whose pipes are the loop's native pipe transports), so `SubprocessTransport` behaves the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
from asyncio import base_subprocess, protocols, unix_events
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger("asyncio")


def _probe_pidfd() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:  # ENOSYS on kernels before 5.3, EPERM under some sandboxes
        return False
    os.close(fd)
    return True


PIDFD_AVAILABLE = _probe_pidfd()


class PidfdChildren:
    """The loop's subprocess factory, reaping children through pidfds."""

    __slots__ = ()

    if TYPE_CHECKING:
        _child_pidfds: dict[int, int]

        def _add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> object: ...
        def _remove_reader(self, fd: int) -> bool: ...
        def call_soon(self, callback: Callable[..., object], *args: Any) -> object: ...
        def create_future(self) -> asyncio.Future[Any]: ...

    async def _make_subprocess_transport(
        self,
        protocol: protocols.BaseProtocol,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> base_subprocess.BaseSubprocessTransport:
        if not PIDFD_AVAILABLE:
            fallback = unix_events._UnixSelectorEventLoop._make_subprocess_transport  # type: ignore[attr-defined]
            return await fallback(  # type: ignore[no-any-return]
                self,
                protocol,
                args,
                shell,
                stdin,
                stdout,
                stderr,
                bufsize,
                extra=extra,
                **kwargs,
            )
        waiter = self.create_future()
        transp = unix_events._UnixSubprocessTransport(  # type: ignore[attr-defined]
            self, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter=waiter, extra=extra, **kwargs
        )
        self._watch_child(transp.get_pid(), transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp  # type: ignore[no-any-return]

    def _watch_child(self, pid: int, transp: base_subprocess.BaseSubprocessTransport) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            # Reaped by someone else already (a SIGCHLD handler calling waitpid(-1), say).
            self._child_reaped(pid, None, transp)
            return
        self._child_pidfds[pidfd] = pid
        self._add_reader(pidfd, self._child_reaped, pid, pidfd, transp)

    def _child_reaped(self, pid: int, pidfd: int | None, transp: base_subprocess.BaseSubprocessTransport) -> None:
        if pidfd is not None:
            self._remove_reader(pidfd)
            del self._child_pidfds[pidfd]
            os.close(pidfd)
        try:
            # The pidfd is readable only once the child has exited: this does not block.
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            logger.warning("child process pid %d exit status already read: will report returncode 255", pid)
            returncode = 255
        else:
            returncode = os.waitstatus_to_exitcode(status)
        # As asyncio's watchers do: report on a later turn, so the pipes' last data comes first.
        self.call_soon(self.call_soon, transp._process_exited, returncode)

    def _close_child_pidfds(self) -> None:
        """On loop close: stop watching children (they are not killed, as with asyncio)."""
        for pidfd in list(self._child_pidfds):
            del self._child_pidfds[pidfd]
            os.close(pidfd)
