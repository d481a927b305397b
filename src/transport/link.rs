//! What every transport core shares, whatever it reads and writes: its link to the loop (the fd
//! and which of its watchers are installed), the protocol and the Python transport it reports
//! with, and asyncio's write flow control (`pause_writing`/`resume_writing` at the water marks).
//!
//! The cores (`SocketCore`, `PipeCore`) hold a [`Link`] and implement [`Core`]; the functions
//! here take the core's Python object, as they call into Python (the loop, the protocol) and must
//! not hold a borrow of the core while doing so.

use super::{logger, report};
use crate::call_args::CallArgs;
use crate::event_loop::{closed_error, LoopBase, Side};
use crate::handles::NativeCall;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::False;
use pyo3::types::PyAnyMethods;
use pyo3::types::{PyDict, PyString};
use pyo3::{intern, PyClass, PyTraverseError, PyVisit};
use std::os::fd::RawFd;

/// asyncio's default high-water mark; the low one is a quarter of it.
const DEFAULT_HIGH_WATER: usize = 64 * 1024;

pub struct Link {
    /// `None` once `connection_lost` has been called, as asyncio's transports drop `_loop`.
    pub event_loop: Option<Py<LoopBase>>,
    pub fd: RawFd,
    /// The asyncio transport object the protocol sees (passed to exception handlers).
    pub transport: Option<Py<PyAny>>,
    pub protocol: Option<Py<PyAny>>,
    pub high_water: usize,
    pub low_water: usize,
    pub protocol_paused: bool,
    /// Whether the loop has our reader / writer installed (for `repr`).
    pub reading: bool,
    pub writing: bool,
}

impl Link {
    pub fn new(event_loop: Py<LoopBase>, fd: RawFd, transport: Py<PyAny>) -> Link {
        Link {
            event_loop: Some(event_loop),
            fd,
            transport: Some(transport),
            protocol: None,
            high_water: DEFAULT_HIGH_WATER,
            low_water: DEFAULT_HIGH_WATER / 4,
            protocol_paused: false,
            reading: false,
            writing: false,
        }
    }

    pub fn loop_ref(&self, py: Python<'_>) -> Option<Py<LoopBase>> {
        self.event_loop.as_ref().map(|l| l.clone_ref(py))
    }

    pub fn protocol_ref(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol.as_ref().map(|p| p.clone_ref(py))
    }

    pub fn transport_ref(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.transport.as_ref().map(|t| t.clone_ref(py))
    }

    pub fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop.as_ref().is_some_and(|l| l.borrow(py).debug_enabled())
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.transport)?;
        visit.call(&self.protocol)
    }

    pub fn clear(&mut self) {
        self.event_loop = None;
        self.transport = None;
        self.protocol = None;
    }
}

/// A transport core: a pyclass holding a [`Link`], with `_read_ready` and `_write_ready` methods
/// for the loop to call.
pub trait Core: PyClass<Frozen = False> {
    /// `_read_ready` and `_write_ready`, as the loop calls them on readiness.
    const READ_READY: NativeCall;
    const WRITE_READY: NativeCall;
    fn link(&self) -> &Link;
    fn link_mut(&mut self) -> &mut Link;
    /// Bytes accepted for writing and not yet sent.
    fn unsent(&self) -> usize;
}

/// Installs the core's `_read_ready` or `_write_ready` as the fd's reader or writer.
pub fn watch<C: Core>(slf: &Bound<'_, C>, side: Side) -> PyResult<()> {
    let py = slf.py();
    let (event_loop, fd) = {
        let s = slf.borrow();
        (s.link().loop_ref(py), s.link().fd)
    };
    let event_loop = event_loop.ok_or_else(closed_error)?;
    let native = match side {
        Side::Read => const { &C::READ_READY },
        Side::Write => const { &C::WRITE_READY },
    };
    LoopBase::watch_fd_native(event_loop.bind(py), fd, side, slf.as_any(), native)?;
    let mut s = slf.borrow_mut();
    match side {
        Side::Read => s.link_mut().reading = true,
        Side::Write => s.link_mut().writing = true,
    }
    Ok(())
}

/// Removes the fd's reader or writer (a no-op once the loop is gone).
pub fn unwatch<C: Core>(slf: &Bound<'_, C>, side: Side) -> PyResult<()> {
    let py = slf.py();
    let (event_loop, fd) = {
        let mut s = slf.borrow_mut();
        let link = s.link_mut();
        match side {
            Side::Read => link.reading = false,
            Side::Write => link.writing = false,
        }
        (link.loop_ref(py), link.fd)
    };
    if let Some(event_loop) = event_loop {
        LoopBase::unwatch_fd(event_loop.bind(py), fd, side)?;
    }
    Ok(())
}

/// `loop.call_soon(callback, *args)`.
pub fn call_soon<C: Core>(slf: &Bound<'_, C>, callback: Bound<'_, PyAny>, args: CallArgs) -> PyResult<()> {
    let py = slf.py();
    let event_loop = slf.borrow().link().loop_ref(py).ok_or_else(closed_error)?;
    LoopBase::schedule(event_loop.bind(py), "call_soon", callback, args, None, false)?;
    Ok(())
}

/// `logger.<level>(format, transport[, message], exc_info=exc)`, in debug mode only (asyncio's
/// transports log these only then).
pub fn log_debug<C: Core>(
    slf: &Bound<'_, C>,
    level: &Bound<'_, PyString>,
    format: &str,
    extra: Option<(&str, &Bound<'_, PyAny>)>,
) -> PyResult<()> {
    let py = slf.py();
    let transport = {
        let s = slf.borrow();
        if !s.link().debug(py) {
            return Ok(());
        }
        s.link().transport_ref(py)
    };
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

/// `loop.call_exception_handler()` with the transport and protocol keys.
pub fn report_error<C: Core>(slf: &Bound<'_, C>, message: &str, exc: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    let (event_loop, transport, protocol) = {
        let s = slf.borrow();
        let link = s.link();
        (link.loop_ref(py), link.transport_ref(py), link.protocol_ref(py))
    };
    match event_loop {
        Some(event_loop) => report(event_loop.bind(py), message, exc, transport.as_ref(), protocol.as_ref()),
        None => Ok(()),
    }
}

/// `protocol.pause_writing()` once the unsent bytes are above the high-water mark.
pub fn maybe_pause_protocol<C: Core>(slf: &Bound<'_, C>) -> PyResult<()> {
    let py = slf.py();
    let protocol = {
        let mut s = slf.borrow_mut();
        let unsent = s.unsent();
        let link = s.link_mut();
        if unsent <= link.high_water || link.protocol_paused {
            return Ok(());
        }
        link.protocol_paused = true;
        link.protocol_ref(py)
    };
    match protocol {
        Some(protocol) => match protocol.call_method0(py, intern!(py, "pause_writing")) {
            Ok(_) => Ok(()),
            Err(err) => report_flow_error(slf, err, "protocol.pause_writing() failed"),
        },
        None => Ok(()),
    }
}

/// `protocol.resume_writing()` once the unsent bytes are down to the low-water mark.
pub fn maybe_resume_protocol<C: Core>(slf: &Bound<'_, C>) -> PyResult<()> {
    let py = slf.py();
    let protocol = {
        let mut s = slf.borrow_mut();
        let unsent = s.unsent();
        let link = s.link_mut();
        if !link.protocol_paused || unsent > link.low_water {
            return Ok(());
        }
        link.protocol_paused = false;
        link.protocol_ref(py)
    };
    match protocol {
        Some(protocol) => match protocol.call_method0(py, intern!(py, "resume_writing")) {
            Ok(_) => Ok(()),
            Err(err) => report_flow_error(slf, err, "protocol.resume_writing() failed"),
        },
        None => Ok(()),
    }
}

fn report_flow_error<C: Core>(slf: &Bound<'_, C>, err: PyErr, message: &str) -> PyResult<()> {
    let py = slf.py();
    if super::is_fatal(py, &err) {
        return Err(err);
    }
    let exc = err.into_value(py);
    report_error(slf, message, exc.bind(py))
}

/// Sets the water marks (already validated by the Python side) and pauses the protocol if the
/// unsent bytes are now above the high one.
pub fn set_write_buffer_limits<C: Core>(slf: &Bound<'_, C>, high: usize, low: usize) -> PyResult<()> {
    {
        let mut s = slf.borrow_mut();
        let link = s.link_mut();
        link.high_water = high;
        link.low_water = low;
    }
    maybe_pause_protocol(slf)
}

/// After `write()` queued data: install the writer if the queue was empty, and pause the
/// protocol if the queue is now above the high-water mark.
pub fn queued<C: Core>(slf: &Bound<'_, C>, add_writer: bool) -> PyResult<()> {
    if add_writer {
        watch(slf, Side::Write)?;
    }
    maybe_pause_protocol(slf)
}
