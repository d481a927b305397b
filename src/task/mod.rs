//! ferroloop's `Task`: asyncio's task, in Rust, stepping straight out of the loop's ready queue.
//!
//! Why not CPython's C `Task` (3.11): per task it formats a `Task-N` name, registers itself in
//! `asyncio.tasks._all_tasks` through `WeakSet.add` (Python code) and is unregistered by the
//! `WeakSet`'s Python callback when it dies, and every step goes through a wrapper object and a
//! `loop.call_soon(...)` method call that builds a handle. Here a step is a handle whose target is
//! the task itself, queued by the loop without a call, the name is formatted when someone asks
//! for it, and registration is native (see `registry`).
//!
//! The type derives from `asyncio.Task`, so `isinstance(task, asyncio.Task)` (and
//! `asyncio.Future`) holds, as code such as `asyncio.wrap_future` requires. None of the base's C
//! state is used: its fields stay zeroed and every method and attribute the base defines is
//! overridden here (a test checks that), so `_asyncio`'s C code never reads them either (its fast
//! paths test for its own types exactly). The instance dict and weak references are the base's.
//!
//! Semantics follow CPython's C task of the running version, which ferroloop used before, down to
//! its messages; `tests/test_tasks_futures.py` runs the same checks on both loops.

mod api;
mod await_iter;
mod future;
mod registry;
mod step;

use crate::native_type;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyType};
use std::cell::RefCell;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub(crate) use await_iter::AwaitIter;

/// A future's state, as asyncio's `_state` strings.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Pending,
    Cancelled,
    Finished,
}

/// A done callback: a Python callable run as `callback(task)` in `context`, or the wake-up of
/// another ferroloop task waiting for this one (run in that task's context), kept without a
/// bound-method object.
pub(crate) enum Callback {
    Python { func: Py<PyAny>, context: Py<PyAny> },
    Wakeup { task: Py<PyAny>, context: Py<PyAny> },
}

/// A future's done callbacks, in order. Most futures get exactly one (the task awaiting it, or
/// `gather`'s), kept inline: a vector is allocated only for a second one.
#[derive(Default)]
pub(crate) struct Callbacks {
    first: Option<Callback>,
    rest: Vec<Callback>,
}

impl Callbacks {
    pub fn push(&mut self, callback: Callback) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(callback);
        } else {
            self.rest.push(callback);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Callback> {
        self.first.iter().chain(&self.rest)
    }

    pub fn into_vec(self) -> Vec<Callback> {
        let mut all = Vec::with_capacity(usize::from(self.first.is_some()) + self.rest.len());
        all.extend(self.first);
        all.extend(self.rest);
        all
    }

    pub fn from_vec(mut all: Vec<Callback>) -> Self {
        let first = (!all.is_empty()).then(|| all.remove(0));
        Callbacks { first, rest: all }
    }
}

impl IntoIterator for Callbacks {
    type Item = Callback;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Callback>, std::vec::IntoIter<Callback>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// The task's name: `Task-N` until someone asks, or what `name=`/`set_name()` gave.
pub(crate) enum Name {
    Number(u64),
    Text(Py<PyAny>),
}

/// Everything a task holds, after the base type's (unused) fields. Fields mirror those of
/// CPython's `TaskObj`.
#[allow(clippy::struct_excessive_bools)] // CPython's flags, one for one
pub(crate) struct TaskData {
    pub loop_: Option<Py<PyAny>>,
    /// The loop is ferroloop's and its `call_soon` is not replaced: steps and callbacks are
    /// queued natively.
    pub native_loop: bool,
    pub state: State,
    pub result: Option<Py<PyAny>>,
    pub exception: Option<Py<PyAny>>,
    pub exception_tb: Option<Py<PyAny>>,
    pub callbacks: Callbacks,
    /// `_asyncio_future_blocking`.
    pub blocking: bool,
    /// `_log_traceback`: an exception was set and nobody retrieved it yet.
    pub log_traceback: bool,
    pub cancel_message: Option<Py<PyAny>>,
    /// The `CancelledError` the coroutine raised, kept for `_make_cancelled_error()`.
    pub cancelled_exc: Option<Py<PyAny>>,
    pub source_traceback: Option<Py<PyAny>>,
    pub coro: Option<Py<PyAny>>,
    pub context: Option<Py<PyAny>>,
    pub name: Option<Name>,
    pub fut_waiter: Option<Py<PyAny>>,
    pub must_cancel: bool,
    pub log_destroy_pending: bool,
    pub num_cancels_requested: u64,
}

impl TaskData {
    const fn new() -> Self {
        TaskData {
            loop_: None,
            native_loop: false,
            state: State::Pending,
            result: None,
            exception: None,
            exception_tb: None,
            callbacks: Callbacks {
                first: None,
                rest: Vec::new(),
            },
            blocking: false,
            log_traceback: false,
            cancel_message: None,
            cancelled_exc: None,
            source_traceback: None,
            coro: None,
            context: None,
            name: None,
            fut_waiter: None,
            must_cancel: false,
            log_destroy_pending: false,
            num_cancels_requested: 0,
        }
    }

    /// Whether the finalizer has something to report: a pending task that should not have been
    /// dropped, or an exception nobody retrieved.
    fn needs_finalizer(&self) -> bool {
        self.log_traceback || (self.state == State::Pending && self.log_destroy_pending)
    }

    /// Reports each reference to the collector (`tp_traverse`); written out field by field, as this
    /// runs for every live task in each collection that reaches it.
    fn visit(&self, visit: ffi::visitproc, arg: *mut std::ffi::c_void) -> c_int {
        macro_rules! visit {
            ($obj:expr) => {
                // SAFETY: `visit` and `arg` come from the collector's tp_traverse call; the
                // object is a live reference this task owns.
                let ret = unsafe { visit($obj.as_ptr(), arg) };
                if ret != 0 {
                    return ret;
                }
            };
        }
        for field in [
            &self.loop_,
            &self.result,
            &self.exception,
            &self.exception_tb,
            &self.cancel_message,
            &self.cancelled_exc,
            &self.source_traceback,
            &self.coro,
            &self.context,
            &self.fut_waiter,
        ]
        .into_iter()
        .flatten()
        {
            visit!(field);
        }
        if let Some(Name::Text(name)) = &self.name {
            visit!(name);
        }
        for callback in self.callbacks.iter() {
            let (target, context) = match callback {
                Callback::Python { func, context } => (func, context),
                Callback::Wakeup { task, context } => (task, context),
            };
            visit!(target);
            visit!(context);
        }
        0
    }
}

static TASK_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static FUTURE_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
/// `asyncio.Task` and `asyncio.Future`, the bases of the two.
static TASK_BASE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static FUTURE_BASE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
/// Where `TaskData` sits in an instance (see `native_type::data_offset`); set once, before any
/// instance exists.
static DATA_OFFSET: AtomicUsize = AtomicUsize::new(0);
/// The `N` of the next `Task-N` name, shared by all loops like CPython's counter.
static NAME_COUNTER: AtomicU64 = AtomicU64::new(1);

fn type_ptr(py: Python<'_>, cell: &PyOnceLock<Py<PyType>>) -> *mut ffi::PyTypeObject {
    cell.get(py).map_or(std::ptr::null_mut(), |t| t.bind(py).as_type_ptr())
}

/// The task type, once the module is initialised.
pub(crate) fn task_type(py: Python<'_>) -> *mut ffi::PyTypeObject {
    type_ptr(py, &TASK_TYPE)
}

/// The future type, once the module is initialised.
pub(crate) fn future_type(py: Python<'_>) -> *mut ffi::PyTypeObject {
    type_ptr(py, &FUTURE_TYPE)
}

fn instance_of(obj: &Bound<'_, PyAny>, ty: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: a live object and a live type.
    !ty.is_null() && unsafe { ffi::PyObject_TypeCheck(obj.as_ptr(), ty) } != 0
}

/// Whether `obj` is a ferroloop task (or an instance of a subclass of it).
pub(crate) fn is_task(obj: &Bound<'_, PyAny>) -> bool {
    instance_of(obj, task_type(obj.py()))
}

/// Whether `obj` is a ferroloop task or future (or a subclass's instance): it has `TaskData`.
pub(crate) fn is_native(obj: &Bound<'_, PyAny>) -> bool {
    is_task(obj) || instance_of(obj, future_type(obj.py()))
}

/// Whether `obj` is exactly a ferroloop task or future: the fast paths skip methods a subclass
/// could override, as CPython's skip them for its exact types only.
pub(crate) fn is_exact_native(obj: &Bound<'_, PyAny>) -> bool {
    let py = obj.py();
    // SAFETY: reading the type of a live object.
    let ty = unsafe { ffi::Py_TYPE(obj.as_ptr()) };
    ty == task_type(py) || ty == future_type(py)
}

/// The asyncio type a ferroloop task or future derives from (its C layout's owner).
///
/// # Safety
/// `obj` must be a live ferroloop task or future.
pub(crate) unsafe fn asyncio_base(py: Python<'_>, obj: *mut ffi::PyObject) -> *mut ffi::PyTypeObject {
    // SAFETY: per the contract.
    if unsafe { ffi::PyObject_TypeCheck(obj, task_type(py)) } != 0 {
        type_ptr(py, &TASK_BASE)
    } else {
        type_ptr(py, &FUTURE_BASE)
    }
}

/// The data of a ferroloop task.
///
/// # Safety
/// `obj` must be a live instance of the task type (or a subclass), kept alive by the caller for
/// the returned lifetime.
pub(crate) unsafe fn data_of<'a>(obj: *mut ffi::PyObject) -> &'a RefCell<TaskData> {
    let offset = DATA_OFFSET.load(Ordering::Relaxed);
    debug_assert!(offset > 0, "task types initialised before any instance exists");
    // SAFETY: per the contract, `obj` is an instance whose layout has a `RefCell<TaskData>` at
    // `offset`, written by `tp_new` and live until `tp_dealloc`.
    unsafe { &*obj.byte_add(offset).cast::<RefCell<TaskData>>() }
}

/// The data of `task`, which the caller checked is a ferroloop task or future.
pub(crate) fn data<'a>(task: &'a Bound<'_, PyAny>) -> &'a RefCell<TaskData> {
    debug_assert!(is_native(task));
    // SAFETY: `task` is a task (the caller's check) and the borrow keeps it alive.
    unsafe { data_of(task.as_ptr()) }
}

/// Whether the loop makes ferroloop's tasks and futures: on CPython 3.11, the version whose
/// `_asyncio` layout and semantics these types were built and tested against. Elsewhere the loop
/// makes asyncio's own (3.12 already formats names lazily and drops the `WeakSet` registration).
pub(crate) fn available(py: Python<'_>) -> bool {
    TASK_TYPE.get(py).is_some()
}

/// Creates the types and adds them to the module as `Task` and `Future` (on CPython 3.11; see
/// [`available`]).
pub(crate) fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let version = py.version_info();
    if (version.major, version.minor) != (3, 11) {
        return Ok(());
    }
    let asyncio = py.import("asyncio")?;
    let task_base = asyncio.getattr("Task")?.cast_into::<PyType>()?;
    let future_base = asyncio.getattr("Future")?.cast_into::<PyType>()?;
    // One offset for both, past the larger base (the task's), so the data is found the same way
    // in either.
    let offset = native_type::data_offset::<RefCell<TaskData>>(&task_base)
        .max(native_type::data_offset::<RefCell<TaskData>>(&future_base));
    DATA_OFFSET.store(offset, Ordering::Relaxed);
    let basicsize = offset + std::mem::size_of::<RefCell<TaskData>>();
    let flags = ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_BASETYPE | ffi::Py_TPFLAGS_HAVE_GC;
    let task = native_type::build(
        py,
        c"ferroloop._ferroloop.Task",
        Some(&task_base),
        basicsize,
        flags,
        api::task_slots(),
    )?;
    let future = native_type::build(
        py,
        c"ferroloop._ferroloop.Future",
        Some(&future_base),
        basicsize,
        flags,
        api::future_slots(),
    )?;
    // No free lists for these two: CPython marks an object whose finalizer ran in its GC
    // header, and a recycled object would keep the mark, silencing its own finalizer.
    m.add("Task", task.bind(py))?;
    m.add("Future", future.bind(py))?;
    let _ = TASK_BASE.set(py, task_base.unbind());
    let _ = FUTURE_BASE.set(py, future_base.unbind());
    let _ = TASK_TYPE.set(py, task);
    let _ = FUTURE_TYPE.set(py, future);
    await_iter::init(m)?;
    Ok(())
}

fn new_instance(py: Python<'_>, ty: *mut ffi::PyTypeObject) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: `ty` is one of our types, whose tp_new ignores its arguments and returns a new
    // instance or null with an exception set.
    unsafe {
        let new = (*ty).tp_new.expect("our types have tp_new");
        Bound::from_owned_ptr_or_err(py, new(ty, std::ptr::null_mut(), std::ptr::null_mut()))
    }
}

/// A new pending future of the loop `loop_`: what `loop.create_future()` makes.
pub(crate) fn create_future<'py>(
    loop_: &Bound<'py, PyAny>,
    native_loop: bool,
    debug: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let future = new_instance(loop_.py(), future_type(loop_.py()))?;
    api::initialize_future(&future, loop_, native_loop, debug)?;
    Ok(future)
}

/// A new task of the loop `loop_` running `coro`, scheduled to take its first step: what
/// `loop.create_task(coro, name=name, context=context)` makes.
pub(crate) fn create<'py>(
    loop_: &Bound<'py, PyAny>,
    native_loop: bool,
    debug: bool,
    coro: &Bound<'py, PyAny>,
    name: Option<&Bound<'py, PyAny>>,
    context: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let task = new_instance(loop_.py(), task_type(loop_.py()))?;
    api::initialize(&task, loop_, native_loop, debug, coro, name, context)?;
    Ok(task)
}

/// The next `Task-N` number.
fn next_name_number() -> u64 {
    NAME_COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// The task's name as a string, formatting (and keeping) a `Task-N` name on first use.
pub(crate) fn name_of<'py>(task: &Bound<'py, PyAny>) -> Bound<'py, PyAny> {
    let py = task.py();
    let cell = data(task);
    let number = match &cell.borrow().name {
        Some(Name::Text(name)) => return name.bind(py).clone(),
        Some(Name::Number(n)) => *n,
        None => return PyString::new(py, "").into_any(),
    };
    let name = PyString::new(py, &format!("Task-{number}")).into_any();
    cell.borrow_mut().name = Some(Name::Text(name.clone().unbind()));
    name
}
