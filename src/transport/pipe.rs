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

use super::write_buffer::{WriteBuffer, MAX_IOVECS};
use super::{
    is_fatal, is_os_error, is_retry, logger, queue_rest, report, with_buffer, with_read_buffer, SharedBytes,
    WriteOutcome, LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};
use crate::errors::os_error;
use crate::event_loop::{closed_error, LoopBase, Side};
use pyo3::exceptions::{PyAssertionError, PyBrokenPipeError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};
use std::io::{self, IoSlice};
use std::os::fd::RawFd;

const DEFAULT_HIGH_WATER: usize = 64 * 1024;

#[pyclass(module = "ferroloop._ferroloop")]
#[allow(clippy::struct_excessive_bools)] // asyncio's transport flags, kept one for one
pub struct PipeCore {
    /// `None` once `connection_lost` has been called.
    event_loop: Option<Py<LoopBase>>,
    fd: RawFd,
    /// The pipe object the user passed; closed after `connection_lost`.
    pipe: Option<Py<PyAny>>,
    transport: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// A write pipe (else a read pipe).
    writer: bool,
    closing: bool,
    paused: bool,
    conn_lost: u32,
    buffer: WriteBuffer<SharedBytes>,
    high_water: usize,
    low_water: usize,
    protocol_paused: bool,
    reading: bool,
    writing: bool,
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
    fn loop_ref(&self, py: Python<'_>) -> Option<Py<LoopBase>> {
        self.event_loop.as_ref().map(|l| l.clone_ref(py))
    }

    fn is_reading_now(&self) -> bool {
        !self.paused && !self.closing
    }

    fn watch(slf: &Bound<'_, Self>, side: Side) -> PyResult<()> {
        let py = slf.py();
        let (event_loop, fd) = {
            let s = slf.borrow();
            (s.loop_ref(py), s.fd)
        };
        let event_loop = event_loop.ok_or_else(closed_error)?;
        let callback = match side {
            Side::Read => slf.getattr(intern!(py, "_read_ready"))?,
            Side::Write => slf.getattr(intern!(py, "_write_ready"))?,
        };
        LoopBase::watch_fd(event_loop.bind(py), fd, side, callback, PyTuple::empty(py))?;
        let mut s = slf.borrow_mut();
        match side {
            Side::Read => s.reading = true,
            Side::Write => s.writing = true,
        }
        Ok(())
    }

    fn unwatch(slf: &Bound<'_, Self>, side: Side) -> PyResult<()> {
        let py = slf.py();
        let (event_loop, fd) = {
            let mut s = slf.borrow_mut();
            match side {
                Side::Read => s.reading = false,
                Side::Write => s.writing = false,
            }
            (s.loop_ref(py), s.fd)
        };
        if let Some(event_loop) = event_loop {
            LoopBase::unwatch_fd(event_loop.bind(py), fd, side)?;
        }
        Ok(())
    }

    fn call_soon(slf: &Bound<'_, Self>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        let py = slf.py();
        let event_loop = slf.borrow().loop_ref(py).ok_or_else(closed_error)?;
        LoopBase::schedule(event_loop.bind(py), "call_soon", callback, args, None, false)?;
        Ok(())
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let callback = slf.getattr(intern!(py, "_call_connection_lost"))?;
        Self::call_soon(slf, callback, PyTuple::new(py, [exc])?)
    }

    fn debug(slf: &Bound<'_, Self>) -> bool {
        let py = slf.py();
        slf.borrow()
            .event_loop
            .as_ref()
            .is_some_and(|l| l.borrow(py).debug_enabled())
    }

    /// `logger.<level>(format, transport[, message], exc_info=exc)` in debug mode.
    fn log_debug(
        slf: &Bound<'_, Self>,
        level: &Bound<'_, PyString>,
        format: &str,
        extra: Option<(&str, &Bound<'_, PyAny>)>,
    ) -> PyResult<()> {
        let py = slf.py();
        if !Self::debug(slf) {
            return Ok(());
        }
        let transport = slf.borrow().transport.as_ref().map(|t| t.clone_ref(py));
        match extra {
            None => logger(py)?.call_method1(level, (format, transport))?,
            Some((message, exc)) => {
                let kwargs = PyDict::new(py);
                kwargs.set_item(intern!(py, "exc_info"), exc)?;
                logger(py)?.call_method(level, (format, transport, message), Some(&kwargs))?
            }
        };
        Ok(())
    }

    fn fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let py = slf.py();
        let writer = slf.borrow().writer;
        // A write pipe keeps every OS error quiet (outside debug mode); a read pipe only EIO,
        // which is what reading a pty whose other side closed gives.
        let quiet = is_os_error(exc)
            && (writer || exc.getattr(intern!(py, "errno"))?.extract::<Option<i32>>()? == Some(libc::EIO));
        if quiet {
            Self::log_debug(slf, intern!(py, "debug"), "%r: %s", Some((message, exc)))?;
        } else {
            let (event_loop, transport, protocol) = {
                let s = slf.borrow();
                (
                    s.loop_ref(py),
                    s.transport.as_ref().map(|t| t.clone_ref(py)),
                    s.protocol.as_ref().map(|p| p.clone_ref(py)),
                )
            };
            if let Some(event_loop) = event_loop {
                report(event_loop.bind(py), message, exc, transport.as_ref(), protocol.as_ref())?;
            }
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
            Self::unwatch(slf, Side::Write)?;
        }
        Self::unwatch(slf, Side::Read)?;
        Self::schedule_connection_lost(slf, exc)
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut s = slf.borrow_mut();
            if s.buffer.len() <= s.high_water || s.protocol_paused {
                return Ok(());
            }
            s.protocol_paused = true;
            s.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        if let Some(protocol) = protocol {
            if let Err(err) = protocol.call_method0(py, intern!(py, "pause_writing")) {
                Self::report_flow_error(slf, err, "protocol.pause_writing() failed")?;
            }
        }
        Ok(())
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut s = slf.borrow_mut();
            if !s.protocol_paused || s.buffer.len() > s.low_water {
                return Ok(());
            }
            s.protocol_paused = false;
            s.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        if let Some(protocol) = protocol {
            if let Err(err) = protocol.call_method0(py, intern!(py, "resume_writing")) {
                Self::report_flow_error(slf, err, "protocol.resume_writing() failed")?;
            }
        }
        Ok(())
    }

    fn report_flow_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if is_fatal(py, &err) {
            return Err(err);
        }
        let (event_loop, transport, protocol) = {
            let s = slf.borrow();
            (
                s.loop_ref(py),
                s.transport.as_ref().map(|t| t.clone_ref(py)),
                s.protocol.as_ref().map(|p| p.clone_ref(py)),
            )
        };
        if let Some(event_loop) = event_loop {
            let exc = err.into_value(py);
            report(
                event_loop.bind(py),
                message,
                exc.bind(py),
                transport.as_ref(),
                protocol.as_ref(),
            )?;
        }
        Ok(())
    }

    fn read_ready_reader(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.borrow().fd;
        let outcome = with_read_buffer(|buf| read(fd, buf).map(|n| (n > 0).then(|| PyBytes::new(py, &buf[..n]))));
        match outcome {
            Err(err) if is_retry(&err) => Ok(()),
            Err(err) => Self::fail(slf, os_error(&err), "Fatal read error on pipe transport"),
            Ok(Some(data)) => {
                let protocol = slf.borrow().protocol.as_ref().map(|p| p.clone_ref(py));
                if let Some(protocol) = protocol {
                    // Unlike a socket transport's, an exception here is the callback's: it goes
                    // to the loop's exception handler and the pipe stays open.
                    protocol.call_method1(py, intern!(py, "data_received"), (data,))?;
                }
                Ok(())
            }
            Ok(None) => {
                Self::log_debug(slf, intern!(py, "info"), "%r was closed by peer", None)?;
                slf.borrow_mut().closing = true;
                Self::unwatch(slf, Side::Read)?;
                let protocol = slf.borrow().protocol.as_ref().map(|p| p.clone_ref(py));
                if let Some(protocol) = protocol {
                    let eof_received = protocol.bind(py).getattr(intern!(py, "eof_received"))?;
                    Self::call_soon(slf, eof_received, PyTuple::empty(py))?;
                }
                Self::schedule_connection_lost(slf, py.None())
            }
        }
    }

    /// A write pipe's fd turned readable: the reading end was closed.
    fn read_ready_writer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        Self::log_debug(slf, intern!(py, "info"), "%r was closed by peer", None)?;
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
            event_loop: Some(event_loop.cast::<LoopBase>()?.clone().unbind()),
            fd,
            pipe: Some(pipe),
            transport: Some(transport),
            protocol: None,
            writer,
            closing: false,
            paused: false,
            conn_lost: 0,
            buffer: WriteBuffer::default(),
            high_water: DEFAULT_HIGH_WATER,
            low_water: DEFAULT_HIGH_WATER / 4,
            protocol_paused: false,
            reading: false,
            writing: false,
        })
    }

    fn set_protocol(&mut self, protocol: Py<PyAny>) {
        self.protocol = Some(protocol);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn is_closing(&self) -> bool {
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
            Self::watch(slf, Side::Read)?;
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
        Self::unwatch(slf, Side::Read)?;
        Self::log_debug(slf, intern!(py, "debug"), "%r pauses reading", None)
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
        Self::watch(slf, Side::Read)?;
        Self::log_debug(slf, intern!(py, "debug"), "%r resumes reading", None)
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
            let fd = s.fd;
            with_buffer(data, |bytes| {
                if bytes.is_empty() {
                    return WriteOutcome::Done;
                }
                let add_writer = s.buffer.is_empty();
                let mut sent = 0;
                if add_writer {
                    match write_slices(fd, &[IoSlice::new(bytes)]) {
                        Ok(n) if n == bytes.len() => return WriteOutcome::Done,
                        Ok(n) => sent = n,
                        Err(err) if is_retry(&err) => {}
                        Err(err) => return WriteOutcome::Failed(err),
                    }
                }
                queue_rest(&mut s.buffer, data, bytes, sent);
                WriteOutcome::Buffered { add_writer }
            })?
        };
        match outcome {
            WriteOutcome::Done => Ok(()),
            WriteOutcome::Failed(err) => {
                slf.borrow_mut().conn_lost += 1;
                Self::fail(slf, os_error(&err), "Fatal write error on pipe transport")
            }
            WriteOutcome::Buffered { add_writer } => {
                if add_writer {
                    Self::watch(slf, Side::Write)?;
                }
                Self::maybe_pause_protocol(slf)
            }
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
            write_slices(s.fd, &slices[..n])
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
                Self::unwatch(slf, Side::Write)?;
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
                Self::unwatch(slf, Side::Write)?;
                // May write more.
                Self::maybe_resume_protocol(slf)?;
                if slf.borrow().closing {
                    Self::unwatch(slf, Side::Read)?;
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
            Self::unwatch(slf, Side::Read)?;
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
        let protocol = slf.borrow().protocol.as_ref().map(|p| p.clone_ref(py));
        let lost = protocol.map_or(Ok(()), |p| {
            p.call_method1(py, intern!(py, "connection_lost"), (exc,)).map(drop)
        });
        let (pipe, transport, released) = {
            let mut s = slf.borrow_mut();
            s.protocol = None;
            s.event_loop = None;
            (s.pipe.take(), s.transport.take(), s.buffer.clear())
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
        (self.low_water, self.high_water)
    }

    fn _set_write_buffer_limits(slf: &Bound<'_, Self>, high: usize, low: usize) -> PyResult<()> {
        {
            let mut s = slf.borrow_mut();
            s.high_water = high;
            s.low_water = low;
        }
        Self::maybe_pause_protocol(slf)
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
        self.loop_ref(py)
    }

    #[getter]
    fn _protocol_paused(&self) -> bool {
        self.protocol_paused
    }

    #[getter]
    fn _conn_lost(&self) -> u32 {
        self.conn_lost
    }

    #[getter]
    fn _reader_installed(&self) -> bool {
        self.reading
    }

    #[getter]
    fn _writer_installed(&self) -> bool {
        self.writing
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.pipe)?;
        visit.call(&self.transport)?;
        visit.call(&self.protocol)?;
        for shared in self.buffer.shared() {
            shared.visit(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.event_loop = None;
        self.pipe = None;
        self.transport = None;
        self.protocol = None;
        drop(self.buffer.clear());
    }
}
