//! Native transports: the per-byte half of asyncio's transports.
//!
//! A transport is split in two. The Python class the protocol sees (in
//! `python/ferroloop/_transports.py`) is a real `asyncio.Transport` subclass, as `CPython`'s tests
//! and some libraries check; it holds the per-connection state that is only read rarely (extra
//! info, the server, `repr`). Its native core, defined here, does everything that runs per read
//! or per write: the syscalls, the write buffer, flow control, and the close sequence. The loop
//! calls the core directly when its fd is ready; the protocol's callbacks are called from here.
//!
//! The core's state is borrowed only in Rust-only sections, never across a call into Python:
//! a protocol callback may call back into the transport (write, close, pause) at any time.

pub mod socket;
pub mod write_buffer;

use crate::event_loop::LoopBase;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PySystemExit};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use pyo3::{ffi, intern};
use std::io;

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// asyncio's logger (`asyncio.log.logger`), so records look the same as the stdlib loop's.
fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    LOGGER.import(py, "asyncio.log", "logger")
}

fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// Whether an OS error only means "not now" (the fd is not ready after all).
fn is_retry(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// `loop.call_exception_handler({...})` with the keys asyncio's transports pass.
fn report(
    event_loop: &Bound<'_, LoopBase>,
    message: &str,
    exc: &Bound<'_, PyAny>,
    transport: Option<&Py<PyAny>>,
    protocol: Option<&Py<PyAny>>,
) -> PyResult<()> {
    let py = event_loop.py();
    let context = PyDict::new(py);
    context.set_item(intern!(py, "message"), message)?;
    context.set_item(intern!(py, "exception"), exc)?;
    context.set_item(intern!(py, "transport"), transport)?;
    context.set_item(intern!(py, "protocol"), protocol)?;
    event_loop.call_method1(intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}

fn is_os_error(exc: &Bound<'_, PyAny>) -> bool {
    exc.is_instance_of::<PyOSError>()
}

/// Borrows the bytes of a bytes-like object for the duration of `f`, as `socket.send()` does
/// (`PyBUF_SIMPLE`: any C-contiguous buffer). `f` must not run Python code.
fn with_buffer<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = obj.cast::<pyo3::types::PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: on success the view is initialised and released below, after `f` is done with it;
    // no Python code runs in between, so the exporter cannot resize the buffer.
    unsafe {
        if ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        let mut view = view.assume_init();
        let len = usize::try_from(view.len).unwrap_or(0);
        let data = if len == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(view.buf.cast::<u8>(), len)
        };
        let result = f(data);
        ffi::PyBuffer_Release(&raw mut view);
        Ok(result)
    }
}
