//! The native path of the loop's `sock_recv()`: try a `recv()` now, and if the socket has
//! nothing yet, wait for it with a native reader instead of a Python callback.
//!
//! asyncio's `sock_recv()` tries `sock.recv(n)` at once (which raises `BlockingIOError` when
//! there is nothing to read), then installs a reader that retries until it gets data or an
//! error, and a done callback that removes the reader (also on cancellation). This does the same
//! steps without raising, and without a Python function call per step. The Python side uses it
//! only for plain `socket.socket` objects whose `recv` is the C one, so code that wraps or
//! patches `recv` still sees its own method called, as with asyncio.

use super::{is_retry, with_read_buffer, MAX_READ};
use crate::errors::os_error;
use crate::event_loop::{LoopBase, Side};
use crate::handles::Handle;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};
use std::io;
use std::os::fd::RawFd;

/// One `recv()` of at most `n` bytes: `Ok(None)` when the socket has nothing yet.
fn try_recv(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Option<Bound<'_, PyBytes>>> {
    let outcome = if n <= MAX_READ {
        with_read_buffer(|buf| recv_into(fd, &mut buf[..n]).map(|got| PyBytes::new(py, &buf[..got])))
    } else {
        let mut buf = vec![0u8; n];
        recv_into(fd, &mut buf).map(|got| PyBytes::new(py, &buf[..got]))
    };
    match outcome {
        Ok(data) => Ok(Some(data)),
        Err(err) if is_retry(&err) => Ok(None),
        Err(err) => Err(os_error(&err)),
    }
}

fn recv_into(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(got as usize)
    }
}

/// `sock_recv(sock, n)`'s work for the socket `fd`: the data if some is there now, else a future
/// that gets it (or the error). The caller has checked the socket itself.
#[pyfunction]
pub fn sock_recv(event_loop: &Bound<'_, PyAny>, fd: RawFd, n: usize) -> PyResult<Py<PyAny>> {
    let py = event_loop.py();
    if let Some(data) = try_recv(py, fd, n)? {
        return Ok(data.into_any().unbind());
    }
    let base = event_loop.cast::<LoopBase>()?;
    // As asyncio, only a wait needs the fd to itself.
    event_loop.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let waiter = Bound::new(
        py,
        RecvWaiter {
            event_loop: base.clone().unbind(),
            fd,
            n,
            future: Some(future.clone().unbind()),
            handle: None,
        },
    )?;
    let ready = waiter.getattr(intern!(py, "_ready"))?;
    let handle = LoopBase::watch_fd(base, fd, Side::Read, ready, PyTuple::empty(py))?;
    waiter.borrow_mut().handle = Some(handle);
    future.call_method1(
        intern!(py, "add_done_callback"),
        (waiter.getattr(intern!(py, "_done"))?,),
    )?;
    Ok(future.unbind())
}

/// The reader and done callback of one pending `sock_recv()`.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct RecvWaiter {
    event_loop: Py<LoopBase>,
    fd: RawFd,
    n: usize,
    /// `None` once the wait is over.
    future: Option<Py<PyAny>>,
    handle: Option<Py<Handle>>,
}

impl RecvWaiter {
    /// Removes our reader, unless another `add_reader()` replaced (and so cancelled) it: the fd's
    /// new watcher is not ours to remove.
    fn finish(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (handle, event_loop, fd) = {
            let mut s = slf.borrow_mut();
            s.future = None;
            (s.handle.take(), s.event_loop.clone_ref(py), s.fd)
        };
        if let Some(handle) = handle {
            if !handle.borrow(py).is_cancelled() {
                LoopBase::unwatch_fd(event_loop.bind(py), fd, Side::Read)?;
            }
        }
        Ok(())
    }
}

#[pymethods]
impl RecvWaiter {
    /// The fd is readable: try again.
    fn _ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (future, fd, n) = {
            let s = slf.borrow();
            let Some(future) = s.future.as_ref() else {
                return Ok(());
            };
            (future.clone_ref(py).into_bound(py), s.fd, s.n)
        };
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Self::finish(slf);
        }
        match try_recv(py, fd, n) {
            Ok(None) => Ok(()),
            Ok(Some(data)) => {
                Self::finish(slf)?;
                future.call_method1(intern!(py, "set_result"), (data,))?;
                Ok(())
            }
            Err(err) => {
                Self::finish(slf)?;
                future.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
                Ok(())
            }
        }
    }

    /// The future is done (result, error or cancellation): stop watching.
    fn _done(slf: &Bound<'_, Self>, _future: &Bound<'_, PyAny>) -> PyResult<()> {
        if slf.borrow().future.is_some() {
            Self::finish(slf)?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.future)?;
        visit.call(&self.handle)
    }

    fn __clear__(&mut self) {
        self.future = None;
        self.handle = None;
    }
}
