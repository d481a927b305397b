//! `SocketCore`: the native core of a stream socket transport (TCP and Unix sockets).
//!
//! It follows asyncio's `_SelectorSocketTransport` step for step, so programs see the same
//! order of protocol callbacks, the same errors and the same close sequence:
//!
//! - reading: on each readable turn, one `recv()` of up to 256 KiB into a per-thread buffer and
//!   one `data_received(bytes)`, or for a `BufferedProtocol`, `get_buffer(-1)`, a `recv()`
//!   straight into the protocol's buffer and `buffer_updated(n)`; end of stream calls
//!   `eof_received()`, whose true result keeps the transport open for writing (half-close).
//! - writing: what the kernel does not take at once is buffered (see `write_buffer`) and sent
//!   when the socket is writable, in one vectored `sendmsg()`. The protocol's
//!   `pause_writing()`/`resume_writing()` are called at the high and low water marks.
//!   One difference in timing: a `write()` made by one of the loop's callbacks, of no more than
//!   the high-water mark, is held until that callback returns, so that everything a callback
//!   writes to a connection leaves in one `sendmsg()`, and in one TCP segment where it fits.
//!   asyncio sends each `write()` at once: a server that writes a response's head and body
//!   separately (uvicorn does, from one task step) pays two syscalls, and its peer two
//!   segments. Holding the data until the end of the whole turn instead was measured to cost
//!   throughput: the peer then waits for every other callback of the turn. Whatever would
//!   observe the difference sends at once: a write past the high-water mark,
//!   `get_write_buffer_size()`, `close()`, `write_eof()`, `set_write_buffer_limits()` and
//!   `sendfile()`. Outside a running loop `write()` sends at once, as asyncio's does.
//! - closing: `close()` stops reading and calls `connection_lost(None)` once the buffer is sent;
//!   errors and `abort()` drop the buffer and call `connection_lost(exc)`. Either way exactly
//!   once, on a later turn, after which the socket is closed.

mod datagram;

use super::link::{self, Core, Link};
use super::stream_feed;
use super::write_buffer::{WriteBuffer, MAX_IOVECS};
use super::{
    is_fatal, is_os_error, is_retry, logger, queue_all, send_or_queue, with_read_buffer, SharedBytes, WriteOutcome,
    LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};
use crate::call_args::CallArgs;
use crate::errors::os_error;
use crate::event_loop::{closed_error, LoopBase, Side};
use crate::handles::NativeCall;
use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::{ffi, intern, PyTraverseError, PyVisit};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;

static BUFFERED_PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

#[pyclass(module = "ferroloop._ferroloop")]
#[allow(clippy::struct_excessive_bools)] // asyncio's transport flags, kept one for one
pub struct SocketCore {
    /// The loop, the fd, the protocol, the Python transport and the flow control.
    link: Link,
    sock: Option<Py<PyAny>>,
    /// The protocol is a `BufferedProtocol`: reads go through `get_buffer`/`buffer_updated`.
    /// Its methods are looked up at each read, as asyncio's transports do: caching the bound
    /// methods (uvloop's way) saved nothing measurable per read and cost 64 bytes per connection.
    buffered: bool,
    server: Option<Py<PyAny>>,
    /// The future `sendfile()` waits on until the write buffer is empty.
    empty_waiter: Option<Py<PyAny>>,
    buffer: WriteBuffer<SharedBytes>,
    protocol_connected: bool,
    /// Counts `connection_lost` scheduling plus writes after it, as asyncio's `_conn_lost`.
    conn_lost: u32,
    closing: bool,
    /// `pause_reading()` is in effect.
    paused: bool,
    /// `write_eof()` was called.
    eof: bool,
    /// The buffer holds writes left for when the running callback returns, and the loop has this
    /// core in its list of writes to flush then (see the module doc). The writer is not installed.
    deferred: bool,
    /// Set for datagram endpoints (UDP, Unix datagram), which queue whole datagrams instead
    /// of a byte stream.
    /// Boxed: most sockets are streams, and an idle stream costs this much less.
    datagram: Option<Box<datagram::DatagramState>>,
}

/// One `recv()` outcome.
enum Received<'py> {
    Data(Bound<'py, PyBytes>),
    Eof,
    NotReady,
    Failed(io::Error),
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn recv_bytes(py: Python<'_>, fd: RawFd) -> Received<'_> {
    let outcome = with_read_buffer(|buf| recv(fd, buf).map(|n| (n > 0).then(|| PyBytes::new(py, &buf[..n]))));
    match outcome {
        Ok(Some(data)) => Received::Data(data),
        Ok(None) => Received::Eof,
        Err(err) if is_retry(&err) => Received::NotReady,
        Err(err) => Received::Failed(err),
    }
}

/// `recv()` into the writable buffer `target` (a `BufferedProtocol`'s), as `sock.recv_into()`.
fn recv_into(target: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<io::Result<usize>> {
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: the view is initialised on success and released before returning; no Python code
    // runs while it is held.
    unsafe {
        if ffi::PyObject_GetBuffer(target.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_WRITABLE) != 0 {
            return Err(PyErr::fetch(target.py()));
        }
        let mut view = view.assume_init();
        let len = usize::try_from(view.len).unwrap_or(0);
        let n = libc::recv(fd, view.buf, len, 0);
        let result = if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        };
        ffi::PyBuffer_Release(&raw mut view);
        Ok(result)
    }
}

fn send_slices(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; the slices outlive the call.
    let n = unsafe {
        if slices.len() == 1 {
            libc::send(fd, slices[0].as_ptr().cast(), slices[0].len(), libc::MSG_NOSIGNAL)
        } else {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = slices.as_ptr().cast_mut().cast();
            msg.msg_iovlen = slices.len() as _;
            libc::sendmsg(fd, &raw const msg, libc::MSG_NOSIGNAL)
        }
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// asyncio's type check for `write()` and `sendto()` data.
fn report_write_type_error(data: &Bound<'_, PyAny>) -> PyResult<()> {
    if data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()
    {
        return Ok(());
    }
    Err(PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not {}",
        data.get_type().name()?.repr()?
    )))
}

fn shutdown_write(fd: RawFd) -> PyResult<()> {
    // SAFETY: shutdown has no memory preconditions.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
        return Err(os_error(&io::Error::last_os_error()));
    }
    Ok(())
}

impl Core for SocketCore {
    const READ_READY: NativeCall = NativeCall {
        name: "_read_ready",
        call: |target, _| SocketCore::_read_ready(target.cast::<SocketCore>()?),
    };
    const WRITE_READY: NativeCall = NativeCall {
        name: "_write_ready",
        call: |target, _| SocketCore::_write_ready(target.cast::<SocketCore>()?),
    };

    fn link(&self) -> &Link {
        &self.link
    }

    fn link_mut(&mut self) -> &mut Link {
        &mut self.link
    }

    fn unsent(&self) -> usize {
        SocketCore::unsent(self)
    }
}

/// What was left unsent when a transport let go of its buffers; dropped once no borrow is held.
type Unsent = (Vec<SharedBytes>, VecDeque<datagram::Datagram>);

impl SocketCore {
    /// Bytes accepted by `write()`/`sendto()` and not yet sent.
    fn unsent(&self) -> usize {
        self.buffer.len()
            + self
                .datagram
                .as_deref()
                .map_or(0, datagram::DatagramState::queued_bytes)
    }

    fn clear_unsent(&mut self) -> Unsent {
        self.deferred = false;
        (
            self.buffer.clear(),
            self.datagram
                .as_deref_mut()
                .map(datagram::DatagramState::clear)
                .unwrap_or_default(),
        )
    }

    fn is_reading_now(&self) -> bool {
        !self.closing && !self.paused
    }

    fn ref_of(py: Python<'_>, obj: Option<&Py<PyAny>>) -> Option<Py<PyAny>> {
        obj.map(|o| o.clone_ref(py))
    }

    /// `loop.call_soon(self.<method>, arg)`.
    fn call_soon(slf: &Bound<'_, Self>, method: &Bound<'_, pyo3::types::PyString>, arg: Py<PyAny>) -> PyResult<()> {
        link::call_soon(slf, slf.getattr(method)?, CallArgs::One(arg))
    }

    /// asyncio's `_fatal_error`: report (OS errors only in debug mode), then force-close.
    fn fail(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if is_fatal(py, &exc) {
            return Err(exc);
        }
        let exc = exc.into_value(py).into_any();
        Self::fatal_error(slf, exc.bind(py), message)
    }

    fn fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let py = slf.py();
        if is_os_error(exc) {
            link::log_debug(slf, intern!(py, "debug"), "%r: %s", Some((message, exc)))?;
        } else {
            link::report_error(slf, message, exc)?;
        }
        Self::force_close(slf, Some(exc.clone().unbind()))
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let (writing, was_closing, sent, released) = {
            let mut s = slf.borrow_mut();
            if s.conn_lost > 0 {
                return Ok(());
            }
            // asyncio would already have handed these to the kernel; only what it had to buffer
            // is dropped.
            let sent = s.send_deferred_quietly();
            let writing = s.link.writing;
            let released = s.clear_unsent();
            let was_closing = s.closing;
            s.closing = true;
            s.conn_lost += 1;
            (writing, was_closing, sent, released)
        };
        drop((sent, released));
        if writing {
            link::unwatch(slf, Side::Write)?;
        }
        if !was_closing {
            link::unwatch(slf, Side::Read)?;
        }
        Self::call_soon(
            slf,
            intern!(py, "_call_connection_lost"),
            exc.unwrap_or_else(|| py.None()),
        )
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        link::log_debug(slf, intern!(slf.py(), "debug"), "%r received EOF", None)?;
        let protocol = Self::ref_of(py, slf.borrow().link.protocol.as_ref());
        let Some(protocol) = protocol else {
            return Ok(());
        };
        let keep_open = match protocol.call_method0(py, intern!(py, "eof_received")) {
            Ok(result) => result.is_truthy(py)?,
            Err(err) => return Self::fail(slf, err, "Fatal error: protocol.eof_received() call failed."),
        };
        if keep_open {
            // The protocol may still write; there is nothing more to read.
            link::unwatch(slf, Side::Read)
        } else {
            Self::close(slf)
        }
    }

    fn read_into_protocol_buffer(slf: &Bound<'_, Self>, fd: RawFd, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let target = match protocol.call_method1(intern!(py, "get_buffer"), (-1,)).and_then(|buf| {
            if buf.len()? == 0 {
                return Err(PyRuntimeError::new_err("get_buffer() returned an empty buffer"));
            }
            Ok(buf)
        }) {
            Ok(buf) => buf,
            Err(err) => return Self::fail(slf, err, "Fatal error: protocol.get_buffer() call failed."),
        };
        let n = match recv_into(&target, fd) {
            Ok(Ok(n)) => n,
            Ok(Err(err)) if is_retry(&err) => return Ok(()),
            Ok(Err(err)) => return Self::fail(slf, os_error(&err), "Fatal read error on socket transport"),
            Err(err) => return Self::fail(slf, err, "Fatal read error on socket transport"),
        };
        drop(target);
        if n == 0 {
            return Self::on_eof(slf);
        }
        if let Err(err) = protocol.call_method1(intern!(py, "buffer_updated"), (n,)) {
            return Self::fail(slf, err, "Fatal error: protocol.buffer_updated() call failed.");
        }
        Ok(())
    }

    /// What `write()` does with `data` once it is known to be bytes-like and non-empty.
    fn write_bytes(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if slf.borrow().deferred {
            {
                let mut s = slf.borrow_mut();
                let still_deferring = s
                    .link
                    .event_loop
                    .as_ref()
                    .is_some_and(|event_loop| event_loop.borrow(py).defers_writes());
                let room = s.link.high_water.saturating_sub(s.buffer.len());
                if still_deferring && queue_all(&mut s.buffer, data, room)?.is_some() {
                    return Ok(());
                }
            }
            // Past the high-water mark, or the loop is no longer running callbacks (a turn that
            // an exception ended before its flush, then a write from outside the loop): what
            // waits goes now, then this write as any other.
            Self::flush_deferred(slf)?;
            if slf.borrow().conn_lost > 0 {
                return Ok(());
            }
        }
        let outcome = {
            let mut s = slf.borrow_mut();
            if s.buffer.is_empty() && s.datagram.is_none() && !s.closing {
                let defer_to = s
                    .link
                    .event_loop
                    .as_ref()
                    .filter(|event_loop| event_loop.borrow(py).defers_writes())
                    .map(|event_loop| event_loop.clone_ref(py));
                if let Some(event_loop) = defer_to {
                    // Above the high-water mark the write is sent at once below, as asyncio
                    // sends it: waiting would pause the protocol for data the kernel may take.
                    let limit = s.link.high_water;
                    match queue_all(&mut s.buffer, data, limit)? {
                        Some(0) => return Ok(()),
                        Some(_) => {
                            s.deferred = true;
                            drop(s);
                            event_loop.borrow_mut(py).defer_write(slf.clone().unbind());
                            return Ok(());
                        }
                        None => {}
                    }
                }
            }
            let fd = s.link.fd;
            send_or_queue(&mut s.buffer, data, |bytes| send_slices(fd, &[IoSlice::new(bytes)]))?
        };
        match outcome {
            WriteOutcome::Done => Ok(()),
            WriteOutcome::Failed(err) => Self::fail(slf, os_error(&err), "Fatal write error on socket transport"),
            WriteOutcome::Buffered { add_writer } => link::queued(slf, add_writer),
        }
    }

    /// Sends what deferred `write()` calls left, if anything: the loop calls this when the
    /// callback that wrote returns, and so do the methods whose result would show the delay.
    pub(crate) fn flush_deferred(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut s = slf.borrow_mut();
            if !s.deferred {
                return Ok(());
            }
            s.deferred = false;
        }
        Self::send_buffered(slf)
    }

    /// Drops what deferred writes left, unsent: in a child process after `fork()`, whose parent
    /// sends them (asyncio had sent them before the fork). Returns the references to drop once
    /// the core is no longer borrowed.
    pub(crate) fn discard_deferred(&mut self) -> Unsent {
        if self.deferred {
            self.clear_unsent()
        } else {
            Unsent::default()
        }
    }

    /// Reports an error from sending deferred writes as asyncio reports one from a callback:
    /// to the exception handler, with this transport and its protocol.
    pub(crate) fn report_flush_error(slf: &Bound<'_, Self>, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        let exc = err.into_value(py).into_any();
        link::report_error(slf, "Exception in a transport's deferred write", exc.bind(py))
    }

    /// Sends what deferred writes left, once, calling no Python code: for when the transport or
    /// its loop goes away with them unsent. Returns the references to drop once the core is no
    /// longer borrowed.
    pub(crate) fn send_deferred_quietly(&mut self) -> Vec<SharedBytes> {
        if !std::mem::take(&mut self.deferred) {
            return Vec::new();
        }
        let sent = {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.buffer.io_slices(&mut slices);
            send_slices(self.link.fd, &slices[..n])
        };
        sent.map_or_else(|_| Vec::new(), |n| self.buffer.consume(n))
    }

    /// One vectored send of the buffer, and what asyncio's `_write_ready` does after it: resume
    /// the protocol below the low-water mark; once the buffer is empty, remove the writer, then
    /// end the connection if it is closing or shut down writing after `write_eof()`. If the
    /// socket does not take it all, the writer is installed (it may be already) and the
    /// protocol paused above the high-water mark.
    fn send_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let sent = {
            let s = slf.borrow();
            if s.conn_lost > 0 || s.buffer.is_empty() {
                return Ok(());
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = s.buffer.io_slices(&mut slices);
            send_slices(s.link.fd, &slices[..n])
        };
        match sent {
            Err(err) if is_retry(&err) => Self::wait_writable(slf),
            Err(err) => {
                if slf.borrow().link.writing {
                    link::unwatch(slf, Side::Write)?;
                }
                let released = slf.borrow_mut().buffer.clear();
                drop(released);
                let exc = os_error(&err).into_value(py).into_any();
                Self::fatal_error(slf, exc.bind(py), "Fatal write error on socket transport")?;
                let waiter = Self::ref_of(py, slf.borrow().empty_waiter.as_ref());
                if let Some(waiter) = waiter {
                    waiter.call_method1(py, intern!(py, "set_exception"), (exc,))?;
                }
                Ok(())
            }
            Ok(n) => {
                let released = slf.borrow_mut().buffer.consume(n);
                drop(released);
                // May write more (into the buffer).
                link::maybe_resume_protocol(slf)?;
                let (empty, waiter, closing, eof, fd, writing) = {
                    let s = slf.borrow();
                    (
                        s.buffer.is_empty(),
                        Self::ref_of(py, s.empty_waiter.as_ref()),
                        s.closing,
                        s.eof,
                        s.link.fd,
                        s.link.writing,
                    )
                };
                if !empty {
                    return Self::wait_writable(slf);
                }
                if writing {
                    link::unwatch(slf, Side::Write)?;
                }
                if let Some(waiter) = waiter {
                    waiter.call_method1(py, intern!(py, "set_result"), (py.None(),))?;
                }
                if closing {
                    Self::_call_connection_lost(slf, py.None())?;
                } else if eof {
                    shutdown_write(fd)?;
                }
                Ok(())
            }
        }
    }

    /// Leaves the rest of the buffer to the writer, installing it unless it is installed, and
    /// pauses the protocol above the high-water mark.
    fn wait_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.borrow().link.writing {
            return Ok(());
        }
        link::queued(slf, true)
    }

    /// The checks asyncio's `write()` makes before touching the socket. `Ok(false)`: drop the
    /// data silently (the connection is already lost).
    fn check_writable(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = slf.py();
        report_write_type_error(data)?;
        let warn = {
            let mut s = slf.borrow_mut();
            if s.eof {
                return Err(PyRuntimeError::new_err("Cannot call write() after write_eof()"));
            }
            if s.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err("unable to write; sendfile is in progress"));
            }
            if s.conn_lost == 0 {
                return Ok(true);
            }
            if data.len()? == 0 {
                return Ok(false);
            }
            let warn = s.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            s.conn_lost += 1;
            warn
        };
        if warn {
            logger(py)?.call_method1(intern!(py, "warning"), ("socket.send() raised exception.",))?;
        }
        Ok(false)
    }
}

#[pymethods]
impl SocketCore {
    /// A stream transport's core, or with `datagram=True` a datagram endpoint's: `address` is
    /// its fixed remote address (`remote_addr=`), `connected` whether the socket has a peer,
    /// `family` the socket's address family.
    #[new]
    #[pyo3(signature = (event_loop, sock, fd, transport, server=None, *, datagram=false, address=None, connected=false, family=0))]
    #[allow(clippy::too_many_arguments)] // one per piece of asyncio's transport state
    fn py_new(
        event_loop: &Bound<'_, PyAny>,
        sock: Py<PyAny>,
        fd: RawFd,
        transport: Py<PyAny>,
        server: Option<Py<PyAny>>,
        datagram: bool,
        address: Option<Py<PyAny>>,
        connected: bool,
        family: i32,
    ) -> PyResult<Self> {
        let py = event_loop.py();
        let event_loop = event_loop.cast::<LoopBase>()?.clone().unbind();
        let datagram = datagram.then(|| {
            Box::new(datagram::DatagramState::new(
                address.filter(|a| !a.is_none(py)),
                connected,
                family,
            ))
        });
        Ok(SocketCore {
            link: Link::new(event_loop, fd, transport),
            sock: Some(sock),
            buffered: false,
            server,
            empty_waiter: None,
            buffer: WriteBuffer::default(),
            protocol_connected: false,
            conn_lost: 0,
            closing: false,
            paused: false,
            eof: false,
            deferred: false,
            datagram,
        })
    }

    fn set_protocol(&mut self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let buffered_class = BUFFERED_PROTOCOL.import(py, "asyncio.protocols", "BufferedProtocol")?;
        self.buffered = protocol.is_instance(buffered_class)?;
        self.link.protocol = Some(protocol.clone().unbind());
        self.protocol_connected = true;
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        Self::ref_of(py, self.link.protocol.as_ref())
    }

    /// Send one datagram (datagram endpoints only).
    #[pyo3(signature = (data, addr=None))]
    fn sendto(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>, addr: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let none = slf.py().None().into_bound(slf.py());
        datagram::sendto(slf, data, addr.unwrap_or(&none))
    }

    pub(super) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if Self::check_writable(slf, data)? {
            Self::write_bytes(slf, data)?;
        }
        Ok(())
    }

    /// Writes every buffer of `list_of_data`, as asyncio's `b''.join()` + `write()` does, but
    /// without the join: each piece goes to the same send or buffer.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        // Join first, as asyncio does: a bad item raises before anything is written.
        let joined = PyBytes::new(py, b"").call_method1(intern!(py, "join"), (list_of_data,))?;
        Self::write(slf, &joined)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flush_deferred(slf)?;
        let (fd, now) = {
            let mut s = slf.borrow_mut();
            if s.closing || s.eof {
                return Ok(());
            }
            s.eof = true;
            (s.link.fd, s.buffer.is_empty())
        };
        if now {
            shutdown_write(fd)?;
        }
        Ok(())
    }

    /// Sends deferred writes first: asyncio's `write()` would have sent them, and a send that
    /// failed would already have closed the transport (so `drain()` raises instead of
    /// reporting success on a dead connection).
    pub(super) fn is_closing(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Self::flush_deferred(slf)?;
        Ok(slf.borrow().closing)
    }

    /// `is_closing()` without sending deferred writes first, for `repr`.
    fn _closing_flag(&self) -> bool {
        self.closing
    }

    fn is_reading(&self) -> bool {
        self.is_reading_now()
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut s = slf.borrow_mut();
            if !s.is_reading_now() {
                return Ok(());
            }
            s.paused = true;
        }
        link::unwatch(slf, Side::Read)?;
        link::log_debug(slf, intern!(slf.py(), "debug"), "%r pauses reading", None)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut s = slf.borrow_mut();
            if s.closing || !s.paused {
                return Ok(());
            }
            s.paused = false;
        }
        Self::_start_reading(slf)?;
        link::log_debug(slf, intern!(slf.py(), "debug"), "%r resumes reading", None)
    }

    /// Installs the reader unless reading is paused or the transport is closing (asyncio's
    /// transport `_add_reader`).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.borrow().is_reading_now() {
            link::watch(slf, Side::Read)?;
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.borrow().closing {
            return Ok(());
        }
        // What a deferred write left goes now, as asyncio's write() would have sent it.
        Self::flush_deferred(slf)?;
        {
            let mut s = slf.borrow_mut();
            if s.closing {
                return Ok(());
            }
            s.closing = true;
        }
        link::unwatch(slf, Side::Read)?;
        let lose_now = {
            let mut s = slf.borrow_mut();
            let empty = s.unsent() == 0;
            if empty {
                s.conn_lost += 1;
            }
            empty
        };
        if lose_now {
            link::unwatch(slf, Side::Write)?;
            Self::call_soon(slf, intern!(py, "_call_connection_lost"), py.None())?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        Self::force_close(slf, exc.filter(|e| !e.is_none(slf.py())))
    }

    #[pyo3(signature = (exc, message = "Fatal error on transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, exc, message)
    }

    fn get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
        // Counted after sending what waits for the running callback to return, so that the
        // answer is asyncio's, which sends at once.
        Self::flush_deferred(slf)?;
        Ok(slf.borrow().unsent())
    }

    /// The unsent bytes, without sending deferred writes first (for `repr`).
    fn _unsent_size(&self) -> usize {
        self.unsent()
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        (self.link.low_water, self.link.high_water)
    }

    /// Sets the water marks (already validated by the Python side) and pauses the protocol if
    /// the buffer is now above the high one.
    fn _set_write_buffer_limits(slf: &Bound<'_, Self>, high: usize, low: usize) -> PyResult<()> {
        Self::flush_deferred(slf)?;
        link::set_write_buffer_limits(slf, high, low)
    }

    /// The loop's reader callback: one read, delivered to the protocol.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.borrow().datagram.is_some() {
            return datagram::read_ready(slf);
        }
        let (fd, protocol, buffered) = {
            let s = slf.borrow();
            if s.conn_lost > 0 {
                return Ok(());
            }
            (s.link.fd, s.link.protocol.as_ref().map(|p| p.clone_ref(py)), s.buffered)
        };
        let protocol = protocol.unwrap_or_else(|| py.None()).into_bound(py);
        if buffered {
            return Self::read_into_protocol_buffer(slf, fd, &protocol);
        }
        match recv_bytes(py, fd) {
            Received::Data(data) => {
                if let Err(err) = stream_feed::data_received(&protocol, data) {
                    return Self::fail(slf, err, "Fatal error: protocol.data_received() call failed.");
                }
                Ok(())
            }
            Received::Eof => Self::on_eof(slf),
            Received::NotReady => Ok(()),
            Received::Failed(err) => Self::fail(slf, os_error(&err), "Fatal read error on socket transport"),
        }
    }

    /// The loop's writer callback: send as much of the buffer as the socket takes.
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.borrow().datagram.is_some() {
            return datagram::sendto_ready(slf);
        }
        Self::send_buffered(slf)
    }

    /// Calls `protocol.connection_lost(exc)` (once), then closes the socket and lets go of the
    /// protocol, the loop and the server.
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let (protocol, connected) = {
            let s = slf.borrow();
            (Self::ref_of(py, s.link.protocol.as_ref()), s.protocol_connected)
        };
        let lost = match protocol.filter(|_| connected) {
            Some(protocol) => protocol
                .call_method1(py, intern!(py, "connection_lost"), (exc,))
                .map(drop),
            None => Ok(()),
        };
        let (sock, server, waiter, released) = {
            let mut s = slf.borrow_mut();
            s.link.protocol = None;
            s.link.event_loop = None;
            (s.sock.take(), s.server.take(), s.empty_waiter.take(), s.clear_unsent())
        };
        drop(released);
        let closed = sock.map_or(Ok(()), |sock| sock.call_method0(py, intern!(py, "close")).map(drop));
        let detached = server.map_or(Ok(()), |server| {
            server.call_method0(py, intern!(py, "_detach")).map(drop)
        });
        if let Some(waiter) = waiter {
            let error = PyConnectionError::new_err("Connection is closed by peer").into_value(py);
            waiter.call_method1(py, intern!(py, "set_exception"), (error,))?;
        }
        // The transport is no longer needed by anything the loop holds; break the cycle.
        let transport = slf.borrow_mut().link.transport.take();
        drop(transport);
        lost.and(closed).and(detached)
    }

    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        Self::flush_deferred(slf)?;
        if slf.borrow().conn_lost > 0 {
            // The flush failed and closed the transport (asyncio's check came before it).
            return Err(PyRuntimeError::new_err("Transport is closing"));
        }
        let (event_loop, empty) = {
            let s = slf.borrow();
            if s.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err("Empty waiter is already set"));
            }
            (s.link.event_loop.as_ref().map(|l| l.clone_ref(py)), s.buffer.is_empty())
        };
        let event_loop = event_loop.ok_or_else(closed_error)?;
        let waiter = event_loop.bind(py).call_method0(intern!(py, "create_future"))?;
        if empty {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        slf.borrow_mut().empty_waiter = Some(waiter.clone().unbind());
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(&mut self) {
        self.empty_waiter = None;
    }

    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        Self::ref_of(py, self.sock.as_ref())
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopBase>> {
        self.link.event_loop.as_ref().map(|l| l.clone_ref(py))
    }

    #[getter]
    fn _server(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        Self::ref_of(py, self.server.as_ref())
    }

    #[getter]
    fn _protocol_paused(&self) -> bool {
        self.link.protocol_paused
    }

    #[getter]
    fn _conn_lost(&self) -> u32 {
        self.conn_lost
    }

    #[getter]
    fn _eof(&self) -> bool {
        self.eof
    }

    #[getter]
    fn _reader_installed(&self) -> bool {
        self.link.reading
    }

    #[getter]
    fn _writer_installed(&self) -> bool {
        self.link.writing
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.link.traverse(&visit)?;
        visit.call(&self.sock)?;
        visit.call(&self.server)?;
        visit.call(&self.empty_waiter)?;
        for shared in self.buffer.shared() {
            shared.visit(&visit)?;
        }
        if let Some(d) = &self.datagram {
            d.traverse(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.link.clear();
        self.sock = None;
        self.server = None;
        self.empty_waiter = None;
        drop(self.clear_unsent());
    }
}
