"""`Loop`: the full asyncio event loop, a Python subclass of the native engine.

The native base (`_ferroloop.LoopBase`) owns everything that runs per callback or per event: the
ready queue, the timer heap, fd watchers and the poll. This class adds what runs once per loop,
per task or per call site: the running-loop and async-generator bookkeeping around
`run_forever`, tasks and futures (CPython's own C-accelerated `asyncio.Future`/`asyncio.Task`),
exception-handler dispatch, executors, name resolution, signals and the `sock_*` coroutines.

Networking: the transports are native (`_transports`, over `_ferroloop.SocketCore` and
`PipeCore`), children are reaped through pidfds (`_subprocess`), servers accept plain
connections without a task each (`_accept`), and the per-connection entry points
(`create_connection`, `create_server`, ...) are CPython's own code building those transports
(`_stdlib_net`).
"""

from __future__ import annotations

import asyncio
import collections.abc
import concurrent.futures
import errno
import functools
import logging
import os
import signal
import socket
import sys
import threading
import traceback
import warnings
import weakref
from asyncio import coroutines, futures, tasks
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

from . import _ferroloop, _resolve
from ._accept import DirectAccept
from ._stdlib_net import SelectorView, StdlibNetworking
from ._subprocess import PidfdChildren
from ._transports import NativeTransports

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike
    from typing_extensions import TypeVarTuple, Unpack

    _Ts = TypeVarTuple("_Ts")

_T = TypeVar("_T")

logger = logging.getLogger("asyncio")

# What sock_recv() and sock_sendall() return for a plain socket acts as their coroutine would;
# registered so that asyncio.iscoroutine() accepts it, as create_task() requires.
collections.abc.Coroutine.register(_ferroloop.SockCall)

# asyncio's depth for coroutine origin tracking in debug mode.
_DEBUG_STACK_DEPTH = 10

try:
    import ssl
except ImportError:  # pragma: no cover - CPython without OpenSSL
    ssl = None  # type: ignore[assignment]


def _debug_mode_from_environment() -> bool:
    """asyncio's rule for a new loop's debug mode: `-X dev`, or PYTHONASYNCIODEBUG set and the
    environment honoured. asyncio's own helper is asked when it exists, so code (and tests) that
    patch it see the same answer on both loops."""
    is_debug_mode = getattr(coroutines, "_is_debug_mode", None)
    if is_debug_mode is not None:
        return bool(is_debug_mode())
    return sys.flags.dev_mode or (not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG")))


def _noop_signal_handler(signum: int, frame: object) -> None:
    """Installed for signals the loop handles: the real work happens via the wakeup fd."""


# The native call_soon()/call_later()/... return ferroloop's own Handle types, which are not
# asyncio.Handle subclasses (a documented difference): type checkers see the bases disagree.
class Loop(  # type: ignore[misc]
    _ferroloop.LoopBase, NativeTransports, DirectAccept, PidfdChildren, StdlibNetworking, asyncio.AbstractEventLoop
):
    """An asyncio event loop whose engine is written in Rust."""

    def __init__(self) -> None:
        self._exception_handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None
        self._default_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_shutdown_called = False
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking = False
        self._saved_origin_tracking_depth: int | None = None
        self._signal_handlers: dict[int, _ferroloop.Handle] = {}
        self._signal_socks: tuple[socket.socket, socket.socket] | None = None
        # fd -> transport owning it, for the check that user watchers do not steal its fd.
        self._transports: weakref.WeakValueDictionary[int, asyncio.BaseTransport] = weakref.WeakValueDictionary()
        # pidfd -> pid of each child process being waited for.
        self._child_pidfds: dict[int, int] = {}
        self.set_debug(_debug_mode_from_environment())
        self._refresh_overrides()
        _live_loops.add(self)

    # asyncio's loop reads its clock through self.time(), so a subclass or a test that replaces
    # time() (aiohttp's tests patch it on the loop) moves when timers fire, and its tasks schedule
    # through self.call_soon(). The native loop reads the monotonic clock directly, and its tasks
    # queue natively, unless told that these methods are replaced: the class is checked once, the
    # instance whenever one of these attributes is set or deleted.
    _OVERRIDABLE = frozenset({"time", "call_soon"})

    def _refresh_overrides(self) -> None:
        cls = type(self)
        base = _ferroloop.LoopBase
        self._set_overrides(
            "time" in self.__dict__ or cls.time is not base.time,
            "call_soon" in self.__dict__ or cls.call_soon is not base.call_soon,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self._OVERRIDABLE:
            self._refresh_overrides()

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        if name in self._OVERRIDABLE:
            self._refresh_overrides()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} running={self.is_running()} closed={self.is_closed()} debug={self.get_debug()}>"

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    @property
    def _debug(self) -> bool:
        return self.get_debug()

    @property
    def _selector(self) -> SelectorView | None:
        """What CPython's transports ask of a selector loop: which fds are watched for what
        (None once closed, as a selector loop's)."""
        return None if self.is_closed() else SelectorView(self)

    # -- fd watchers ---------------------------------------------------------------------------

    def _ensure_fd_no_transport(self, fd: FileDescriptorLike) -> None:
        """asyncio's check that a watcher or a sock_* wait does not take a transport's fd. The fd is
        looked up in the weak dictionary's underlying dict, where a miss raises no KeyError: this
        runs for every sock_recv() and sock_sendall() that has to wait."""
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        # The fd -> weak reference dict every WeakValueDictionary keeps as `data`.
        refs: dict[int, weakref.ReferenceType[asyncio.BaseTransport]] = self._transports.data  # type: ignore[attr-defined]
        ref = refs.get(fileno)
        transport = ref() if ref is not None else None
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def add_reader(self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], Any], *args: Unpack[_Ts]) -> None:
        """Call callback(*args) whenever fd (an int or an object with fileno()) is readable."""
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        """Stop watching fd for reading; return whether it was watched."""
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], Any], *args: Unpack[_Ts]) -> None:
        """Call callback(*args) whenever fd (an int or an object with fileno()) is writable."""
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        """Stop watching fd for writing; return whether it was watched."""
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    # -- running and stopping ------------------------------------------------------------------

    def _check_closed(self) -> None:
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self) -> None:
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if asyncio._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self) -> None:
        """Run the event loop until stop() is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        saved_hooks = sys.get_asyncgen_hooks()
        asyncio._set_running_loop(self)
        try:
            sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook, finalizer=self._asyncgen_finalizer_hook)
            super().run_forever()
        finally:
            self._set_coroutine_origin_tracking(False)
            asyncio._set_running_loop(None)
            sys.set_asyncgen_hooks(*saved_hooks)

    def run_until_complete(self, future: Any) -> Any:
        """Run until the future (a coroutine is wrapped in a Task) is done; return its result."""
        self._check_closed()
        self._check_running()
        wrapped = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if wrapped:
            # The caller cannot see this task, so it must not warn about being destroyed pending.
            future._log_destroy_pending = False
        future.add_done_callback(_run_until_complete_cb)
        try:
            self.run_forever()
        except BaseException:
            if wrapped and future.done() and not future.cancelled():
                # The exception propagates from here; mark it retrieved on the private task.
                future.exception()
            raise
        finally:
            future.remove_done_callback(_run_until_complete_cb)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self) -> None:
        """Close the loop: drop pending callbacks, signal handlers, and the default executor."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, skipping signal handlers removal",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
            self._signal_handlers.clear()
        self._close_signal_socks()
        self._close_child_pidfds()
        super().close()
        self._executor_shutdown_called = True
        executor, self._default_executor = self._default_executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def _after_fork(self) -> None:
        """In a forked child: stop sharing the poller and the signal socket with the parent."""
        if self.is_closed():
            return
        self._reinit_after_fork()
        if self._signal_socks is not None:
            self._close_signal_socks()
            if self._signal_handlers:
                try:
                    signal.set_wakeup_fd(self._signal_wakeup_fd(), warn_on_full_buffer=False)
                except (ValueError, OSError):
                    pass  # forked from a non-main thread: signals are not ours to take here

    # -- debug mode ----------------------------------------------------------------------------

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        if bool(enabled) == self._coroutine_origin_tracking:
            return
        if enabled:
            self._saved_origin_tracking_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(_DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(self._saved_origin_tracking_depth or 0)
        self._coroutine_origin_tracking = bool(enabled)

    def _log_slow_callback(self, handle: _ferroloop.Handle, seconds: float) -> None:
        """Called by the engine in debug mode when a callback ran longer than slow_callback_duration."""
        owner = getattr(handle._callback, "__self__", None)
        what = repr(owner) if isinstance(owner, asyncio.Task) else str(handle)
        logger.warning("Executing %s took %.3f seconds", what, seconds)

    # -- futures and tasks ---------------------------------------------------------------------
    # create_future(), create_task() and the task factory are native (per task, so no Python
    # frame); Python 3.13 widened create_task() to pass any keyword to the factory or Task.

    if sys.version_info >= (3, 13):

        def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            """Schedule a coroutine object; return a Task."""
            self._check_closed()
            factory = self.get_task_factory()
            if factory is not None:
                return factory(self, coro, **kwargs)  # type: ignore[return-value]
            if set(kwargs) <= {"name", "context"}:
                return super().create_task(coro, **kwargs)
            task = asyncio.Task(coro, loop=self, **kwargs)
            if task._source_traceback:
                del task._source_traceback[-1]
            return task

    # -- async generators ----------------------------------------------------------------------

    def _asyncgen_firstiter_hook(self, agen: Any) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after loop.shutdown_asyncgens() call",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
        self._asyncgens.add(agen)

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self) -> None:
        """Close every asynchronous generator still alive on this loop."""
        self._asyncgens_shutdown_called = True
        alive = list(self._asyncgens)
        self._asyncgens.clear()
        if not alive:
            return
        outcomes = await tasks.gather(*[agen.aclose() for agen in alive], return_exceptions=True)
        for agen, outcome in zip(alive, outcomes):
            if isinstance(outcome, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of asynchronous generator {agen!r}",
                        "exception": outcome,
                        "asyncgen": agen,
                    }
                )

    # -- exception handling --------------------------------------------------------------------

    def get_exception_handler(self) -> Callable[..., object] | None:
        """Return the exception handler, or None if the default one is in use."""
        return self._exception_handler

    def set_exception_handler(self, handler: Callable[..., object] | None) -> None:
        """Set handler(loop, context) as the loop's exception handler; None restores the default."""
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Log the context's message, its other keys and the exception's traceback on 'asyncio'."""
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = (type(exception), exception, exception.__traceback__) if exception is not None else False
        if "source_traceback" not in context:
            # In debug mode: where the callback running now was scheduled (asyncio adds it too,
            # to the caller's dict).
            handle = self._current_handle
            if handle is not None and handle._source_traceback:
                context["handle_traceback"] = handle._source_traceback
        lines = [message]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            value = context[key]
            if key == "source_traceback":
                text = "Object created at (most recent call last):\n" + "".join(traceback.format_list(value)).rstrip()
            elif key == "handle_traceback":
                text = "Handle created at (most recent call last):\n" + "".join(traceback.format_list(value)).rstrip()
            else:
                text = repr(value)
            lines.append(f"{key}: {text}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Pass context to the exception handler; errors in the handler are logged, not raised."""
        handler = self._exception_handler
        if handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {"message": "Unhandled error in exception handler", "exception": exc, "context": context}
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an unexpected error "
                    "in custom exception handler",
                    exc_info=True,
                )

    # -- executors -----------------------------------------------------------------------------

    def run_in_executor(
        self, executor: concurrent.futures.Executor | None, func: Callable[[Unpack[_Ts]], _T], *args: Unpack[_Ts]
    ) -> asyncio.Future[_T]:
        """Run func(*args) in executor (the default thread pool if None); return an awaitable future."""
        self._check_closed()
        if self.get_debug() and (coroutines.iscoroutine(func) or coroutines.iscoroutinefunction(func)):
            raise TypeError("coroutines cannot be used with run_in_executor()")
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                executor = self._default_executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
        return _wrap_executor_future(self, executor.submit(func, *args))

    def set_default_executor(self, executor: concurrent.futures.Executor) -> None:
        """Set the executor run_in_executor(None, ...) uses."""
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self) -> None:
        """Wait for the default executor's threads to finish, without blocking the loop."""
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        done = self.create_future()

        def shut_down() -> None:
            try:
                executor.shutdown(wait=True)
            except Exception as exc:
                if not self.is_closed():
                    self.call_soon_threadsafe(_set_exception_unless_done, done, exc)
            else:
                if not self.is_closed():
                    self.call_soon_threadsafe(_set_result_unless_done, done, None)

        thread = threading.Thread(target=shut_down, name="ferroloop-executor-shutdown")
        thread.start()
        try:
            await done
        finally:
            thread.join()

    # -- name resolution -----------------------------------------------------------------------

    async def getaddrinfo(
        self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        """socket.getaddrinfo in the default executor; numeric hosts are answered inline."""
        if _resolve.is_numeric(host, port):
            return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        return cast(
            "list[Any]", await self.run_in_executor(None, socket.getaddrinfo, host, port, family, type, proto, flags)
        )

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int = 0) -> tuple[str, str]:
        """socket.getnameinfo in the default executor."""
        return cast("tuple[str, str]", await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags))

    # -- signals -------------------------------------------------------------------------------

    def _check_signal(self, sig: Any) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _signal_wakeup_fd(self) -> int:
        """The write end of the pipe Python's C signal handler writes signal numbers to."""
        if self._signal_socks is None:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._signal_socks = (reader, writer)
            self._add_reader(reader.fileno(), self._read_signals)
        return self._signal_socks[1].fileno()

    def _close_signal_socks(self) -> None:
        if self._signal_socks is not None:
            reader, writer = self._signal_socks
            self._signal_socks = None
            self._remove_reader(reader.fileno())
            reader.close()
            writer.close()

    def _read_signals(self) -> None:
        assert self._signal_socks is not None
        reader = self._signal_socks[0]
        while True:
            try:
                data = reader.recv(4096)
            except InterruptedError:
                continue
            except BlockingIOError:
                return
            if not data:
                return
            for signum in data:
                handle = self._signal_handlers.get(signum)
                if handle is None:
                    continue
                if handle.cancelled():
                    self.remove_signal_handler(signum)
                else:
                    self._call_handle(handle)

    def add_signal_handler(self, sig: int, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> None:
        """Run callback(*args) in the loop whenever signal sig arrives (main thread only)."""
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # Raises ValueError outside the main thread, as signal handlers can only live there.
            signal.set_wakeup_fd(self._signal_wakeup_fd(), warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        self._signal_handlers[sig] = self._persistent_handle(callback, *args)
        try:
            signal.signal(sig, _noop_signal_handler)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._release_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove the handler for sig; return whether there was one."""
        self._check_signal(sig)
        handle = self._signal_handlers.pop(sig, None)
        if handle is None:
            return False
        handle.cancel()
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, default)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise
        if not self._signal_handlers:
            self._release_wakeup_fd()
        return True

    def _release_wakeup_fd(self) -> None:
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(-1) failed: %s", exc)

    # -- low-level socket operations -----------------------------------------------------------

    def _check_sock(self, sock: socket.socket) -> None:
        if ssl is not None and isinstance(sock, ssl.SSLSocket):
            raise TypeError("Socket cannot be of type SSLSocket")
        # As asyncio: a blocking socket is only refused in debug mode.
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    async def _sock_io(self, sock: socket.socket, write: bool, method: str, *args: Any) -> Any:
        """Await sock.<method>(*args) on a non-blocking socket: retried each time the socket is
        ready, until it stops raising BlockingIOError. The method is looked up on every try, as
        asyncio does (code that wraps or patches socket methods relies on it)."""
        try:
            return getattr(sock, method)(*args)
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        add = self._add_writer if write else self._add_reader
        handle = add(fd, _retry_sock_op, fut, sock, method, args)
        fut.add_done_callback(functools.partial(self._sock_io_done, fd, write, handle))
        return await fut

    def _sock_io_done(self, fd: int, write: bool, handle: _ferroloop.Handle, fut: asyncio.Future[Any]) -> None:
        # A handle replaced by another add_reader()/add_writer() was cancelled: the fd's new
        # watcher is not ours to remove.
        if not handle.cancelled():
            (self._remove_writer if write else self._remove_reader)(fd)

    # sock_recv() and sock_sendall() are LoopBase's: for a plain socket they return a native
    # awaitable (see the Rust module transport::sock_call), otherwise these coroutines.

    async def _sock_recv_coro(self, sock: socket.socket, n: int) -> bytes:
        """sock_recv() for what the native awaitable does not take: debug mode, a socket
        subclass or a patched recv(), a size that is not a non-negative int."""
        if type(sock) is _SOCKET and _SOCKET.recv is _C_RECV and n >= 0:
            # The native path (it makes debug mode's check itself; a plain socket is never an
            # SSLSocket): same steps, no exception per empty try, no Python callback. Taken only
            # while nobody has patched socket.socket.recv, which it would bypass.
            result = _ferroloop.sock_recv(self, sock, n)
            if isinstance(result, bytes):
                return result
            return await result
        self._check_sock(sock)
        return cast(bytes, await self._sock_io(sock, False, "recv", n))

    # Tasks running these show the method the program called.
    _sock_recv_coro.__qualname__ = "Loop.sock_recv"

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        """Receive data from sock into buf; return the number of bytes received."""
        self._check_sock(sock)
        return cast(int, await self._sock_io(sock, False, "recv_into", buf))

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        """Receive a datagram of up to bufsize bytes; return (data, address)."""
        self._check_sock(sock)
        return cast("tuple[bytes, Any]", await self._sock_io(sock, False, "recvfrom", bufsize))

    async def sock_recvfrom_into(self, sock: socket.socket, buf: Any, nbytes: int = 0) -> tuple[int, Any]:
        """Receive a datagram into buf; return (nbytes, address)."""
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        return cast("tuple[int, Any]", await self._sock_io(sock, False, "recvfrom_into", buf, nbytes))

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        """Send a datagram to address; return the number of bytes sent."""
        self._check_sock(sock)
        return cast(int, await self._sock_io(sock, True, "sendto", data, address))

    async def _sock_sendall_coro(self, sock: socket.socket, data: Any) -> None:
        """sock_sendall() for what the native awaitable does not take: debug mode, a socket
        subclass or a patched send(), data other than bytes."""
        self._check_sock(sock)
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent != memoryview(data).nbytes:
            await self._sock_sendall_wait(sock, data, sent)

    _sock_sendall_coro.__qualname__ = "Loop.sock_sendall"

    def _sock_sendall_wait(self, sock: socket.socket, data: Any, sent: int) -> asyncio.Future[None]:
        """A future for the rest of data after its first sent bytes: a writer sends it as the
        socket drains."""
        view = memoryview(data).cast("B")
        fut: asyncio.Future[None] = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_writer(fd, _send_rest, fut, sock, view, [sent])
        fut.add_done_callback(functools.partial(self._sock_io_done, fd, True, handle))
        return fut

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """Connect sock to address, resolving a host name first for IP sockets."""
        self._check_sock(sock)
        if sock.family in _resolve.IP_FAMILIES:
            infos = await _resolve.resolve_address(self, address, sock.family, sock.type, sock.proto)
            address = infos[0][4]
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_writer(fd, _finish_connect, fut, sock, address)
        fut.add_done_callback(functools.partial(self._sock_io_done, fd, True, handle))
        try:
            await fut
        finally:
            # Break the reference cycle through the exception's traceback.
            del fut

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        """Accept a connection; return (conn, address) with conn non-blocking."""
        self._check_sock(sock)
        conn, address = await self._sock_io(sock, False, "accept")
        conn.setblocking(False)
        return conn, address


# Every open loop, so a forked child can give each its own poller (see Loop._after_fork).
_live_loops: weakref.WeakSet[Loop] = weakref.WeakSet()


def _reinit_loops_in_child() -> None:
    for loop in list(_live_loops):
        try:
            loop._after_fork()
        except Exception:  # one loop's failure must not leave the others sharing the parent's poller
            logger.exception("ferroloop: could not give %r its own poller after fork()", loop)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_loops_in_child)


def _run_until_complete_cb(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # run_forever() has already been left by this exception; stopping now would stop
            # the next run instead.
            return
    fut.get_loop().stop()


def _set_result_unless_done(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _set_exception_unless_done(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


_SOCKET = socket.socket
# The C method: the native sock_recv() path must not bypass a patched one (a plain socket has no
# instance dict, so only the class can be patched).
_C_RECV = socket.socket.recv


def _wrap_executor_future(loop: Loop, source: concurrent.futures.Future[_T]) -> asyncio.Future[_T]:
    """`asyncio.wrap_future(source, loop=loop)`, with asyncio's steps for a concurrent future chained
    to a future of the loop, minus its type probes. `asyncio.isfuture()` on a concurrent future
    calls `hasattr()` on its class, which fails: three `AttributeError`s raised and formatted per
    call. Without them `run_in_executor()` runs a fifth fewer instructions (bench/instructions.py,
    docs/perf-log.md)."""
    if type(source) is not concurrent.futures.Future:
        return futures.wrap_future(source, loop=loop)
    destination: asyncio.Future[_T] = loop.create_future()

    def check_cancel(destination: asyncio.Future[_T]) -> None:
        if destination.cancelled():
            source.cancel()

    def set_state(source: concurrent.futures.Future[_T]) -> None:
        # In the executor's thread (or in this one, if the future is already done).
        if loop.is_closed():
            return
        loop.call_soon_threadsafe(_copy_executor_state, source, destination)

    destination.add_done_callback(check_cancel)
    source.add_done_callback(set_state)
    return destination


def _copy_executor_state(source: concurrent.futures.Future[_T], destination: asyncio.Future[_T]) -> None:
    # asyncio's _copy_future_state(), assertion included.
    if destination.cancelled():
        return
    assert not destination.done()
    if source.cancelled():
        destination.cancel()
        return
    exc = source.exception()
    if exc is None:
        destination.set_result(source.result())
    else:
        destination.set_exception(_convert_future_exc(exc))


def _convert_own_future_exc(exc: BaseException) -> BaseException:
    """concurrent.futures' exception types become asyncio's, as a new exception (asyncio's
    conversion as of 3.11, for an interpreter without its private helper)."""
    kind = type(exc)
    if kind is concurrent.futures.CancelledError:
        return asyncio.CancelledError(*exc.args)
    if kind is concurrent.futures.TimeoutError:
        return asyncio.TimeoutError(*exc.args)
    if kind is concurrent.futures.InvalidStateError:
        return asyncio.InvalidStateError(*exc.args)
    return exc


# The running interpreter's own conversion, whose details vary by version (3.13 keeps the
# traceback on the new exception).
_convert_future_exc: Callable[[BaseException], BaseException] = getattr(
    futures, "_convert_future_exc", _convert_own_future_exc
)


def _retry_sock_op(fut: asyncio.Future[Any], sock: socket.socket, method: str, args: tuple[Any, ...]) -> None:
    if fut.done():
        return
    try:
        result = getattr(sock, method)(*args)
    except (BlockingIOError, InterruptedError):
        return
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _send_rest(fut: asyncio.Future[Any], sock: socket.socket, view: memoryview, progress: list[int]) -> None:
    if fut.done():
        return
    start = progress[0]
    try:
        sent = sock.send(view[start:])
    except (BlockingIOError, InterruptedError):
        return
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
        return
    start += sent
    if start == view.nbytes:
        fut.set_result(None)
    else:
        progress[0] = start


def _finish_connect(fut: asyncio.Future[Any], sock: socket.socket, address: Any) -> None:
    if fut.done():
        return
    try:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, f"Connect call failed {address}")
    except (BlockingIOError, InterruptedError):
        return
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(None)
    finally:
        # The exception's traceback holds this frame: without the future, which holds the
        # exception, the two do not keep each other alive (asyncio's `_sock_connect_cb` does the same).
        del fut
