//! `LoopBase`: the native engine behind `ferroloop.Loop`.
//!
//! This is the `#[pymethods]` shell: argument checks and the per-callback entry points
//! (`call_soon`, timers, fd watchers, `run_forever`'s turn loop). Everything that runs once per
//! loop, per connection or per call-site argument handling (task factories, executors, exception
//! handler formatting, signal plumbing, `sock_*`) lives in the Python subclass, which extends this
//! class by subclassing only. The turn itself is in `core`; the fd table in `fd_watch`.
//!
//! Ownership: this object owns the ready queue, the timer heap, the fd table and the poller. The
//! Python side never mirrors that state; it asks through methods.

mod core;
mod fast_calls;
mod fd_watch;
mod tasks;

use crate::call_args::CallArgs;
use crate::clock;
use crate::errors::os_error;
use crate::handles::{Handle, NativeCall, TimerHandle, TimerSpec};
use crate::poller::Poller;
use crate::timers::TimerHeap;
use crate::transport::socket::SocketCore;
pub(crate) use fast_calls::install as install_fast_calls;
use fd_watch::FdWatches;
pub(crate) use fd_watch::Side;
use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};
use pyo3::{intern, PyTraverseError, PyTypeInfo, PyVisit};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

#[pyclass(subclass, module = "ferroloop._ferroloop")]
#[allow(clippy::struct_excessive_bools)] // independent lifecycle flags, as asyncio keeps them
pub struct LoopBase {
    ready: VecDeque<Py<Handle>>,
    /// An empty queue kept to swap with `ready` each turn, so running a batch allocates nothing.
    spare: VecDeque<Py<Handle>>,
    timers: TimerHeap<Py<Handle>>,
    timer_cancels: Arc<AtomicUsize>,
    watches: FdWatches,
    /// `None` once the loop is closed.
    poller: Option<Arc<Poller>>,
    epoll_buf: Vec<libc::epoll_event>,
    readiness: Vec<crate::poller::Readiness>,
    stopping: bool,
    running: bool,
    closed: bool,
    debug: bool,
    slow_callback_duration: f64,
    /// The running thread (`threading.get_ident()`), 0 when not running.
    thread_id: u64,
    task_factory: Option<Py<PyAny>>,
    /// The handle whose callback is running, in debug mode only (asyncio's `_current_handle`):
    /// `default_exception_handler` adds its creation stack to reports made while it runs.
    current_handle: Option<Py<Handle>>,
    /// `time()` is overridden, by a subclass or on the instance (a test's `mock.patch.object`):
    /// the loop then reads its clock through `self.time()` for `call_later()` and for timer
    /// expiry, as asyncio's loop always does, instead of reading the monotonic clock directly.
    time_overridden: bool,
    /// `call_soon()` is replaced, likewise: ferroloop's tasks then schedule through it.
    call_soon_overridden: bool,
    /// Socket transports holding writes until the running callback returns (see
    /// `transport::socket`), each once per deferral.
    deferred_writes: Vec<Py<SocketCore>>,
    /// `deferred_writes`' allocation, kept between turns.
    spare_writes: Vec<Py<SocketCore>>,
}

pub(crate) fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

fn current_thread() -> u64 {
    // SAFETY: pthread_self has no preconditions. It is what threading.get_ident() returns.
    unsafe { libc::pthread_self() as u64 }
}

/// asyncio's `selectors._fileobj_to_fd`: an int, or an object whose `fileno()` gives one.
/// `Ok(None)` for a number too large to be an fd: no registration can have it (asyncio's selector
/// raises `OverflowError` registering it and finds nothing removing it).
fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = obj.py();
    let number = if obj.is_instance_of::<PyInt>() {
        obj.clone()
    } else {
        let invalid = || {
            PyValueError::new_err(format!(
                "Invalid file object: {}",
                obj.repr().map_or_else(|_| "?".into(), |r| r.to_string())
            ))
        };
        let fileno = obj.call_method0(intern!(py, "fileno")).map_err(|e| {
            if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py)
                || e.is_instance_of::<PyTypeError>(py)
                || e.is_instance_of::<PyValueError>(py)
            {
                invalid()
            } else {
                e
            }
        })?;
        // int(), as asyncio's selectors do (a float fileno() is accepted there).
        PyInt::type_object(py).call1((fileno,)).map_err(|_| invalid())?
    };
    if number.lt(0)? {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {number}")));
    }
    Ok(number.extract::<RawFd>().ok())
}

/// An fd to register: as [`fileobj_to_fd`], with asyncio's error for a number too large.
fn fd_to_register(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    fileobj_to_fd(obj)?.ok_or_else(|| PyOverflowError::new_err("Python int too large to convert to C int"))
}

/// asyncio's `_check_callback`, except that non-callables are refused in every mode, not only in
/// debug mode: the mistake is cheap to detect at the call site and useless to discover later.
fn check_callback(callback: &Bound<'_, PyAny>, method: &str, debug: bool) -> PyResult<()> {
    let py = callback.py();
    let coroutines = || py.import(intern!(py, "asyncio.coroutines"));
    if !callback.is_callable() {
        if coroutines()?
            .call_method1(intern!(py, "iscoroutine"), (callback,))?
            .is_truthy()?
        {
            return Err(PyTypeError::new_err(format!(
                "coroutines cannot be used with {method}()"
            )));
        }
        return Err(PyTypeError::new_err(format!(
            "a callable object was expected by {method}(), got {}",
            callback.repr()?
        )));
    }
    if debug
        && coroutines()?
            .call_method1(intern!(py, "iscoroutinefunction"), (callback,))?
            .is_truthy()?
    {
        return Err(PyTypeError::new_err(format!(
            "coroutines cannot be used with {method}()"
        )));
    }
    Ok(())
}

impl LoopBase {
    pub(crate) fn debug_enabled(&self) -> bool {
        self.debug
    }

    fn check_closed(&self) -> PyResult<()> {
        if self.closed {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    /// asyncio's `_check_thread` (debug mode only).
    fn check_thread(&self) -> PyResult<()> {
        if self.thread_id != 0 && self.thread_id != current_thread() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// The loop's time: `self.time()` where that is overridden, else the monotonic clock.
    pub(crate) fn now<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        if slf.borrow().time_overridden {
            slf.call_method0(intern!(slf.py(), "time"))
        } else {
            Ok(PyFloat::new(slf.py(), clock::monotonic()).into_any())
        }
    }

    pub(crate) fn schedule(
        slf: &Bound<'_, Self>,
        method: &str,
        callback: Bound<'_, PyAny>,
        args: CallArgs,
        context: Option<Py<PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let (debug, queued) = {
            let s = slf.borrow();
            s.check_closed()?;
            if s.debug && !threadsafe {
                s.check_thread()?;
            }
            (s.debug, s.ready.len())
        };
        check_callback(&callback, method, debug)?;
        let handle = Handle::loop_owned(py, callback.unbind(), args, context, debug, queued, None)?;
        let mut s = slf.borrow_mut();
        s.ready.push_back(handle.clone_ref(py));
        if threadsafe && s.running && s.thread_id != current_thread() {
            if let Some(poller) = &s.poller {
                poller.wake().map_err(|e| os_error(&e))?;
            }
        }
        Ok(handle)
    }

    /// Queues `target(*args)` in `context` (with `native` called on `target`, if given), as
    /// `call_soon` would, for ferroloop's own tasks: their steps and done callbacks need neither
    /// the argument parsing nor the callback check.
    pub(crate) fn enqueue(
        slf: &Bound<'_, Self>,
        target: Py<PyAny>,
        args: CallArgs,
        context: Py<PyAny>,
        native: Option<&'static NativeCall>,
    ) -> PyResult<()> {
        let py = slf.py();
        let (debug, queued) = {
            let s = slf.borrow();
            s.check_closed()?;
            if s.debug {
                s.check_thread()?;
            }
            (s.debug, s.ready.len())
        };
        let handle = Handle::loop_owned(py, target, args, Some(context), debug, queued, native)?;
        slf.borrow_mut().ready.push_back(handle);
        Ok(())
    }

    /// Whether a transport may hold a `write()` until the running callback returns: only while
    /// this loop runs, on its own thread. Outside, nothing would send it before code that waits
    /// for the peer's answer.
    pub(crate) fn defers_writes(&self) -> bool {
        self.running && self.thread_id == current_thread()
    }

    /// Adds a transport whose writes wait for the running callback to return.
    pub(crate) fn defer_write(&mut self, core: Py<SocketCore>) {
        self.deferred_writes.push(core);
    }

    pub(crate) fn has_deferred_writes(&self) -> bool {
        !self.deferred_writes.is_empty()
    }

    /// Sends the writes that callbacks deferred. A transport's flush can run protocol code
    /// (`pause_writing()`, an exception handler) that writes to other transports: those are sent
    /// too before the poll. After an error that must stop the loop, what was not flushed stays
    /// listed for the next turn.
    pub(crate) fn flush_deferred_writes(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        loop {
            let mut pending = {
                let mut s = slf.borrow_mut();
                if s.deferred_writes.is_empty() {
                    return Ok(());
                }
                let spare = std::mem::take(&mut s.spare_writes);
                std::mem::replace(&mut s.deferred_writes, spare)
            };
            let mut cores = pending.drain(..);
            let mut failed = None;
            for core in cores.by_ref() {
                let core = core.bind(py);
                let outcome = SocketCore::flush_deferred(core).or_else(|err| {
                    if crate::transport::is_fatal(py, &err) {
                        Err(err)
                    } else {
                        SocketCore::report_flush_error(core, err)
                    }
                });
                if let Err(err) = outcome {
                    failed = Some(err);
                    break;
                }
            }
            let rest: Vec<_> = cores.collect();
            let mut s = slf.borrow_mut();
            s.deferred_writes.extend(rest);
            s.spare_writes = pending;
            if let Some(err) = failed {
                return Err(err);
            }
        }
    }

    /// Whether tasks may queue their steps and callbacks with [`LoopBase::enqueue`]: not when
    /// `call_soon` is replaced (by a subclass, or on the instance by a test), which asyncio's
    /// tasks would call.
    pub(crate) fn queues_tasks_natively(&self) -> bool {
        !self.call_soon_overridden
    }

    fn set_watch(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        side: Side,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        let fd_number = fd_to_register(fd)?;
        let fileobj = (!fd.is_instance_of::<PyInt>()).then(|| fd.clone().unbind());
        LoopBase::watch_fd(slf, fd_number, side, callback, args, fileobj)
    }

    /// Installs `callback(*args)` as the reader or writer of `fd` (replacing and cancelling a
    /// previous one), registered through `fileobj` when that was not an int (see
    /// `FdWatch::fileobj`).
    fn watch_fd(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        side: Side,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        fileobj: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let debug = LoopBase::open_debug(slf)?;
        let handle = Handle::persistent(py, callback.unbind(), CallArgs::from_tuple(args), None, debug)?;
        LoopBase::install_watch(slf, fd, side, handle, fileobj)
    }

    /// Installs `native` called on `target` as the reader or writer of `fd`: the transports'
    /// readiness callbacks, run without a bound-method object.
    pub(crate) fn watch_fd_native(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        side: Side,
        target: &Bound<'_, PyAny>,
        native: &'static NativeCall,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let debug = LoopBase::open_debug(slf)?;
        let handle = Handle::persistent(py, target.clone().unbind(), CallArgs::None, Some(native), debug)?;
        LoopBase::install_watch(slf, fd, side, handle, None)
    }

    /// Whether the loop is in debug mode; `RuntimeError` if it is closed.
    fn open_debug(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let s = slf.borrow();
        s.check_closed()?;
        Ok(s.debug)
    }

    fn install_watch(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        side: Side,
        handle: Py<Handle>,
        fileobj: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let (replaced, old_fileobj) = {
            let mut s = slf.borrow_mut();
            let poller = s.poller.clone().ok_or_else(closed_error)?;
            s.watches
                .set(&poller, fd, side, handle.clone_ref(py), fileobj)
                .map_err(|e| os_error(&e))?
        };
        drop(old_fileobj);
        if let Some(old) = replaced {
            old.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(handle)
    }

    fn clear_watch(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, side: Side) -> PyResult<bool> {
        if slf.borrow().closed {
            return Ok(false);
        }
        let fd = match fileobj_to_fd(fd) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Ok(false),
            // A file object whose `fileno()` is no longer valid (a socket closed while watched):
            // its registration is found by identity, as asyncio's selector finds it.
            Err(err) if err.is_instance_of::<PyValueError>(slf.py()) => match slf.borrow().watches.find_fileobj(fd) {
                Some(fd) => fd,
                None => return Err(err),
            },
            Err(err) => return Err(err),
        };
        LoopBase::unwatch_fd(slf, fd, side)
    }

    /// Removes (and cancels) the reader or writer of `fd`; returns whether there was one (a
    /// parked reader does not count: to Python code it is not there).
    pub(crate) fn unwatch_fd(slf: &Bound<'_, Self>, fd: RawFd, side: Side) -> PyResult<bool> {
        let py = slf.py();
        let removed = {
            let mut s = slf.borrow_mut();
            let Some(poller) = s.poller.clone() else {
                return Ok(false);
            };
            s.watches.clear(&poller, fd, side)
        };
        match removed {
            Some((handle, parked, fileobj)) => {
                drop(fileobj);
                handle.bind(py).call_method0(intern!(py, "cancel"))?;
                Ok(!parked)
            }
            None => Ok(false),
        }
    }

    /// Leaves `handle`, the reader of `fd`, registered while idle (see `fd_watch`).
    pub(crate) fn park_reader(slf: &Bound<'_, Self>, fd: RawFd, handle: &Py<Handle>) {
        slf.borrow_mut().watches.park_reader(fd, handle);
    }

    /// Takes a parked reader back into use; false if it is gone.
    pub(crate) fn resume_reader(slf: &Bound<'_, Self>, fd: RawFd, handle: &Py<Handle>) -> bool {
        slf.borrow_mut().watches.resume_reader(fd, handle)
    }

    /// The reader of `fd`, parked or not.
    pub(crate) fn reader_of(slf: &Bound<'_, Self>, fd: RawFd) -> Option<Py<Handle>> {
        let py = slf.py();
        slf.borrow().watches.reader(fd).map(|h| h.clone_ref(py))
    }
}

#[pymethods]
impl LoopBase {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let poller = Poller::new().map_err(|e| os_error(&e))?;
        Ok(LoopBase {
            ready: VecDeque::new(),
            spare: VecDeque::new(),
            timers: TimerHeap::default(),
            timer_cancels: Arc::new(AtomicUsize::new(0)),
            watches: FdWatches::default(),
            poller: Some(Arc::new(poller)),
            epoll_buf: Vec::with_capacity(256),
            readiness: Vec::with_capacity(256),
            stopping: false,
            running: false,
            closed: false,
            debug: false,
            time_overridden: false,
            call_soon_overridden: false,
            deferred_writes: Vec::new(),
            spare_writes: Vec::new(),
            slow_callback_duration: 0.1,
            thread_id: 0,
            task_factory: None,
            current_handle: None,
        })
    }

    /// Receive up to n bytes from sock (an awaitable; see `transport::sock_call`).
    fn sock_recv(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, n: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::transport::sock_call::sock_recv(slf, sock, n)
    }

    /// Send all of data to sock, waiting for the socket to drain as needed (an awaitable).
    fn sock_sendall(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::transport::sock_call::sock_sendall(slf, sock, data)
    }

    /// Return the time according to the event loop's clock (`time.monotonic()`).
    #[allow(clippy::unused_self)] // a method, as asyncio's API has it
    fn time(&self) -> f64 {
        clock::monotonic()
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        LoopBase::schedule(slf, "call_soon", callback, CallArgs::from_tuple(args), context, false)
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        LoopBase::schedule(
            slf,
            "call_soon_threadsafe",
            callback,
            CallArgs::from_tuple(args),
            context,
            true,
        )
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        // `time() + delay` with Python's own addition, so exactly the delays asyncio accepts work.
        let when = LoopBase::now(slf)?.add(delay)?.extract::<f64>()?;
        LoopBase::schedule_timer(slf, when, false, callback, args, context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let deadline = when.extract::<f64>()?;
        // An int deadline is given back as an int by `when()`, as asyncio's handle keeps the
        // object, where the float converts back to that same int (any deadline on a monotonic
        // clock does).
        #[allow(clippy::cast_possible_truncation)]
        let when_is_int =
            when.is_exact_instance_of::<PyInt>() && when.extract::<i64>().is_ok_and(|i| deadline as i64 == i);
        LoopBase::schedule_timer(slf, deadline, when_is_int, callback, args, context)
    }

    /// Watch `fd` for reading: `callback(*args)` runs on each turn it is readable. Replaces
    /// (and cancels) a previous reader; returns the new handle. The public `add_reader` (in
    /// Python) adds asyncio's check that no transport owns the fd.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        LoopBase::set_watch(slf, fd, Side::Read, callback, args)
    }

    /// Watch `fd` for writing; see `_add_reader`.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        LoopBase::set_watch(slf, fd, Side::Write, callback, args)
    }

    /// Stop watching `fd` for reading; return whether it had a reader.
    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        LoopBase::clear_watch(slf, fd, Side::Read)
    }

    /// Stop watching `fd` for writing; return whether it had a writer.
    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        LoopBase::clear_watch(slf, fd, Side::Write)
    }

    /// Whether `fd` has a reader (`Some(handle)` when it has).
    fn _get_reader(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<Option<Py<Handle>>> {
        let Some(fd) = fileobj_to_fd(fd)? else {
            return Ok(None);
        };
        Ok(self
            .watches
            .get(fd)
            .filter(|w| !w.reader_parked)
            .and_then(|w| w.reader.as_ref().map(|h| h.clone_ref(py))))
    }

    fn _get_writer(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<Option<Py<Handle>>> {
        let Some(fd) = fileobj_to_fd(fd)? else {
            return Ok(None);
        };
        Ok(self
            .watches
            .get(fd)
            .and_then(|w| w.writer.as_ref().map(|h| h.clone_ref(py))))
    }

    /// Create a Future object attached to the loop.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        LoopBase::new_future(slf)
    }

    /// Schedule a coroutine object; return a Task. Uses the task factory if one is set.
    #[pyo3(signature = (coro, *, name=None, context=None))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let factory = {
            let s = slf.borrow();
            s.check_closed()?;
            s.task_factory.as_ref().map(|f| f.clone_ref(py))
        };
        let Some(factory) = factory else {
            return LoopBase::new_task(slf, coro, name, context);
        };
        // A factory written for Python < 3.11 takes (loop, coro) only: pass context just when given.
        let task = match context.filter(|c| !c.is_none()) {
            None => factory.call1(py, (slf, coro))?,
            Some(context) => {
                let kwargs = PyDict::new(py);
                kwargs.set_item(intern!(py, "context"), context)?;
                factory.call(py, (slf, coro), Some(&kwargs))?
            }
        };
        let task = task.into_bound(py);
        if let Some(name) = name.filter(|n| !n.is_none()) {
            if task.hasattr(intern!(py, "set_name"))? {
                task.call_method1(intern!(py, "set_name"), (name,))?;
            }
        }
        Ok(task)
    }

    /// Set the factory `create_task()` uses: `factory(loop, coro[, context=...])`; None restores
    /// the default.
    fn set_task_factory(slf: &Bound<'_, Self>, factory: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let factory = factory.filter(|f| !f.is_none());
        if let Some(f) = &factory {
            if !f.is_callable() {
                return Err(PyTypeError::new_err("task factory must be a callable or None"));
            }
        }
        let previous = std::mem::replace(&mut slf.borrow_mut().task_factory, factory.map(Bound::unbind));
        // Dropped outside the borrow: a finalizer may call back into the loop.
        drop(previous);
        Ok(())
    }

    /// Return the task factory, or None if the default one is in use.
    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.task_factory.as_ref().map(|f| f.clone_ref(py))
    }

    /// Give a forked child its own poller: the epoll set and eventfd are shared with the parent
    /// after `fork()`, so registering fds in the child would change the parent's interest set.
    /// Watched fds are registered again in the new poller. Writes deferred by the callback that
    /// forked are dropped here: the parent sends them (asyncio had sent them before the fork).
    fn _reinit_after_fork(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.closed {
            return Ok(());
        }
        for core in self.deferred_writes.drain(..) {
            // Only `bytes` and copies: releasing them runs no Python code.
            drop(core.borrow_mut(py).discard_deferred());
        }
        let poller = Arc::new(Poller::new().map_err(|e| os_error(&e))?);
        // An fd closed without remove_reader() cannot be registered again; it is skipped (as it
        // would fail on its next use in the parent too), and the new poller is installed anyway.
        self.watches.register_all(&poller);
        self.poller = Some(poller);
        Ok(())
    }

    /// A handle for a callback the loop will run many times (a signal handler): tracked by the
    /// GC, keeping its callback until cancelled. Queue it with `_call_handle`.
    #[pyo3(signature = (callback, *args))]
    fn _persistent_handle(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let debug = slf.borrow().debug;
        Handle::persistent(py, callback.unbind(), CallArgs::from_tuple(args), None, debug)
    }

    /// Queue an existing handle (a signal handler's) to run on the next turn.
    fn _call_handle(&mut self, py: Python<'_>, handle: Py<Handle>) -> PyResult<()> {
        self.check_closed()?;
        // A loop-owned handle is already in a queue, whose references the loop reports to the
        // GC; queueing it twice would report them twice.
        if handle.borrow(py).is_loop_owned() {
            return Err(PyValueError::new_err(
                "_call_handle() takes handles from _persistent_handle() only",
            ));
        }
        self.ready.push_back(handle);
        Ok(())
    }

    /// Run turns until `stop()` is called. The Python subclass wraps this with asyncio's
    /// running-loop and async-generator bookkeeping.
    fn run_forever(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut s = slf.borrow_mut();
            s.check_closed()?;
            if s.running {
                return Err(PyRuntimeError::new_err("This event loop is already running"));
            }
            s.running = true;
            s.thread_id = current_thread();
        }
        let result = loop {
            if let Err(err) = core::run_once(slf) {
                break Err(err);
            }
            if slf.borrow().stopping {
                break Ok(());
            }
        };
        let mut s = slf.borrow_mut();
        s.stopping = false;
        s.running = false;
        s.thread_id = 0;
        result
    }

    /// Run one turn; used by tests and by code that steps the loop by hand.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        core::run_once(slf)
    }

    fn stop(&mut self) {
        self.stopping = true;
    }

    fn is_running(&self) -> bool {
        self.running
    }

    fn is_closed(&self) -> bool {
        self.closed
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping
    }

    #[getter]
    fn _thread_id(&self) -> Option<u64> {
        (self.thread_id != 0).then_some(self.thread_id)
    }

    #[getter]
    fn _current_handle(&self, py: Python<'_>) -> Option<Py<Handle>> {
        self.current_handle.as_ref().map(|h| h.clone_ref(py))
    }

    /// Close the loop: drop every queued callback, timer and fd watcher, and the poller.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        // Let these go outside the borrow: releasing references can run Python code.
        let (dropped, fileobjs) = {
            let mut s = slf.borrow_mut();
            if s.running {
                return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
            }
            if s.closed {
                return Ok(());
            }
            s.closed = true;
            s.poller = None;
            let mut dropped: Vec<Py<Handle>> = s.ready.drain(..).collect();
            dropped.extend(s.timers.drain());
            let (watchers, fileobjs) = s.watches.drain();
            dropped.extend(watchers);
            // Only an error that stopped a flush can leave writes here: they get one last send.
            let unflushed = std::mem::take(&mut s.deferred_writes);
            (dropped, (fileobjs, unflushed))
        };
        let_go_all(slf.py(), dropped);
        let (fileobjs, unflushed) = fileobjs;
        for core in unflushed {
            let sent = core.bind(slf.py()).borrow_mut().send_deferred_quietly();
            drop(sent);
        }
        drop(fileobjs);
        Ok(())
    }

    fn get_debug(&self) -> bool {
        self.debug
    }

    /// Whether `time()` and `call_soon()` are overridden (kept up to date by the Python class;
    /// see `time_overridden`).
    fn _set_overrides(&mut self, time: bool, call_soon: bool) {
        self.time_overridden = time;
        self.call_soon_overridden = call_soon;
    }

    fn set_debug(&mut self, enabled: &Bound<'_, PyAny>) -> PyResult<()> {
        // Any truthy value, as asyncio stores bool(enabled).
        self.debug = enabled.is_truthy()?;
        Ok(())
    }

    #[getter]
    fn get_slow_callback_duration(&self) -> f64 {
        self.slow_callback_duration
    }

    #[setter]
    fn set_slow_callback_duration(&mut self, seconds: f64) {
        self.slow_callback_duration = seconds;
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the GC traverses with the GIL held; only Rust borrow flags are read here (no
        // Python API is called), and a handle borrowed mutably right now is skipped, which only
        // under-reports (the GC then keeps more alive, never less).
        let py = unsafe { Python::assume_attached() };
        for h in self.ready.iter().chain(self.spare.iter()).chain(self.timers.iter()) {
            visit.call(h)?;
            if let Ok(handle) = h.try_borrow(py) {
                handle.visit_owned(&visit)?;
            }
        }
        visit.call(&self.task_factory)?;
        visit.call(&self.current_handle)?;
        for core in &self.deferred_writes {
            visit.call(core)?;
        }
        self.watches.traverse(&visit)
    }

    fn __clear__(&mut self, py: Python<'_>) {
        let mut dropped: Vec<Py<Handle>> = self.ready.drain(..).chain(self.spare.drain(..)).collect();
        dropped.extend(self.timers.drain());
        let (watchers, fileobjs) = self.watches.drain();
        dropped.extend(watchers);
        drop(fileobjs);
        self.task_factory = None;
        self.current_handle = None;
        self.deferred_writes.clear();
        let_go_all(py, dropped);
    }
}

/// The loop lets go of a handle it queued (run, dropped as cancelled, or the loop closed): a
/// loop-owned handle that someone else still holds becomes an ordinary GC-tracked object again,
/// with its callback and arguments back (see `Handle::owned_by_loop`). `invocation` is what
/// `take_invocation` took for a run, if any.
pub(crate) fn let_go(py: Python<'_>, handle: Py<Handle>, invocation: Option<crate::handles::Invocation>) {
    let leftover = if handle.get_refcnt(py) > 1 {
        let Ok(mut h) = handle.bind(py).try_borrow_mut() else {
            // Borrowed elsewhere right now (it cannot be, outside Python code): stay untracked,
            // which can only keep more alive.
            return;
        };
        let (track, leftover) = h.disown(invocation);
        drop(h);
        if track {
            crate::handles::set_gc_tracked(handle.bind(py).as_any(), true);
        }
        leftover
    } else {
        invocation
    };
    // Dropped after the handle's borrow ended: releasing references can run arbitrary code.
    if let Some(invocation) = leftover {
        invocation.release(py);
    }
    drop(handle.into_bound(py));
}

pub(crate) fn let_go_all(py: Python<'_>, handles: Vec<Py<Handle>>) {
    for handle in handles {
        let_go(py, handle, None);
    }
}

impl LoopBase {
    fn schedule_timer(
        slf: &Bound<'_, Self>,
        when: f64,
        when_is_int: bool,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let (debug, cancels, queued) = {
            let s = slf.borrow();
            s.check_closed()?;
            if s.debug {
                s.check_thread()?;
            }
            (s.debug, s.timer_cancels.clone(), s.timers.len())
        };
        check_callback(&callback, "call_at", debug)?;
        let timer = Handle::loop_owned_timer(
            py,
            callback.unbind(),
            CallArgs::from_tuple(args),
            context,
            debug,
            queued,
            TimerSpec {
                when,
                when_is_int,
                cancels,
            },
        )?;
        let as_handle: Py<Handle> = timer.clone().into_super().unbind();
        // asyncio's heap compares with `<`, so a NaN deadline pops at once; keep that.
        let key = if when.is_nan() { f64::NEG_INFINITY } else { when };
        slf.borrow_mut().timers.push(key, as_handle);
        Ok(timer.unbind())
    }
}
