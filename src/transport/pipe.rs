//! `PipeCore`: the native core of asyncio's pipe transports (`connect_read_pipe`,
//! `connect_write_pipe`, and a subprocess's stdin, stdout and stderr).
//!
//! One type serves both directions, following asyncio's `_UnixReadPipeTransport` and
//! `_UnixWritePipeTransport` step for step; their close sequences differ from a socket's:
//!
//! - a read pipe delivers each `read()` to `data_received` (an exception there goes to the loop's
//!   exception handler and the pipe stays open); end of file schedules `eof_received()` and then
//!   `connection_lost(None)`, with no half-close.
//! - a write pipe writes at once when nothing is queued and queues the rest; it also watches its
//!   fd for *reading*, which for a pipe or socket means the reader went away: the transport then
//!   closes, with `BrokenPipeError` if data was still queued. `write_eof()` and `close()` close
//!   it once the queue is sent.

use super::link::{self, Core, Link};
use super::write_buffer::{WriteBuffer, MAX_IOVECS};
use super::{
    is_fatal, is_os_error, is_retry, logger, send_or_queue, with_read_buffer, SharedBytes, WriteOutcome,
    LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};
use crate::call_args::CallArgs;
use crate::errors::os_error;
use crate::event_loop::{LoopBase, Side};
use crate::handles::NativeCall;
use pyo3::exceptions::{PyAssertionError, PyBrokenPipeError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::{intern, PyTraverseError, PyVisit};
use std::io::{self, IoSlice};
use std::os::fd::RawFd;

#[pyclass(module = "ferroloop._ferroloop")]
#[allow(clippy::struct_excessive_bools)] // asyncio's transport flags, kept one for one
pub struct PipeCore {
    /// The loop, the fd, the protocol, the Python transport and the flow control.
    link: Link,
    /// The pipe object the user passed; closed after `connection_lost`.
    pipe: Option<Py<PyAny>>,
    /// A write pipe (else a read pipe).
    writer: bool,
    closing: bool,
    paused: bool,
    conn_lost: u32,
    buffer: WriteBuffer<SharedBytes>,
}

impl Core for PipeCore {
    const READ_READY: NativeCall = NativeCall {
        name: "_read_ready",
        call: |target, _| PipeCore::_read_ready(target.cast::<PipeCore>()?),
    };
    const WRITE_READY: NativeCall = NativeCall {
        name: "_write_ready",
        call: |target, _| PipeCore::_write_ready(target.cast::<PipeCore>()?),
    };

    fn link(&self) -> &Link {
        &self.link
    }

    fn link_mut(&mut self) -> &mut Link {
        &mut self.link
    }

    fn unsent(&self) -> usize {
        self.buffer.len()
    }
}

fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_slices(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: `IoSlice` is ABI-compatible with `iovec`; the slices outlive the call.
    let n = unsafe { libc::writev(fd, slices.as_ptr().cast(), slices.len() as libc::c_int) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl PipeCore {
    fn is_reading_now(&self) -> bool {
        !self.paused && !self.closing
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let callback = slf.getattr(intern!(py, "_call_connection_lost"))?;
        link::call_soon(slf, callback, CallArgs::One(exc))
    }

    fn fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let py = slf.py();
        let writer = slf.borrow().writer;
        // A write pipe keeps every OS error quiet (outside debug mode); a read pipe only EIO,
        // which is what reading a pty whose other side closed gives.
        let quiet = is_os_error(exc)
            && (writer || exc.getattr(intern!(py, "errno"))?.extract::<Option<i32>>()? == Some(libc::EIO));
        if quiet {
            link::log_debug(slf, intern!(py, "debug"), "%r: %s", Some((message, exc)))?;
        } else {
            link::report_error(slf, message, exc)?;
        }
        Self::close_with(slf, exc.clone().unbind())
    }

    fn fail(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if is_fatal(py, &err) {
            return Err(err);
        }
        let exc = err.into_value(py).into_any();
        Self::fatal_error(slf, exc.bind(py), message)
    }

    /// asyncio's `_close(exc)`: stop everything now, `connection_lost(exc)` on the next turn.
    fn close_with(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let (writer, had_buffer, released) = {
            let mut s = slf.borrow_mut();
            s.closing = true;
            let had_buffer = !s.buffer.is_empty();
            (s.writer, had_buffer, s.buffer.clear())
        };
        drop(released);
        if writer && had_buffer {
            link::unwatch(slf, Side::Write)?;
        }
        link::unwatch(slf, Side::Read)?;
        Self::schedule_connection_lost(slf, exc)
    }

    fn read_ready_reader(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.borrow().link.fd;
        let outcome = with_read_buffer(|buf| read(fd, buf).map(|n| (n > 0).then(|| PyBytes::new(py, &buf[..n]))));
        match outcome {
            Err(err) if is_retry(&err) => Ok(()),
            Err(err) => Self::fail(slf, os_error(&err), "Fatal read error on pipe transport"),
            Ok(Some(data)) => {
                let protocol = slf.borrow().link.protocol.as_ref().map(|p| p.clone_ref(py));
                if let Some(protocol) = protocol {
                    // Unlike a socket transport's, an exception here is the callback's: it goes
                    // to the loop's exception handler and the pipe stays open.
                    protocol.call_method1(py, intern!(py, "data_received"), (data,))?;
                }
                Ok(())
            }
            Ok(None) => {
                link::log_debug(slf, intern!(py, "info"), "%r was closed by peer", None)?;
                slf.borrow_mut().closing = true;
                link::unwatch(slf, Side::Read)?;
                let protocol = slf.borrow().link.protocol.as_ref().map(|p| p.clone_ref(py));
                if let Some(protocol) = protocol {
                    let eof_received = protocol.bind(py).getattr(intern!(py, "eof_received"))?;
                    link::call_soon(slf, eof_received, CallArgs::None)?;
                }
                Self::schedule_connection_lost(slf, py.None())
            }
        }
    }

    /// A write pipe's fd turned readable: the reading end was closed.
    fn read_ready_writer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        link::log_debug(slf, intern!(py, "info"), "%r was closed by peer", None)?;
        if slf.borrow().buffer.is_empty() {
            Self::close_with(slf, py.None())
        } else {
            let exc = PyBrokenPipeError::new_err(()).into_value(py).into_any();
            Self::close_with(slf, exc)
        }
    }
}

#[pymethods]
impl PipeCore {
    #[new]
    #[pyo3(signature = (event_loop, pipe, fd, transport, *, writer))]
    fn py_new(
        event_loop: &Bound<'_, PyAny>,
        pipe: Py<PyAny>,
        fd: RawFd,
        transport: Py<PyAny>,
        writer: bool,
    ) -> PyResult<Self> {
        Ok(PipeCore {
            link: Link::new(event_loop.cast::<LoopBase>()?.clone().unbind(), fd, transport),
            pipe: Some(pipe),
            writer,
            closing: false,
            paused: false,
            conn_lost: 0,
            buffer: WriteBuffer::default(),
        })
    }

    fn set_protocol(&mut self, protocol: Py<PyAny>) {
        self.link.protocol = Some(protocol);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.link.protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn is_closing(&self) -> bool {
        self.closing
    }

    /// The same as `is_closing()` (pipes do not defer writes), under the name `repr` uses.
    fn _closing_flag(&self) -> bool {
        self.closing
    }

    fn is_reading(&self) -> bool {
        self.is_reading_now()
    }

    /// Installs the reader: a read pipe's, unless paused; a write pipe's "peer closed" watch.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let start = {
            let s = slf.borrow();
            s.writer || s.is_reading_now()
        };
        if start {
            link::watch(slf, Side::Read)?;
        }
        Ok(())
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut s = slf.borrow_mut();
            if !s.is_reading_now() {
                return Ok(());
            }
            s.paused = true;
        }
        link::unwatch(slf, Side::Read)?;
        link::log_debug(slf, intern!(py, "debug"), "%r pauses reading", None)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut s = slf.borrow_mut();
            if s.closing || !s.paused {
                return Ok(());
            }
            s.paused = false;
        }
        link::watch(slf, Side::Read)?;
        link::log_debug(slf, intern!(py, "debug"), "%r resumes reading", None)
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.borrow().writer {
            Self::read_ready_writer(slf)
        } else {
            Self::read_ready_reader(slf)
        }
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        // asyncio asserts the type here (an AssertionError, not a TypeError).
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            return Err(PyAssertionError::new_err(data.repr()?.unbind()));
        }
        let warn = {
            let mut s = slf.borrow_mut();
            if s.conn_lost > 0 || s.closing {
                if data.len()? == 0 {
                    return Ok(());
                }
                let warn = s.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                s.conn_lost += 1;
                Some(warn)
            } else {
                None
            }
        };
        if let Some(warn) = warn {
            if warn {
                logger(py)?.call_method1(
                    intern!(py, "warning"),
                    ("pipe closed by peer or os.write(pipe, data) raised exception.",),
                )?;
            }
            return Ok(());
        }
        let outcome = {
            let mut s = slf.borrow_mut();
            let fd = s.link.fd;
            send_or_queue(&mut s.buffer, data, |bytes| write_slices(fd, &[IoSlice::new(bytes)]))?
        };
        match outcome {
            WriteOutcome::Done => Ok(()),
            WriteOutcome::Failed(err) => {
                slf.borrow_mut().conn_lost += 1;
                Self::fail(slf, os_error(&err), "Fatal write error on pipe transport")
            }
            WriteOutcome::Buffered { add_writer } => link::queued(slf, add_writer),
        }
    }

    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let written = {
            let s = slf.borrow();
            if s.buffer.is_empty() {
                return Ok(());
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = s.buffer.io_slices(&mut slices);
            write_slices(s.link.fd, &slices[..n])
        };
        match written {
            Err(err) if is_retry(&err) => Ok(()),
            Err(err) => {
                let released = {
                    let mut s = slf.borrow_mut();
                    s.conn_lost += 1;
                    s.buffer.clear()
                };
                drop(released);
                // Removed here: with the buffer now empty, the close below would not.
                link::unwatch(slf, Side::Write)?;
                Self::fail(slf, os_error(&err), "Fatal write error on pipe transport")
            }
            Ok(n) => {
                let (released, drained) = {
                    let mut s = slf.borrow_mut();
                    let released = s.buffer.consume(n);
                    (released, s.buffer.is_empty())
                };
                drop(released);
                if !drained {
                    return Ok(());
                }
                link::unwatch(slf, Side::Write)?;
                // May write more.
                link::maybe_resume_protocol(slf)?;
                if slf.borrow().closing {
                    link::unwatch(slf, Side::Read)?;
                    Self::_call_connection_lost(slf, py.None())?;
                }
                Ok(())
            }
        }
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let drained = {
            let mut s = slf.borrow_mut();
            if s.closing {
                return Ok(());
            }
            s.closing = true;
            s.buffer.is_empty()
        };
        if drained {
            link::unwatch(slf, Side::Read)?;
            Self::schedule_connection_lost(slf, py.None())?;
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (writer, open) = {
            let s = slf.borrow();
            (s.writer, s.pipe.is_some() && !s.closing)
        };
        if !open {
            return Ok(());
        }
        if writer {
            // Closing a write pipe is write_eof(): flush, then close.
            Self::write_eof(slf)
        } else {
            Self::close_with(slf, py.None())
        }
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_with(slf, slf.py().None())
    }

    #[pyo3(signature = (exc, message = "Fatal error on pipe transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, exc, message)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let protocol = slf.borrow().link.protocol.as_ref().map(|p| p.clone_ref(py));
        let lost = protocol.map_or(Ok(()), |p| {
            p.call_method1(py, intern!(py, "connection_lost"), (exc,)).map(drop)
        });
        let (pipe, transport, released) = {
            let mut s = slf.borrow_mut();
            s.link.protocol = None;
            s.link.event_loop = None;
            (s.pipe.take(), s.link.transport.take(), s.buffer.clear())
        };
        drop(released);
        drop(transport);
        let closed = pipe.map_or(Ok(()), |p| p.call_method0(py, intern!(py, "close")).map(drop));
        lost.and(closed)
    }

    fn get_write_buffer_size(&self) -> usize {
        self.buffer.len()
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        (self.link.low_water, self.link.high_water)
    }

    fn _set_write_buffer_limits(slf: &Bound<'_, Self>, high: usize, low: usize) -> PyResult<()> {
        link::set_write_buffer_limits(slf, high, low)
    }

    #[getter]
    fn _pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.pipe.as_ref().map(|p| p.clone_ref(py))
    }

    #[setter(_pipe)]
    fn set_pipe(&mut self, pipe: Option<Py<PyAny>>) {
        self.pipe = pipe;
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopBase>> {
        self.link.loop_ref(py)
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
    fn _reader_installed(&self) -> bool {
        self.link.reading
    }

    #[getter]
    fn _writer_installed(&self) -> bool {
        self.link.writing
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.link.traverse(&visit)?;
        visit.call(&self.pipe)?;
        for shared in self.buffer.shared() {
            shared.visit(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.link.clear();
        self.pipe = None;
        drop(self.buffer.clear());
    }
}
