//! `loop.sock_recv()` and `loop.sock_sendall()` as native awaitables.
//!
//! asyncio defines both as `async def` methods, so every call makes a coroutine object and a
//! frame and runs Python code before any I/O; a server looping on them paid more for that than
//! for the receive and send themselves (callgrind of the `sock` echo benchmark). Here the call
//! returns a [`SockCall`]: a small native object that behaves as that coroutine would.
//!
//! - It is lazy: nothing happens until it is first awaited (or sent `None`), so a call that is
//!   never awaited reads or writes nothing, as with a coroutine.
//! - Awaiting it tries the operation at once; when it completes (the common case for a busy
//!   socket) the `await` returns without any Python frame or exception, through the `am_send`
//!   slot that CPython's `await` uses.
//! - When the socket is not ready it yields the future that the waiting path resolves (the
//!   native reader of `sock_wait` for receives, a writer for the rest of a send), as
//!   `await future` would, and returns that future's result.
//! - `send`, `throw` and `close` make it a `collections.abc.Coroutine` (registered from
//!   Python), so `create_task()`, `ensure_future()` and `wait_for()` accept it.
//!
//! Only the plain case takes this path: a `socket.socket` whose `recv`/`send` are the C ones,
//! `bytes` to send, outside debug mode. Anything else goes to the Python coroutines of
//! `ferroloop.loop`, which follow asyncio step by step.

use super::sock_wait::{self, Received, RecvWaiter};
use crate::errors::os_error;
use crate::event_loop::LoopBase;
use pyo3::exceptions::{PyBaseException, PyRuntimeError, PyStopIteration, PyTypeError};
use pyo3::ffi;
use pyo3::import_exception;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyTypeInfo, PyVisit};
use std::io;
use std::os::fd::RawFd;

import_exception!(asyncio, InvalidStateError);

/// What a call does when first awaited.
enum Op {
    Recv(usize),
    SendAll(Py<PyBytes>),
}

enum State {
    /// Created, not awaited yet.
    Start(Op),
    /// Waiting for this future, which it yielded to the task; for a receive, `waiter` is the
    /// socket's reader, to be told if the wait is given up.
    Waiting {
        future: Py<PyAny>,
        waiter: Option<Py<RecvWaiter>>,
    },
    Done,
}

/// One step of the awaitable: a future to yield to the task, or its result.
enum Step {
    Yield {
        future: Py<PyAny>,
        waiter: Option<Py<RecvWaiter>>,
    },
    Return(Py<PyAny>),
}

/// The awaitable that `sock_recv()` and `sock_sendall()` return for a plain socket.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct SockCall {
    event_loop: Py<PyAny>,
    sock: Option<Py<PyAny>>,
    state: State,
    /// The loop method that made it, for its `__qualname__`.
    method: &'static str,
}

/// `socket.socket` and its C `recv` and `send` methods, as the module found them.
struct SocketType {
    cls: Py<PyType>,
    recv: Py<PyAny>,
    send: Py<PyAny>,
}

static SOCKET_TYPE: PyOnceLock<SocketType> = PyOnceLock::new();

fn socket_type(py: Python<'_>) -> PyResult<&SocketType> {
    SOCKET_TYPE.get_or_try_init(py, || {
        let cls = py.import("socket")?.getattr("socket")?.cast_into::<PyType>()?;
        let recv = cls.getattr("recv")?.unbind();
        let send = cls.getattr("send")?.unbind();
        Ok(SocketType {
            cls: cls.unbind(),
            recv,
            send,
        })
    })
}

/// Which method of a socket the native path replaces.
#[derive(Clone, Copy)]
enum Method {
    Recv,
    Send,
}

/// Whether `sock` is a plain `socket.socket` whose `method` is still the C one: code that
/// patches or wraps it must see its own method called, so it gets the Python path.
fn plain_socket(sock: &Bound<'_, PyAny>, method: Method) -> PyResult<bool> {
    let py = sock.py();
    let socket = socket_type(py)?;
    let cls = socket.cls.bind(py);
    if !sock.get_type().is(cls) {
        return Ok(false);
    }
    let (name, original) = match method {
        Method::Recv => (intern!(py, "recv"), &socket.recv),
        Method::Send => (intern!(py, "send"), &socket.send),
    };
    Ok(cls.getattr(name)?.is(original))
}

/// `loop.sock_recv(sock, n)`.
pub fn sock_recv(
    event_loop: &Bound<'_, LoopBase>,
    sock: &Bound<'_, PyAny>,
    n: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = event_loop.py();
    if !event_loop.borrow().debug_enabled() && plain_socket(sock, Method::Recv)? {
        // A size that is not an int, or negative, gets the Python path and its exception.
        if let Ok(n) = n.extract::<usize>() {
            return SockCall::create(event_loop, sock, Op::Recv(n), "Loop.sock_recv");
        }
    }
    Ok(event_loop
        .call_method1(intern!(py, "_sock_recv_coro"), (sock, n))?
        .unbind())
}

/// `loop.sock_sendall(sock, data)`.
pub fn sock_sendall(
    event_loop: &Bound<'_, LoopBase>,
    sock: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = event_loop.py();
    if let Ok(bytes) = data.cast_exact::<PyBytes>() {
        if !event_loop.borrow().debug_enabled() && plain_socket(sock, Method::Send)? {
            return SockCall::create(
                event_loop,
                sock,
                Op::SendAll(bytes.clone().unbind()),
                "Loop.sock_sendall",
            );
        }
    }
    Ok(event_loop
        .call_method1(intern!(py, "_sock_sendall_coro"), (sock, data))?
        .unbind())
}

/// One `send()` of `data` on `fd`: the bytes sent, 0 when the socket buffer is full. Retries
/// after a signal as `socket.send()` does, running Python's handlers first.
fn send_once(py: Python<'_>, fd: RawFd, data: &[u8]) -> PyResult<usize> {
    loop {
        // SAFETY: `data` is valid for reads of its length.
        let sent = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => py.check_signals()?,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(os_error(&err)),
        }
    }
}

impl SockCall {
    fn create(
        event_loop: &Bound<'_, LoopBase>,
        sock: &Bound<'_, PyAny>,
        op: Op,
        method: &'static str,
    ) -> PyResult<Py<PyAny>> {
        let call = SockCall {
            event_loop: event_loop.clone().into_any().unbind(),
            sock: Some(sock.clone().unbind()),
            state: State::Start(op),
            method,
        };
        Ok(Py::new(event_loop.py(), call)?.into_any())
    }

    /// Starts the operation: its result, or the future to wait for. Runs with no borrow of the
    /// awaitable held, since it calls Python code (`fileno()`, the loop's methods).
    fn start(py: Python<'_>, event_loop: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, op: Op) -> PyResult<Step> {
        match op {
            // The reader is told when the wait is given up (`abandon`), so the future needs no
            // done callback.
            Op::Recv(n) => Ok(match sock_wait::start_recv(event_loop, sock, n, false)? {
                Received::Data(data) => Step::Return(data),
                Received::Wait { future, waiter } => Step::Yield {
                    future,
                    waiter: Some(waiter),
                },
            }),
            Op::SendAll(data) => {
                let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
                let bytes = data.bind(py).as_bytes();
                let sent = send_once(py, fd, bytes)?;
                if sent == bytes.len() {
                    return Ok(Step::Return(py.None()));
                }
                let future = event_loop.call_method1(intern!(py, "_sock_sendall_wait"), (sock, data, sent))?;
                Ok(Step::Yield {
                    future: future.unbind(),
                    waiter: None,
                })
            }
        }
    }

    /// Resumes the awaitable with `value` (what the task sends it: `None`).
    fn step(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Step> {
        let py = slf.py();
        let state = std::mem::replace(&mut slf.borrow_mut().state, State::Done);
        match state {
            State::Start(op) => {
                if !value.is_none() {
                    return Err(PyTypeError::new_err(
                        "can't send non-None value to a just-started coroutine",
                    ));
                }
                let (event_loop, sock) = {
                    let s = slf.borrow();
                    let Some(sock) = s.sock.as_ref() else {
                        return Err(PyRuntimeError::new_err("cannot reuse already awaited coroutine"));
                    };
                    (s.event_loop.clone_ref(py), sock.clone_ref(py))
                };
                let started = Self::start(py, event_loop.bind(py), sock.bind(py), op);
                let mut s = slf.borrow_mut();
                let step = match started {
                    Ok(step) => step,
                    Err(err) => {
                        s.sock = None;
                        return Err(err);
                    }
                };
                match &step {
                    Step::Yield { future, waiter } => {
                        // As `Future.__await__` does before yielding itself: the task checks it.
                        future.bind(py).setattr(intern!(py, "_asyncio_future_blocking"), true)?;
                        s.state = State::Waiting {
                            future: future.clone_ref(py),
                            waiter: waiter.as_ref().map(|w| w.clone_ref(py)),
                        };
                    }
                    Step::Return(_) => s.sock = None,
                }
                Ok(step)
            }
            State::Waiting { future, .. } => {
                slf.borrow_mut().sock = None;
                // The task resumes us once the future is done; `result()` then returns or raises
                // what `await future` would. Only if it is not done (something other than a task
                // drove us) does it raise InvalidStateError, which `Future.__await__` reports as:
                match future.bind(py).call_method0(intern!(py, "result")) {
                    Ok(result) => Ok(Step::Return(result.unbind())),
                    Err(err) if err.is_instance_of::<InvalidStateError>(py) => {
                        Err(PyRuntimeError::new_err("await wasn't used with future"))
                    }
                    Err(err) => Err(err),
                }
            }
            State::Done => Err(PyRuntimeError::new_err("cannot reuse already awaited coroutine")),
        }
    }

    /// Ends the awaitable early (`throw`, `close`): a receive or send still waiting is cancelled,
    /// which removes its watcher, so nothing is read or written for a caller that is gone.
    fn abandon(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let state = {
            let mut s = slf.borrow_mut();
            s.sock = None;
            std::mem::replace(&mut s.state, State::Done)
        };
        if let State::Waiting { future, waiter } = state {
            let future = future.bind(py);
            future.call_method0(intern!(py, "cancel"))?;
            if let Some(waiter) = waiter {
                RecvWaiter::abandon(waiter.bind(py), future)?;
            }
        }
        Ok(())
    }

    /// A step as the iterator protocol reports it: a yielded value, or `StopIteration(result)`.
    fn step_as_iterator(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match Self::step(slf, value)? {
            Step::Yield { future, .. } => Ok(future),
            Step::Return(v) => Err(PyStopIteration::new_err((v,))),
        }
    }
}

#[pymethods]
impl SockCall {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Self::step_as_iterator(slf, &slf.py().None().into_bound(slf.py()))
    }

    #[pyo3(signature = (value, /))]
    fn send(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::step_as_iterator(slf, value)
    }

    /// Raises the exception where the awaitable is suspended, as `coroutine.throw()` does; the
    /// operation is abandoned.
    #[pyo3(signature = (typ, val=None, tb=None, /))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        // Abandoned first: as when asyncio's coroutine delegates a throw to the future it awaits,
        // even invalid arguments end it (with the TypeError).
        Self::abandon(slf)?;
        let val = val.filter(|v| !v.is_none());
        let exc = if typ.is_instance_of::<PyBaseException>() {
            if val.is_some() {
                return Err(PyTypeError::new_err("instance exception may not have a separate value"));
            }
            typ.clone()
        } else if typ
            .cast::<PyType>()
            .is_ok_and(|t| t.is_subclass_of::<PyBaseException>().unwrap_or(false))
        {
            match val {
                Some(v) if v.is_instance(typ)? => v.clone(),
                Some(v) => match v.cast::<PyTuple>() {
                    Ok(args) => typ.call1(args)?,
                    Err(_) => typ.call1((v,))?,
                },
                None => typ.call0()?,
            }
        } else {
            let name = typ.get_type().name()?;
            return Err(PyTypeError::new_err(format!(
                "exceptions must be classes or instances deriving from BaseException, not {name}"
            )));
        };
        if let Some(tb) = tb.filter(|t| !t.is_none()) {
            exc.call_method1(intern!(py, "with_traceback"), (tb,))?;
        }
        Err(PyErr::from_value(exc))
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::abandon(slf)
    }

    /// The future it waits for, as a coroutine's `cr_await`.
    #[getter]
    fn cr_await(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &self.state {
            State::Waiting { future, .. } => Some(future.clone_ref(py)),
            _ => None,
        }
    }

    #[getter]
    #[allow(clippy::unused_self)] // a coroutine attribute
    fn cr_running(&self) -> bool {
        false
    }

    /// The method's name, as a task's repr shows its coroutine.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        self.method
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.sock)?;
        match &self.state {
            State::Start(Op::SendAll(data)) => visit.call(data),
            State::Waiting { future, waiter } => {
                visit.call(future)?;
                visit.call(waiter)
            }
            _ => Ok(()),
        }
    }

    fn __clear__(&mut self) {
        self.sock = None;
        self.state = State::Done;
    }
}

/// `am_send`: what `await` calls. A completed step returns its result without raising
/// `StopIteration`, which is most of what makes this cheaper than a coroutine.
///
/// # Safety
/// CPython's contract for `am_send`: GIL held, `iter` a `SockCall`, `arg` and `result` valid.
#[cfg(Py_3_10)]
unsafe extern "C" fn am_send(
    iter: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: see the contract; the trampoline turns panics and errors into a Python exception
    // and a null return. `result` travels as the third argument, cast back in `send_body`.
    let outcome = unsafe {
        *result = std::ptr::null_mut();
        pyo3::impl_::trampoline::ternaryfunc(iter, arg, result.cast(), send_body)
    };
    if outcome.is_null() {
        ffi::PySendResult::PYGEN_ERROR
    } else if outcome == unsafe { ffi::Py_True() } {
        ffi::PySendResult::PYGEN_NEXT
    } else {
        ffi::PySendResult::PYGEN_RETURN
    }
}

/// The body of [`am_send`]: stores the yielded or returned value in `*result` and says which it
/// was (`True`: yielded), a borrowed singleton that nobody releases.
#[cfg(Py_3_10)]
unsafe fn send_body(
    py: Python<'_>,
    iter: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
    result: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: `am_send`'s contract: `iter` is a live SockCall, `arg` a live object, and `result`
    // the `*mut *mut PyObject` it passed on.
    unsafe {
        let slf = Bound::from_borrowed_ptr(py, iter).cast_into_unchecked::<SockCall>();
        let arg = Bound::from_borrowed_ptr(py, arg);
        let (value, yielded) = match SockCall::step(&slf, &arg)? {
            Step::Yield { future, .. } => (future, true),
            Step::Return(v) => (v, false),
        };
        *result.cast::<*mut ffi::PyObject>() = value.into_ptr();
        Ok(if yielded { ffi::Py_True() } else { ffi::Py_False() })
    }
}

/// `Py_TPFLAGS_HAVE_AM_SEND` (CPython 3.10+), which pyo3-ffi does not define.
#[cfg(Py_3_10)]
const TPFLAGS_HAVE_AM_SEND: std::ffi::c_ulong = 1 << 21;

/// Gives `SockCall` its `am_send` slot, which PyO3 does not generate. Before Python 3.10, which
/// has no such slot, `await` goes through `__next__` and `StopIteration`.
#[cfg(not(Py_3_10))]
pub fn install(_py: Python<'_>) {}

/// Gives `SockCall` its `am_send` slot, which PyO3 does not generate.
#[cfg(Py_3_10)]
pub fn install(py: Python<'_>) {
    let ty = SockCall::type_object_raw(py);
    // SAFETY: GIL held; `ty` is a live heap type whose `tp_as_async` points into the type object
    // itself (PyO3 fills it for `__await__`). Setting a slot before any instance exists, then
    // invalidating the type's caches, is how CPython's own types get slots.
    unsafe {
        let slots = (*ty).tp_as_async;
        assert!(!slots.is_null(), "SockCall has __await__, so it has async slots");
        (*slots).am_send = Some(am_send);
        (*ty).tp_flags |= TPFLAGS_HAVE_AM_SEND;
        ffi::PyType_Modified(ty);
    }
}
