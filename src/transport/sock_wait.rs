//! The native path of the loop's `sock_recv()`: try a `recv()` now, and if the socket has
//! nothing yet, wait for it with a native reader instead of a Python callback.
//!
//! asyncio's `sock_recv()` tries `sock.recv(n)` at once (which raises `BlockingIOError` when
//! there is nothing to read), then installs a reader that retries until it gets data or an
//! error, and a done callback that removes the reader (also on cancellation). This does the same
//! steps without raising, and without a Python function call per step. The Python side uses it
//! only for plain `socket.socket` objects whose `recv` is the C one, so code that wraps or
//! patches `recv` still sees its own method called, as with asyncio.
//!
//! Between two receives on the same socket the reader stays registered, parked (see `fd_watch`):
//! a server looping on `sock_recv()` then costs no `epoll_ctl` per message (two before: add and
//! remove), which was most of the gap to a loop that keeps its registrations.

use super::{is_retry, with_read_buffer, MAX_READ};
use crate::errors::os_error;
use crate::event_loop::{LoopBase, Side};
use crate::handles::{Handle, NativeCall};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyWeakrefReference};
use pyo3::{intern, PyTraverseError, PyVisit};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// One `recv()` of at most `n` bytes: `Ok(None)` when the socket has nothing yet.
fn try_recv(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Option<Bound<'_, PyBytes>>> {
    // `socket.recv(0)` answers b'' without a syscall; the kernel would say EAGAIN on an empty
    // Unix socket (its low-water mark is at least one byte), and the wait would never end.
    if n == 0 {
        return Ok(Some(PyBytes::new(py, b"")));
    }
    let outcome = if n <= MAX_READ {
        with_read_buffer(|buf| recv_into(fd, &mut buf[..n]).map(|got| PyBytes::new(py, &buf[..got])))
    } else {
        // As `socket.recv(n)`: an allocation that fails is a MemoryError, and the buffer is not
        // zeroed first (only what arrives is ever touched).
        let mut buf: Vec<u8> = Vec::new();
        buf.try_reserve_exact(n).map_err(|_| PyMemoryError::new_err(()))?;
        recv_uninit(fd, &mut buf.spare_capacity_mut()[..n]).map(|got| {
            // SAFETY: `recv` initialised the first `got` bytes of the spare capacity.
            unsafe { buf.set_len(got) };
            PyBytes::new(py, &buf)
        })
    };
    match outcome {
        Ok(data) => Ok(Some(data)),
        Err(err) if is_retry(&err) => Ok(None),
        Err(err) => Err(os_error(&err)),
    }
}

fn recv_into(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: an initialised slice is also a valid uninitialised one of the same length; `recv`
    // only writes to it.
    recv_uninit(fd, unsafe { &mut *(std::ptr::from_mut(buf) as *mut [MaybeUninit<u8>]) })
}

/// One `recv()` into `buf`; on success the first `n` bytes of `buf` are initialised.
fn recv_uninit(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(got as usize)
    }
}

/// `sock_recv(sock, n)`'s work for a plain `socket.socket`: the data if some is there now, else a
/// future that gets it (or the error). Makes debug mode's check that the socket is non-blocking,
/// the one check of asyncio's that applies to a plain socket. The future may be cancelled by
/// whoever awaits it: the reader then stops.
#[pyfunction]
pub fn sock_recv(event_loop: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, n: usize) -> PyResult<Py<PyAny>> {
    Ok(match start_recv(event_loop, sock, n, true)? {
        Received::Data(data) => data,
        Received::Wait { future, .. } => future,
    })
}

/// What starting a receive gave.
pub enum Received {
    Data(Py<PyAny>),
    /// Nothing yet: `future` gets the data from `waiter`, the socket's reader.
    Wait {
        future: Py<PyAny>,
        waiter: Py<RecvWaiter>,
    },
}

/// Starts a receive of at most `n` bytes on a plain socket. When it has to wait and
/// `watch_future` is false, the caller owns the future's cancellation: it calls
/// [`RecvWaiter::abandon`] when it gives up, which spares a done callback per wait.
pub fn start_recv(
    event_loop: &Bound<'_, PyAny>,
    sock: &Bound<'_, PyAny>,
    n: usize,
    watch_future: bool,
) -> PyResult<Received> {
    let py = event_loop.py();
    let base = event_loop.cast::<LoopBase>()?;
    if base.borrow().debug_enabled() && !sock.call_method0(intern!(py, "gettimeout"))?.eq(0)? {
        return Err(PyValueError::new_err("the socket must be non-blocking"));
    }
    let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    if let Some(data) = try_recv(py, fd, n)? {
        return Ok(Received::Data(data.into_any().unbind()));
    }
    // As asyncio, only a wait needs the fd to itself.
    ensure_fd_no_transport(event_loop, fd)?;
    let waiter = if let Some(waiter) = RecvWaiter::parked(base, sock, fd) {
        waiter
    } else {
        let waiter = Bound::new(
            py,
            RecvWaiter {
                event_loop: base.clone().unbind(),
                fd,
                // Weak: a parked reader must not keep a socket the program dropped alive (open).
                sock: PyWeakrefReference::new(sock).ok().map(Bound::unbind),
                pending: None,
                handle: None,
            },
        )?;
        let handle = LoopBase::watch_fd_native(base, fd, Side::Read, waiter.as_any(), &RECV_READY)?;
        waiter.borrow_mut().handle = Some(handle);
        waiter
    };
    let future = LoopBase::new_future(base)?;
    waiter.borrow_mut().pending = Some((future.clone().unbind(), n));
    if watch_future {
        future.call_method1(
            intern!(py, "add_done_callback"),
            (waiter.getattr(intern!(py, "_done"))?,),
        )?;
    }
    Ok(Received::Wait {
        future: future.unbind(),
        waiter: waiter.unbind(),
    })
}

/// The loop's `_ensure_fd_no_transport(fd)` for an int fd (`ferroloop.loop`), without its
/// Python frame, which cost more than the rest of starting a wait (callgrind): `RuntimeError`
/// if a transport that is not closing uses the fd. Reads the weak dictionary of transports
/// through its `data` dict of weak references, as the Python version does.
fn ensure_fd_no_transport(event_loop: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<()> {
    let py = event_loop.py();
    let refs = event_loop
        .getattr(intern!(py, "_transports"))?
        .getattr(intern!(py, "data"))?
        .cast_into::<PyDict>()?;
    let Some(weak) = refs.get_item(fd)? else {
        return Ok(());
    };
    let transport = weak.call0()?;
    if transport.is_none() || transport.call_method0(intern!(py, "is_closing"))?.is_truthy()? {
        return Ok(());
    }
    Err(PyRuntimeError::new_err(format!(
        "File descriptor {fd} is used by transport {}",
        transport.repr()?
    )))
}

static RECV_READY: NativeCall = NativeCall {
    name: "_ready",
    call: |target, _| RecvWaiter::_ready(target.cast::<RecvWaiter>()?),
};

/// The reader of a socket's `sock_recv()` calls, and the done callback of the pending one.
///
/// After a receive the reader is parked (left registered, see `fd_watch`) rather than removed,
/// and the next `sock_recv()` on the same socket takes it back without a syscall. It is removed
/// for real when it fires with no receive pending, on an error, on cancellation, or when anything
/// else installs a reader on the fd.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct RecvWaiter {
    event_loop: Py<LoopBase>,
    fd: RawFd,
    /// The socket object this reader serves: a parked reader is taken back only by the same,
    /// still open, socket object (an fd number closed and reused must get a real registration).
    sock: Option<Py<PyWeakrefReference>>,
    /// The pending receive's future and size; `None` while parked.
    pending: Option<(Py<PyAny>, usize)>,
    handle: Option<Py<Handle>>,
}

impl RecvWaiter {
    /// The parked waiter of `sock` on `fd`, taken back into use, if there is one.
    fn parked<'py>(base: &Bound<'py, LoopBase>, sock: &Bound<'py, PyAny>, fd: RawFd) -> Option<Bound<'py, Self>> {
        let py = base.py();
        let handle = LoopBase::reader_of(base, fd)?;
        let target = handle.borrow(py).native_target(py)?;
        let waiter = target.into_bound(py).cast_into::<RecvWaiter>().ok()?;
        {
            let w = waiter.borrow();
            let ours = w.handle.as_ref().is_some_and(|h| h.is(&handle));
            let same_socket = w
                .sock
                .as_ref()
                .and_then(|weak| weak.bind(py).upgrade())
                .is_some_and(|s| s.is(sock));
            if !ours || w.pending.is_some() || !same_socket {
                return None;
            }
        }
        LoopBase::resume_reader(base, fd, &handle).then_some(waiter)
    }

    /// Removes our reader for good, unless another `add_reader()` replaced (and so cancelled) it:
    /// the fd's new watcher is not ours to remove.
    fn finish(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (handle, event_loop, fd) = {
            let mut s = slf.borrow_mut();
            s.pending = None;
            (s.handle.take(), s.event_loop.clone_ref(py), s.fd)
        };
        if let Some(handle) = handle {
            if !handle.borrow(py).is_cancelled() {
                LoopBase::unwatch_fd(event_loop.bind(py), fd, Side::Read)?;
            }
        }
        Ok(())
    }

    /// The receive waiting on `future` is given up (or `future` is done another way): unless a
    /// later receive took over, stop watching.
    pub fn abandon(slf: &Bound<'_, Self>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let pending = slf.borrow().pending.as_ref().is_some_and(|(f, _)| f.is(future));
        if pending {
            Self::finish(slf)?;
        }
        Ok(())
    }

    /// The receive is over: keep the reader, idle, for the socket's next `sock_recv()`.
    fn park(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let mut s = slf.borrow_mut();
        s.pending = None;
        if let Some(handle) = &s.handle {
            LoopBase::park_reader(s.event_loop.bind(py), s.fd, handle);
        }
    }
}

#[pymethods]
impl RecvWaiter {
    /// The fd is readable: try again (or, while parked, stop watching).
    fn _ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (future, fd, n) = {
            let s = slf.borrow();
            let Some((future, n)) = s.pending.as_ref() else {
                // Readable with nobody waiting: a parked reader must not keep firing.
                drop(s);
                return Self::finish(slf);
            };
            (future.clone_ref(py).into_bound(py), s.fd, *n)
        };
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Self::finish(slf);
        }
        match try_recv(py, fd, n) {
            Ok(None) => Ok(()),
            Ok(Some(data)) => {
                Self::park(slf);
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

    /// A future of ours is done. If it is still the pending one, it was cancelled (or completed
    /// by someone else): stop watching.
    fn _done(slf: &Bound<'_, Self>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::abandon(slf, future)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.sock)?;
        if let Some((future, _)) = &self.pending {
            visit.call(future)?;
        }
        visit.call(&self.handle)
    }

    fn __clear__(&mut self) {
        self.pending = None;
        self.handle = None;
    }
}
