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

pub mod fast_methods;
pub mod link;
pub mod pipe;
pub mod sock_call;
pub mod sock_wait;
pub mod socket;
mod stream_feed;
pub mod write_buffer;

use crate::event_loop::LoopBase;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PySystemExit};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict};
use pyo3::{ffi, intern};
use std::cell::RefCell;
use std::io;
use write_buffer::{Shared, WriteBuffer, SHARE_THRESHOLD};

/// Bytes read per readiness event (asyncio's transports' `max_size`).
const MAX_READ: usize = 256 * 1024;

/// A zeroed, page-aligned byte buffer.
///
/// The kernel's copy into a receive buffer (`rep movsb`) ran at about half speed when the buffer
/// was not page-aligned, on the machines ferroloop is measured on: a `Vec` of this size comes
/// from `mmap` 16 bytes past a page boundary. Measured in docs/perf-log.md.
struct PageAligned {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl PageAligned {
    const ALIGN: usize = 4096;

    fn new(len: usize) -> PageAligned {
        let layout = std::alloc::Layout::from_size_align(len, Self::ALIGN).expect("read buffer layout");
        // SAFETY: `len` is non-zero (MAX_READ).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        PageAligned { ptr, len }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `len` initialised bytes, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageAligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, Self::ALIGN).expect("read buffer layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

thread_local! {
    /// Where received data lands before it is copied into a `bytes` object.
    /// One per thread suffices: a read finishes (and copies out) before any Python code runs.
    static READ_BUFFER: RefCell<PageAligned> = RefCell::new(PageAligned::new(MAX_READ));
}

/// Runs `f` on the per-thread read buffer. `f` must not run Python code.
fn with_read_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUFFER.with(|cell| {
        if let Ok(mut buf) = cell.try_borrow_mut() {
            f(buf.as_mut_slice())
        } else {
            // Not reachable (no Python code runs while it is borrowed); a fresh buffer is correct.
            f(PageAligned::new(MAX_READ).as_mut_slice())
        }
    })
}

/// What `write()` did with its data.
enum WriteOutcome {
    /// All sent (or nothing to send).
    Done,
    Failed(io::Error),
    /// Some or all queued; the writer must be installed if the queue was empty before.
    Buffered {
        add_writer: bool,
    },
}

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// asyncio's logger (`asyncio.log.logger`), so records look the same as the stdlib loop's.
fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    LOGGER.import(py, "asyncio.log", "logger")
}

pub(crate) fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
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

/// An immutable `bytes` object queued by reference (from some offset on) instead of copied.
pub struct SharedBytes {
    owner: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the pointed-to bytes belong to an immutable `bytes` object kept alive by `owner`; they
// are only read, and only while the owning transport is borrowed under the GIL.
unsafe impl Send for SharedBytes {}
unsafe impl Sync for SharedBytes {}

impl Shared for SharedBytes {
    fn bytes(&self) -> &[u8] {
        // SAFETY: see the Send impl; `ptr..ptr+len` lies within the owner's data.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl SharedBytes {
    pub fn visit(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.owner)
    }
}

/// Queues `bytes[sent..]` after a partial or skipped send, where `bytes` are the contents of
/// `data`: a large immutable `bytes` is kept by reference, anything else is copied (the caller
/// may change a `bytearray` after `write()` returns).
fn queue_rest(buffer: &mut WriteBuffer<SharedBytes>, data: &Bound<'_, PyAny>, bytes: &[u8], sent: usize) {
    let rest = &bytes[sent..];
    match data.cast_exact::<PyBytes>() {
        Ok(owner) if rest.len() >= SHARE_THRESHOLD => buffer.push_shared(SharedBytes {
            owner: owner.clone().unbind(),
            ptr: rest.as_ptr(),
            len: rest.len(),
        }),
        _ => buffer.push_copy(rest),
    }
}

/// Queues all of `data` without trying to send it (a write deferred until the running callback
/// returns) if it is at most `limit` bytes, and returns how many that was; `None` (nothing
/// queued) above `limit`. The first write into an empty buffer is kept by reference whatever its
/// size, if it is a `bytes`: a callback's single write then costs no copy. Later small ones are
/// copied, so that many small writes still make few chunks.
fn queue_all(buffer: &mut WriteBuffer<SharedBytes>, data: &Bound<'_, PyAny>, limit: usize) -> PyResult<Option<usize>> {
    if buffer.is_empty() {
        if let Ok(owner) = data.cast_exact::<PyBytes>() {
            let bytes = owner.as_bytes();
            if bytes.len() > limit {
                return Ok(None);
            }
            if !bytes.is_empty() {
                buffer.push_shared(SharedBytes {
                    owner: owner.clone().unbind(),
                    ptr: bytes.as_ptr(),
                    len: bytes.len(),
                });
            }
            return Ok(Some(bytes.len()));
        }
    }
    with_buffer(data, |bytes| {
        if bytes.len() > limit {
            return None;
        }
        queue_rest(buffer, data, bytes, 0);
        Some(bytes.len())
    })
}

/// `write()`'s common path: when nothing is queued, hand `data` to the kernel at once with `send_now`
/// (the fd's `send()` or `write()`); queue whatever it did not take.
fn send_or_queue(
    buffer: &mut WriteBuffer<SharedBytes>,
    data: &Bound<'_, PyAny>,
    send_now: impl FnOnce(&[u8]) -> io::Result<usize>,
) -> PyResult<WriteOutcome> {
    with_buffer(data, |bytes| {
        if bytes.is_empty() {
            return WriteOutcome::Done;
        }
        let add_writer = buffer.is_empty();
        let mut sent = 0;
        if add_writer {
            match send_now(bytes) {
                Ok(n) if n == bytes.len() => return WriteOutcome::Done,
                Ok(n) => sent = n,
                Err(err) if is_retry(&err) => {}
                Err(err) => return WriteOutcome::Failed(err),
            }
        }
        queue_rest(buffer, data, bytes, sent);
        WriteOutcome::Buffered { add_writer }
    })
}
