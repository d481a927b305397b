//! The task's Python surface: its type slots, methods and attributes, each as CPython's C task
//! (3.11) defines it, over the data in `super::TaskData`.

use super::future::{self, state_name, Outcome};
use super::step::{self, cancel};
use super::{
    asyncio_base, data, data_of, future_type, name_of, next_name_number, registry, task_type, AwaitIter, Callback,
    Name, State, TaskData,
};
use crate::event_loop::LoopBase;
use crate::method_defs::{fastcall_entry, MethodDef};
use crate::native_type::slot;
use pyo3::exceptions::{PyAttributeError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyInt, PyList, PyString, PyTuple};
use std::cell::RefCell;
use std::ffi::{c_int, c_void, CStr};

const DOC: &CStr = c"Task(coro, *, loop=None, name=None, context=None)\n--\n\nasyncio's Task, run by ferroloop's loop: a coroutine wrapped in a future.";

const FUTURE_DOC: &CStr =
    c"Future(*, loop=None)\n--\n\nasyncio's Future, made by ferroloop's loop: a result that will be set later.";

/// The slot table of the task type.
pub(super) fn task_slots() -> Vec<ffi::PyType_Slot> {
    let mut slots = common_slots();
    slots.extend([
        slot(ffi::Py_tp_init, task_init as *mut c_void),
        slot(ffi::Py_tp_repr, task_repr as *mut c_void),
        slot(ffi::Py_tp_methods, MethodDef::table(&METHODS)),
        slot(ffi::Py_tp_getset, GETSETS.as_ptr().cast_mut().cast()),
        slot(ffi::Py_tp_doc, DOC.as_ptr().cast_mut().cast()),
    ]);
    slots
}

/// The slot table of the future type.
pub(super) fn future_slots() -> Vec<ffi::PyType_Slot> {
    let mut slots = common_slots();
    slots.extend([
        slot(ffi::Py_tp_init, future_init as *mut c_void),
        slot(ffi::Py_tp_repr, future_repr as *mut c_void),
        slot(ffi::Py_tp_methods, MethodDef::table(&FUTURE_METHODS)),
        slot(ffi::Py_tp_getset, FUTURE_GETSETS.as_ptr().cast_mut().cast()),
        slot(ffi::Py_tp_doc, FUTURE_DOC.as_ptr().cast_mut().cast()),
    ]);
    slots
}

fn common_slots() -> Vec<ffi::PyType_Slot> {
    vec![
        slot(ffi::Py_tp_new, task_new as *mut c_void),
        slot(ffi::Py_tp_dealloc, task_dealloc as *mut c_void),
        slot(ffi::Py_tp_traverse, task_traverse as *mut c_void),
        slot(ffi::Py_tp_clear, task_clear as *mut c_void),
        slot(ffi::Py_tp_finalize, task_finalize as *mut c_void),
        slot(ffi::Py_am_await, task_await as *mut c_void),
        slot(ffi::Py_tp_iter, task_await as *mut c_void),
    ]
}

// ---------------------------------------------------------------------------------------------
// Construction and destruction

/// Sets up a new task and queues its first step: asyncio's `Task.__init__`.
pub(super) fn initialize(
    task: &Bound<'_, PyAny>,
    loop_: &Bound<'_, PyAny>,
    native_loop: bool,
    debug: bool,
    coro: &Bound<'_, PyAny>,
    name: Option<&Bound<'_, PyAny>>,
    context: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let py = task.py();
    initialize_future(task, loop_, native_loop, debug)?;
    if !is_coroutine(coro)? {
        data(task).borrow_mut().log_destroy_pending = false;
        return Err(PyTypeError::new_err(format!(
            "a coroutine was expected, got {}",
            coro.repr()?
        )));
    }
    let context = match context.filter(|c| !c.is_none()) {
        Some(context) => context.clone(),
        // SAFETY: returns a new reference or null with an exception set.
        None => unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())? },
    };
    let name = match name.filter(|n| !n.is_none()) {
        None => Name::Number(next_name_number()),
        Some(name) => Name::Text(text_name(name)?),
    };
    {
        let mut d = data(task).borrow_mut();
        d.context = Some(context.unbind());
        d.fut_waiter = None;
        d.must_cancel = false;
        d.log_destroy_pending = true;
        d.num_cancels_requested = 0;
        d.coro = Some(coro.clone().unbind());
        d.name = Some(name);
    }
    step::schedule_step(task, None)?;
    registry::register(task)
}

/// Binds a new future (or task) to its loop: asyncio's `Future.__init__`.
pub(super) fn initialize_future(
    future: &Bound<'_, PyAny>,
    loop_: &Bound<'_, PyAny>,
    native_loop: bool,
    debug: bool,
) -> PyResult<()> {
    let py = future.py();
    let source_traceback = if debug {
        Some(
            EXTRACT_STACK
                .import(py, "traceback", "extract_stack")?
                .call0()?
                .unbind(),
        )
    } else {
        None
    };
    let mut d = data(future).borrow_mut();
    d.loop_ = Some(loop_.clone().unbind());
    d.native_loop = native_loop;
    d.source_traceback = source_traceback;
    Ok(())
}

static EXTRACT_STACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ISCOROUTINE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn is_coroutine(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    // SAFETY: a type check of a live object.
    if unsafe { ffi::PyCoro_CheckExact(obj.as_ptr()) } != 0 {
        return Ok(true);
    }
    ISCOROUTINE
        .import(obj.py(), "asyncio.coroutines", "iscoroutine")?
        .call1((obj,))?
        .is_truthy()
}

/// A name as the task keeps it: a `str` as given, anything else through `str()`.
fn text_name(name: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    if name.is_exact_instance_of::<PyString>() {
        Ok(name.clone().unbind())
    } else {
        Ok(name.str()?.into_any().unbind())
    }
}

unsafe extern "C" fn task_new(
    ty: *mut ffi::PyTypeObject,
    _args: *mut ffi::PyObject,
    _kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_new with a subtype of the task type. tp_alloc returns zeroed
    // memory of the type's size (or null with an exception set), in which the data is written
    // before anyone can see the object.
    unsafe {
        let Some(alloc) = (*ty).tp_alloc else {
            return std::ptr::null_mut();
        };
        let obj = alloc(ty, 0);
        if !obj.is_null() {
            let cell = std::ptr::from_ref(data_of(obj)).cast_mut();
            cell.write(RefCell::new(TaskData::new()));
            // An object from the free list comes back untracked (see `free_list`).
            if ffi::PyObject_GC_IsTracked(obj) == 0 {
                ffi::PyObject_GC_Track(obj.cast());
            }
        }
        obj
    }
}

unsafe extern "C" fn task_init(slf: *mut ffi::PyObject, args: *mut ffi::PyObject, kwargs: *mut ffi::PyObject) -> c_int {
    // SAFETY: CPython calls tp_init with the GIL held; `slf` is a task, `args` a tuple and
    // `kwargs` a dict or null. The trampoline's shape matches (three objects in, an int out).
    unsafe { pyo3::impl_::trampoline::setattrofunc(slf, args, kwargs, task_init_impl) }
}

unsafe fn task_init_impl(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> PyResult<c_int> {
    // SAFETY: borrowed references valid for the call (see task_init).
    let (task, ([coro], [loop_, name, context])) = unsafe {
        (
            Bound::from_borrowed_ptr(py, slf),
            init_args(py, "Task", args, kwargs, ["loop", "name", "context"])?,
        )
    };
    let loop_ = loop_or_current(py, loop_)?;
    let (native_loop, debug) = loop_mode(&loop_)?;
    initialize(
        &task,
        &loop_,
        native_loop,
        debug,
        &coro,
        name.as_ref(),
        context.as_ref(),
    )?;
    Ok(0)
}

/// What [`init_args`] returns: the positional arguments, and the keyword ones by name.
type InitArgs<'py, const P: usize, const N: usize> = ([Bound<'py, PyAny>; P], [Option<Bound<'py, PyAny>>; N]);

/// The arguments of `Type(*P positional, **keywords)` given to `tp_init`: exactly `P` positional
/// ones, and keywords among `names` (each `None` when absent).
///
/// # Safety
/// `args` must be a live tuple and `kwargs` a live dict or null, borrowed for `'py`.
unsafe fn init_args<'py, const P: usize, const N: usize>(
    py: Python<'py>,
    type_name: &str,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
    names: [&str; N],
) -> PyResult<InitArgs<'py, P, N>> {
    // SAFETY: per the contract.
    let (args, kwargs) = unsafe {
        (
            Bound::from_borrowed_ptr(py, args).cast_into::<PyTuple>()?,
            Bound::from_borrowed_ptr_or_opt(py, kwargs)
                .map(Bound::cast_into::<PyDict>)
                .transpose()?,
        )
    };
    let positional: [Bound<'py, PyAny>; P] = args.iter().collect::<Vec<_>>().try_into().map_err(|_| {
        PyTypeError::new_err(format!(
            "{type_name}() takes exactly {P} positional argument{} ({} given)",
            if P == 1 { "" } else { "s" },
            args.len()
        ))
    })?;
    let mut keywords: [Option<Bound<'py, PyAny>>; N] = std::array::from_fn(|_| None);
    for (key, value) in kwargs.iter().flat_map(PyDictMethods::iter) {
        let key = key.extract::<&str>()?;
        let Some(index) = names.iter().position(|n| *n == key) else {
            return Err(PyTypeError::new_err(format!(
                "{type_name}() got an unexpected keyword argument '{key}'"
            )));
        };
        keywords[index] = Some(value);
    }
    Ok((positional, keywords))
}

/// The loop given, or (as asyncio does when none is) the current event loop.
fn loop_or_current<'py>(py: Python<'py>, loop_: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    match loop_.filter(|l| !l.is_none()) {
        Some(loop_) => Ok(loop_),
        None => py
            .import(intern!(py, "asyncio.events"))?
            .call_method0(intern!(py, "get_event_loop")),
    }
}

unsafe extern "C" fn future_init(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> c_int {
    // SAFETY: as for task_init.
    unsafe { pyo3::impl_::trampoline::setattrofunc(slf, args, kwargs, future_init_impl) }
}

unsafe fn future_init_impl(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> PyResult<c_int> {
    // SAFETY: borrowed references valid for the call (see task_init).
    let (future, ([], [loop_])) = unsafe {
        (
            Bound::from_borrowed_ptr(py, slf),
            init_args(py, "Future", args, kwargs, ["loop"])?,
        )
    };
    let loop_ = loop_or_current(py, loop_)?;
    let (native_loop, debug) = loop_mode(&loop_)?;
    initialize_future(&future, &loop_, native_loop, debug)?;
    Ok(0)
}

/// Whether the task can queue natively on `loop_`, and whether the loop is in debug mode.
fn loop_mode(loop_: &Bound<'_, PyAny>) -> PyResult<(bool, bool)> {
    if let Ok(native) = loop_.cast::<LoopBase>() {
        let native = native.try_borrow()?;
        return Ok((native.queues_tasks_natively(), native.debug_enabled()));
    }
    let debug = loop_.call_method0(intern!(loop_.py(), "get_debug"))?.is_truthy()?;
    Ok((false, debug))
}

/// Where the instance dict sits: the asyncio base's slot for it (the only field of the base's
/// layout these types use, besides its weak-reference list).
///
/// # Safety
/// `slf` must be a live ferroloop task or future; the GIL must be held.
unsafe fn instance_dict(slf: *mut ffi::PyObject) -> Option<*mut *mut ffi::PyObject> {
    // SAFETY: per the contract (the collector and deallocation run attached).
    unsafe {
        let base = asyncio_base(Python::assume_attached(), slf);
        let offset = if base.is_null() { 0 } else { (*base).tp_dictoffset };
        (offset > 0).then(|| slf.byte_offset(offset).cast::<*mut ffi::PyObject>())
    }
}

unsafe extern "C" fn task_traverse(slf: *mut ffi::PyObject, visit: ffi::visitproc, arg: *mut c_void) -> c_int {
    // SAFETY: called by the collector on a live task. Visiting only reports references; the data
    // is skipped while mutably borrowed (reporting fewer references only keeps objects alive).
    // The base's own traverse is not called: its fields are all null but the dict, visited here.
    // The type is visited here for subclasses too: subtype_traverse leaves that to a heap base.
    unsafe {
        let ret = visit(ffi::Py_TYPE(slf).cast(), arg);
        if ret != 0 {
            return ret;
        }
        if let Some(dict) = instance_dict(slf) {
            if !(*dict).is_null() {
                let ret = visit(*dict, arg);
                if ret != 0 {
                    return ret;
                }
            }
        }
        match data_of(slf).try_borrow() {
            Ok(d) => d.visit(visit, arg),
            Err(_) => 0,
        }
    }
}

unsafe extern "C" fn task_clear(slf: *mut ffi::PyObject) -> c_int {
    // SAFETY: called by the collector (or dealloc) on a live task, with the GIL held.
    unsafe { pyo3::impl_::trampoline::inquiry(slf, task_clear_impl) }
}

#[allow(clippy::unnecessary_wraps)] // the trampoline's signature
unsafe fn task_clear_impl(py: Python<'_>, slf: *mut ffi::PyObject) -> PyResult<c_int> {
    // SAFETY: `slf` is a live task. References are dropped after the borrow ends (the
    // trampoline has the thread attached, so at once): their deallocation may run code that
    // looks at this task.
    let _ = py;
    unsafe {
        let old = match data_of(slf).try_borrow_mut() {
            Ok(mut d) => Some(std::mem::replace(&mut *d, TaskData::new())),
            Err(_) => None,
        };
        drop(old);
        clear_instance_dict(slf);
    }
    Ok(0)
}

/// Drops the instance dict (the base's slot).
///
/// # Safety
/// `slf` must be a live ferroloop task or future; the GIL must be held.
unsafe fn clear_instance_dict(slf: *mut ffi::PyObject) {
    // SAFETY: per the contract; the slot is nulled before the reference is released.
    unsafe {
        if let Some(dict) = instance_dict(slf) {
            let old = std::mem::replace(&mut *dict, std::ptr::null_mut());
            ffi::Py_XDECREF(old);
        }
    }
}

unsafe extern "C" fn task_dealloc(slf: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc once the reference count is zero, with the GIL held. The
    // finalizer may resurrect the task (then nothing is freed). For the exact type, this function
    // runs the finalizer; for subclasses made in Python, subtype_dealloc already did.
    unsafe {
        let ty = ffi::Py_TYPE(slf);
        let py = Python::assume_attached();
        let exact = ty == task_type(py) || ty == future_type(py);
        let report = data_of(slf).try_borrow().map_or(true, |d| d.needs_finalizer());
        if exact && report && ffi::PyObject_CallFinalizerFromDealloc(slf) < 0 {
            return;
        }
        ffi::PyObject_GC_UnTrack(slf.cast());
        let weaklist = (*ty).tp_weaklistoffset;
        if weaklist > 0 && !(*slf.byte_offset(weaklist).cast::<*mut ffi::PyObject>()).is_null() {
            ffi::PyObject_ClearWeakRefs(slf);
        }
        pyo3::impl_::trampoline::inquiry(slf, release_all);
        if let Some(free) = (*ty).tp_free {
            free(slf.cast());
        }
        ffi::Py_DECREF(ty.cast());
    }
}

/// Drops the data and the instance dict of a task being deallocated (attached, so references go
/// at once).
#[allow(clippy::unnecessary_wraps)] // the trampoline's signature
unsafe fn release_all(_py: Python<'_>, slf: *mut ffi::PyObject) -> PyResult<c_int> {
    // SAFETY: `slf` is a task in deallocation: nothing else can reach its data, which is dropped
    // exactly once here.
    unsafe {
        std::ptr::drop_in_place(std::ptr::from_ref(data_of(slf)).cast_mut());
        clear_instance_dict(slf);
    }
    Ok(0)
}

unsafe extern "C" fn task_finalize(slf: *mut ffi::PyObject) {
    // SAFETY: called by CPython with the GIL held on a live task. The work reports its own
    // errors as unraisable, so the trampoline never leaves an exception set.
    unsafe {
        pyo3::impl_::trampoline::inquiry(slf, task_finalize_impl);
    }
}

#[allow(clippy::unnecessary_wraps)] // the trampoline's signature
unsafe fn task_finalize_impl(py: Python<'_>, slf: *mut ffi::PyObject) -> PyResult<c_int> {
    // SAFETY: `slf` is live for the call.
    let task = unsafe { Bound::from_borrowed_ptr(py, slf) };
    let saved = PyErr::take(py);
    report_on_destruction(&task);
    if let Some(saved) = saved {
        saved.restore(py);
    }
    Ok(0)
}

/// asyncio's warnings for a task collected while pending, and for an exception nobody
/// retrieved, through the loop's exception handler.
fn report_on_destruction(task: &Bound<'_, PyAny>) {
    let py = task.py();
    let (pending, loop_, source_traceback) = {
        let d = data(task).borrow();
        (
            d.state == State::Pending && d.log_destroy_pending,
            d.loop_.as_ref().map(|l| l.clone_ref(py)),
            d.source_traceback.as_ref().map(|t| t.clone_ref(py)),
        )
    };
    let Some(loop_) = loop_ else {
        return;
    };
    let loop_ = loop_.into_bound(py);
    let report = |context: PyResult<Bound<'_, PyDict>>| {
        let outcome = context.and_then(|context| {
            if let Some(tb) = &source_traceback {
                context.set_item(intern!(py, "source_traceback"), tb)?;
            }
            loop_.call_method1(intern!(py, "call_exception_handler"), (context,))
        });
        if let Err(err) = outcome {
            err.write_unraisable(py, Some(&loop_));
        }
    };
    if pending {
        report((|| {
            let context = PyDict::new(py);
            context.set_item(intern!(py, "message"), "Task was destroyed but it is pending!")?;
            context.set_item(intern!(py, "task"), task)?;
            Ok(context)
        })());
    }
    let exception = {
        let mut d = data(task).borrow_mut();
        if std::mem::take(&mut d.log_traceback) {
            d.exception.as_ref().map(|e| e.clone_ref(py))
        } else {
            None
        }
    };
    if let Some(exception) = exception {
        report((|| {
            let context = PyDict::new(py);
            let type_name = task.get_type().name()?;
            context.set_item(
                intern!(py, "message"),
                format!("{type_name} exception was never retrieved"),
            )?;
            context.set_item(intern!(py, "exception"), exception)?;
            context.set_item(intern!(py, "future"), task)?;
            Ok(context)
        })());
    }
}

/// Defines a `tp_repr` slot that returns `module.function(self)`, as the C task and future do
/// (asyncio formats both reprs in Python).
macro_rules! repr_slot {
    ($name:ident, $module:literal, $function:literal) => {
        unsafe extern "C" fn $name(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
            static REPR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            unsafe fn inner(py: Python<'_>, slf: *mut ffi::PyObject) -> PyResult<*mut ffi::PyObject> {
                // SAFETY: borrowed for the call.
                let this = unsafe { Bound::from_borrowed_ptr(py, slf) };
                let repr = REPR.import(py, $module, $function)?;
                Ok(repr.call1((this,))?.into_ptr())
            }
            // SAFETY: CPython calls tp_repr with the GIL held on a live object.
            unsafe { pyo3::impl_::trampoline::reprfunc(slf, inner) }
        }
    };
}

repr_slot!(task_repr, "asyncio.base_tasks", "_task_repr");
repr_slot!(future_repr, "asyncio.base_futures", "_future_repr");

unsafe extern "C" fn task_await(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls am_await/tp_iter with the GIL held on a live task.
    unsafe { pyo3::impl_::trampoline::unaryfunc(slf, |py, slf| AwaitIter::create(py, slf)) }
}

// ---------------------------------------------------------------------------------------------
// Methods

/// Defines a `METH_NOARGS` entry point running `$body(task) -> PyResult<Bound>`.
macro_rules! noargs_method {
    ($name:ident, |$task:ident| $body:expr) => {
        unsafe extern "C" fn $name(slf: *mut ffi::PyObject, args: *mut ffi::PyObject) -> *mut ffi::PyObject {
            unsafe fn inner(py: Python<'_>, slf: *mut ffi::PyObject) -> PyResult<*mut ffi::PyObject> {
                // SAFETY: the method descriptor checked that `slf` is a task; borrowed for the call.
                let $task = unsafe { &Bound::from_borrowed_ptr(py, slf) };
                let result: PyResult<Bound<'_, PyAny>> = $body;
                result.map(Bound::into_ptr)
            }
            // SAFETY: called by CPython as a METH_NOARGS method with the GIL held.
            unsafe { pyo3::impl_::trampoline::noargs(slf, args, inner) }
        }
    };
}

/// Defines a `METH_O` entry point running `$body(task, arg) -> PyResult<Bound>`.
macro_rules! one_arg_method {
    ($name:ident, |$task:ident, $arg:ident| $body:expr) => {
        unsafe extern "C" fn $name(slf: *mut ffi::PyObject, arg: *mut ffi::PyObject) -> *mut ffi::PyObject {
            unsafe fn inner(
                py: Python<'_>,
                slf: *mut ffi::PyObject,
                arg: *mut ffi::PyObject,
            ) -> PyResult<*mut ffi::PyObject> {
                // SAFETY: the method descriptor checked `slf`; both are borrowed for the call.
                let ($task, $arg) = unsafe {
                    (
                        &Bound::from_borrowed_ptr(py, slf),
                        &Bound::from_borrowed_ptr(py, arg),
                    )
                };
                let result: PyResult<Bound<'_, PyAny>> = $body;
                result.map(Bound::into_ptr)
            }
            // SAFETY: called by CPython as a METH_O method with the GIL held.
            unsafe { pyo3::impl_::trampoline::binaryfunc(slf, arg, inner) }
        }
    };
}

/// Defines a `METH_FASTCALL | METH_KEYWORDS` entry point running `$body(task, params)`, where
/// `params` holds the arguments matched to `$names` (the first `$positional` may be passed by
/// position; the rest are keyword-only).
macro_rules! fastcall_method {
    ($name:ident, $pyname:literal, $names:expr, $positional:expr, |$task:ident, $params:ident| $body:expr) => {
        unsafe extern "C" fn $name(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargsf: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            unsafe fn inner(
                py: Python<'_>,
                slf: *mut ffi::PyObject,
                args: *const *mut ffi::PyObject,
                nargsf: ffi::Py_ssize_t,
                kwnames: *mut ffi::PyObject,
            ) -> PyResult<*mut ffi::PyObject> {
                // SAFETY: the method descriptor checked `slf`; the arguments are laid out as the
                // fastcall convention says, borrowed for the call.
                let ($task, $params) = unsafe {
                    (
                        &Bound::from_borrowed_ptr(py, slf),
                        parse_args(py, $pyname, args, nargsf, kwnames, &$names, $positional)?,
                    )
                };
                let result: PyResult<Bound<'_, PyAny>> = $body;
                result.map(Bound::into_ptr)
            }
            fastcall_entry!(entry => inner);
            // SAFETY: called by CPython as a METH_FASTCALL | METH_KEYWORDS method.
            unsafe { entry(slf, args, nargsf, kwnames) }
        }
    };
}

/// Matches fastcall arguments to parameter names (all optional, defaulting to `None`).
///
/// # Safety
/// `args`, `nargsf` and `kwnames` must be a fastcall argument vector, live for `'py`.
unsafe fn parse_args<'py, const N: usize>(
    py: Python<'py>,
    name: &str,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    names: &[&str; N],
    positional: usize,
) -> PyResult<[Option<Bound<'py, PyAny>>; N]> {
    let mut params: [Option<Bound<'py, PyAny>>; N] = std::array::from_fn(|_| None);
    // SAFETY: per the contract.
    unsafe {
        let nargs = usize::try_from(ffi::PyVectorcall_NARGS(nargsf as usize)).unwrap_or(0);
        if nargs > positional {
            let plural = if positional == 1 { "" } else { "s" };
            return Err(PyTypeError::new_err(format!(
                "{name}() takes at most {positional} positional argument{plural} ({nargs} given)"
            )));
        }
        for (i, param) in params.iter_mut().enumerate().take(nargs) {
            *param = Some(Bound::from_borrowed_ptr(py, *args.add(i)));
        }
        if !kwnames.is_null() {
            let kwnames = Bound::from_borrowed_ptr(py, kwnames).cast_into::<PyTuple>()?;
            for (k, key) in kwnames.iter().enumerate() {
                let key = key.extract::<&str>()?;
                let Some(index) = names.iter().position(|n| *n == key) else {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got an unexpected keyword argument '{key}'"
                    )));
                };
                if params[index].is_some() {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got multiple values for argument '{key}'"
                    )));
                }
                params[index] = Some(Bound::from_borrowed_ptr(py, *args.add(nargs + k)));
            }
        }
    }
    Ok(params)
}

fn none(py: Python<'_>) -> Bound<'_, PyAny> {
    py.None().into_bound(py)
}

fn given<'py>(param: Option<&Bound<'py, PyAny>>) -> Option<Bound<'py, PyAny>> {
    param.filter(|p| !p.is_none()).cloned()
}

noargs_method!(done, |task| Ok(PyBool::new(
    task.py(),
    data(task).borrow().state != State::Pending
)
.to_owned()
.into_any()));

noargs_method!(cancelled, |task| Ok(PyBool::new(
    task.py(),
    data(task).borrow().state == State::Cancelled
)
.to_owned()
.into_any()));

noargs_method!(result, |task| match future::outcome(task)? {
    Outcome::Value(value) => Ok(value),
    Outcome::Raised(exc) => Err(future::raise(exc)),
});

noargs_method!(exception, |task| {
    let py = task.py();
    let state = data(task).borrow().state;
    match state {
        State::Cancelled => Err(future::raise(future::make_cancelled_error(task)?)),
        State::Pending => Err(future::invalid_state(py, "Exception is not set.".to_owned())?),
        State::Finished => {
            let mut d = data(task).borrow_mut();
            match &d.exception {
                Some(exc) => {
                    let exc = exc.clone_ref(py).into_bound(py);
                    d.log_traceback = false;
                    Ok(exc)
                }
                None => Ok(none(py)),
            }
        }
    }
});

noargs_method!(get_loop, |task| {
    let py = task.py();
    Ok(data(task)
        .borrow()
        .loop_
        .as_ref()
        .map_or_else(|| none(py), |l| l.bind(py).clone()))
});

noargs_method!(get_coro, |task| {
    let py = task.py();
    Ok(data(task)
        .borrow()
        .coro
        .as_ref()
        .map_or_else(|| none(py), |c| c.bind(py).clone()))
});

noargs_method!(get_name, |task| Ok(name_of(task)));

noargs_method!(cancelling, |task| Ok(PyInt::new(
    task.py(),
    data(task).borrow().num_cancels_requested
)
.into_any()));

noargs_method!(uncancel, |task| {
    let mut d = data(task).borrow_mut();
    d.num_cancels_requested = d.num_cancels_requested.saturating_sub(1);
    Ok(PyInt::new(task.py(), d.num_cancels_requested).into_any())
});

noargs_method!(make_cancelled_error, |task| future::make_cancelled_error(task));

one_arg_method!(set_name, |task, value| {
    let name = text_name(value)?;
    data(task).borrow_mut().name = Some(Name::Text(name));
    Ok(none(task.py()))
});

one_arg_method!(set_result, |_task, _value| Err(PyRuntimeError::new_err(
    "Task does not support set_result operation"
)));

one_arg_method!(set_exception, |_task, _value| Err(PyRuntimeError::new_err(
    "Task does not support set_exception operation"
)));

one_arg_method!(wakeup, |task, fut| {
    step::wakeup(task, fut)?;
    Ok(none(task.py()))
});

one_arg_method!(remove_done_callback, |task, func| {
    let py = task.py();
    let callbacks = std::mem::take(&mut data(task).borrow_mut().callbacks).into_vec();
    let mut kept = Vec::with_capacity(callbacks.len());
    let mut removed = 0usize;
    for callback in callbacks {
        let registered = match &callback {
            Callback::Python { func, .. } => func.bind(py).clone(),
            Callback::Wakeup { task: waiter, .. } => waiter.bind(py).getattr(intern!(py, "_Task__wakeup"))?,
        };
        if registered.eq(func)? {
            removed += 1;
        } else {
            kept.push(callback);
        }
    }
    // Comparisons run Python code, which may have added callbacks meanwhile: they go after.
    let mut d = data(task).borrow_mut();
    kept.extend(std::mem::take(&mut d.callbacks));
    d.callbacks = super::Callbacks::from_vec(kept);
    Ok(PyInt::new(py, removed).into_any())
});

unsafe extern "C" fn class_getitem(cls: *mut ffi::PyObject, item: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: a METH_O | METH_CLASS method: `cls` is the class, `item` the subscript.
    unsafe { ffi::Py_GenericAlias(cls, item) }
}

one_arg_method!(future_set_result, |future, value| {
    future::set_result(future, value.clone())?;
    Ok(none(future.py()))
});

one_arg_method!(future_set_exception, |future, exc| {
    future::set_exception(future, exc.clone())?;
    Ok(none(future.py()))
});

fastcall_method!(future_cancel, "cancel", ["msg"], 1, |future, params| {
    let [msg] = params;
    Ok(PyBool::new(future.py(), future::cancel(future, given(msg.as_ref()))?)
        .to_owned()
        .into_any())
});

fastcall_method!(
    add_done_callback,
    "add_done_callback",
    ["fn", "context"],
    1,
    |task, params| {
        let py = task.py();
        let [Some(func), context] = params else {
            return Err(PyTypeError::new_err(
                "add_done_callback() missing required argument 'fn' (pos 1)",
            ));
        };
        let context = match given(context.as_ref()) {
            Some(context) => context,
            // SAFETY: returns a new reference or null with an exception set.
            None => unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())? },
        };
        future::add_done_callback(
            task,
            Callback::Python {
                func: func.unbind(),
                context: context.unbind(),
            },
        )?;
        Ok(none(py))
    }
);

fastcall_method!(cancel_method, "cancel", ["msg"], 1, |task, params| {
    let [msg] = params;
    Ok(PyBool::new(task.py(), cancel(task, given(msg.as_ref()))?)
        .to_owned()
        .into_any())
});

static GET_STACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static PRINT_STACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fastcall_method!(get_stack, "get_stack", ["limit"], 0, |task, params| {
    let py = task.py();
    let [limit] = params;
    GET_STACK
        .import(py, "asyncio.base_tasks", "_task_get_stack")?
        .call1((task, limit.unwrap_or_else(|| none(py))))
});

fastcall_method!(print_stack, "print_stack", ["limit", "file"], 0, |task, params| {
    let py = task.py();
    let [limit, file] = params;
    PRINT_STACK
        .import(py, "asyncio.base_tasks", "_task_print_stack")?
        .call1((
            task,
            limit.unwrap_or_else(|| none(py)),
            file.unwrap_or_else(|| none(py)),
        ))
});

fastcall_method!(step_method, "_Task__step", ["exc"], 1, |task, params| {
    let [exc] = params;
    step::step(task, given(exc.as_ref()))?;
    Ok(none(task.py()))
});

static METHODS: [MethodDef; 22] = [
    MethodDef::noargs(
        c"done",
        done,
        c"done($self, /)\n--\n\nReturn True if the task is done (finished or cancelled).",
    ),
    MethodDef::noargs(
        c"cancelled",
        cancelled,
        c"cancelled($self, /)\n--\n\nReturn True if the task was cancelled.",
    ),
    MethodDef::noargs(
        c"result",
        result,
        c"result($self, /)\n--\n\nReturn the result, or raise the exception or the cancellation.",
    ),
    MethodDef::noargs(
        c"exception",
        exception,
        c"exception($self, /)\n--\n\nReturn the exception the task ended with, or None.",
    ),
    MethodDef::noargs(
        c"get_loop",
        get_loop,
        c"get_loop($self, /)\n--\n\nReturn the event loop the task is bound to.",
    ),
    MethodDef::noargs(
        c"get_coro",
        get_coro,
        c"get_coro($self, /)\n--\n\nReturn the coroutine the task wraps.",
    ),
    MethodDef::noargs(
        c"get_name",
        get_name,
        c"get_name($self, /)\n--\n\nReturn the task's name.",
    ),
    MethodDef::noargs(
        c"cancelling",
        cancelling,
        c"cancelling($self, /)\n--\n\nReturn the number of pending cancellation requests.",
    ),
    MethodDef::noargs(
        c"uncancel",
        uncancel,
        c"uncancel($self, /)\n--\n\nDecrement the count of cancellation requests and return it.",
    ),
    MethodDef::noargs(
        c"_make_cancelled_error",
        make_cancelled_error,
        c"Return the CancelledError to raise for this task.",
    ),
    MethodDef::one_arg(
        c"set_name",
        set_name,
        c"set_name($self, value, /)\n--\n\nSet the task's name (str(value) unless a str).",
        false,
    ),
    MethodDef::one_arg(
        c"set_result",
        set_result,
        c"set_result($self, result, /)\n--\n\nTasks do not support it: raises RuntimeError.",
        false,
    ),
    MethodDef::one_arg(
        c"set_exception",
        set_exception,
        c"set_exception($self, exception, /)\n--\n\nTasks do not support it: raises RuntimeError.",
        false,
    ),
    MethodDef::one_arg(
        c"remove_done_callback",
        remove_done_callback,
        c"remove_done_callback($self, fn, /)\n--\n\nRemove every registration of fn; return how many there were.",
        false,
    ),
    MethodDef::one_arg(
        c"_Task__wakeup",
        wakeup,
        c"Resume the task now that the future it waited for is done.",
        false,
    ),
    MethodDef::one_arg(c"__class_getitem__", class_getitem, c"See PEP 585.", true),
    MethodDef::fastcall(
        c"add_done_callback",
        add_done_callback,
        c"add_done_callback($self, fn, /, *, context=None)\n--\n\nRun fn(task) in context once the task is done.",
    ),
    MethodDef::fastcall(
        c"cancel",
        cancel_method,
        c"cancel($self, /, msg=None)\n--\n\nRequest that the task be cancelled.",
    ),
    MethodDef::fastcall(
        c"get_stack",
        get_stack,
        c"get_stack($self, /, *, limit=None)\n--\n\nReturn the list of stack frames of the task's coroutine.",
    ),
    MethodDef::fastcall(
        c"print_stack",
        print_stack,
        c"print_stack($self, /, *, limit=None, file=None)\n--\n\nPrint the stack or traceback of the task.",
    ),
    MethodDef::fastcall(
        c"_Task__step",
        step_method,
        c"Run one step of the task's coroutine (throwing exc into it, if given).",
    ),
    MethodDef::END,
];

static FUTURE_METHODS: [MethodDef; 13] = [
    MethodDef::noargs(
        c"done",
        done,
        c"done($self, /)\n--\n\nReturn True if the future is done (finished or cancelled).",
    ),
    MethodDef::noargs(
        c"cancelled",
        cancelled,
        c"cancelled($self, /)\n--\n\nReturn True if the future was cancelled.",
    ),
    MethodDef::noargs(
        c"result",
        result,
        c"result($self, /)\n--\n\nReturn the result, or raise the exception or the cancellation.",
    ),
    MethodDef::noargs(
        c"exception",
        exception,
        c"exception($self, /)\n--\n\nReturn the exception set on the future, or None.",
    ),
    MethodDef::noargs(
        c"get_loop",
        get_loop,
        c"get_loop($self, /)\n--\n\nReturn the event loop the future is bound to.",
    ),
    MethodDef::noargs(
        c"_make_cancelled_error",
        make_cancelled_error,
        c"Return the CancelledError to raise for this future.",
    ),
    MethodDef::one_arg(
        c"set_result",
        future_set_result,
        c"set_result($self, result, /)\n--\n\nMark the future done with this result.",
        false,
    ),
    MethodDef::one_arg(
        c"set_exception",
        future_set_exception,
        c"set_exception($self, exception, /)\n--\n\nMark the future done with this exception.",
        false,
    ),
    MethodDef::one_arg(
        c"remove_done_callback",
        remove_done_callback,
        c"remove_done_callback($self, fn, /)\n--\n\nRemove every registration of fn; return how many there were.",
        false,
    ),
    MethodDef::one_arg(c"__class_getitem__", class_getitem, c"See PEP 585.", true),
    MethodDef::fastcall(
        c"add_done_callback",
        add_done_callback,
        c"add_done_callback($self, fn, /, *, context=None)\n--\n\nRun fn(future) in context once the future is done.",
    ),
    MethodDef::fastcall(
        c"cancel",
        future_cancel,
        c"cancel($self, /, msg=None)\n--\n\nCancel the future and schedule its callbacks.",
    ),
    MethodDef::END,
];

// ---------------------------------------------------------------------------------------------
// Attributes

/// A `PyGetSetDef` in a `static` table (see `MethodDef`).
#[repr(transparent)]
struct GetSetDef(ffi::PyGetSetDef);

// SAFETY: immutable, pointing only to static strings and functions.
unsafe impl Sync for GetSetDef {}

impl GetSetDef {
    const fn new(name: &'static CStr, get: ffi::getter, set: Option<ffi::setter>) -> Self {
        GetSetDef(ffi::PyGetSetDef {
            name: name.as_ptr(),
            get: Some(get),
            set,
            doc: std::ptr::null(),
            closure: std::ptr::null_mut(),
        })
    }

    const END: Self = GetSetDef(ffi::PyGetSetDef {
        name: std::ptr::null(),
        get: None,
        set: None,
        doc: std::ptr::null(),
        closure: std::ptr::null_mut(),
    });
}

/// Defines a getter running `$body(task) -> PyResult<Bound>`.
macro_rules! getter {
    ($name:ident, |$task:ident| $body:expr) => {
        unsafe extern "C" fn $name(slf: *mut ffi::PyObject, closure: *mut c_void) -> *mut ffi::PyObject {
            unsafe fn inner(
                py: Python<'_>,
                slf: *mut ffi::PyObject,
                _closure: *mut ffi::PyObject,
            ) -> PyResult<*mut ffi::PyObject> {
                // SAFETY: the getset descriptor checked that `slf` is a task; borrowed for the call.
                let $task = unsafe { &Bound::from_borrowed_ptr(py, slf) };
                let result: PyResult<Bound<'_, PyAny>> = $body;
                result.map(Bound::into_ptr)
            }
            // SAFETY: called by CPython as a getter with the GIL held; the closure is unused.
            unsafe { pyo3::impl_::trampoline::binaryfunc(slf, closure.cast(), inner) }
        }
    };
}

/// Defines a setter running `$body(task, value: Option<&Bound>) -> PyResult<()>` (`None`: delete).
macro_rules! setter {
    ($name:ident, |$task:ident, $value:ident| $body:expr) => {
        unsafe extern "C" fn $name(slf: *mut ffi::PyObject, value: *mut ffi::PyObject, closure: *mut c_void) -> c_int {
            unsafe fn inner(
                py: Python<'_>,
                slf: *mut ffi::PyObject,
                value: *mut ffi::PyObject,
                _closure: *mut ffi::PyObject,
            ) -> PyResult<c_int> {
                // SAFETY: as for getters; `value` is borrowed or null (deletion).
                let ($task, $value) = unsafe {
                    (
                        &Bound::from_borrowed_ptr(py, slf),
                        Bound::from_borrowed_ptr_or_opt(py, value),
                    )
                };
                let result: PyResult<()> = $body;
                result.map(|()| 0)
            }
            // SAFETY: called by CPython as a setter with the GIL held.
            unsafe { pyo3::impl_::trampoline::setattrofunc(slf, value, closure.cast(), inner) }
        }
    };
}

fn optional<'py>(py: Python<'py>, obj: Option<&Py<PyAny>>) -> Bound<'py, PyAny> {
    obj.map_or_else(|| none(py), |o| o.bind(py).clone())
}

fn truthy(value: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
    value
        .ok_or_else(|| PyAttributeError::new_err("cannot delete attribute"))?
        .is_truthy()
}

getter!(get_state, |task| Ok(PyString::new(
    task.py(),
    state_name(data(task).borrow().state)
)
.into_any()));
getter!(get_blocking, |task| Ok(PyBool::new(
    task.py(),
    data(task).borrow().blocking
)
.to_owned()
.into_any()));
setter!(set_blocking, |task, value| {
    let blocking = truthy(value.as_ref())?;
    data(task).borrow_mut().blocking = blocking;
    Ok(())
});
getter!(get_loop_attr, |task| Ok(optional(
    task.py(),
    data(task).borrow().loop_.as_ref()
)));
getter!(get_callbacks, |task| {
    let py = task.py();
    let entries: Vec<(Py<PyAny>, Py<PyAny>, bool)> = data(task)
        .borrow()
        .callbacks
        .iter()
        .map(|c| match c {
            Callback::Python { func, context } => (func.clone_ref(py), context.clone_ref(py), false),
            Callback::Wakeup { task, context } => (task.clone_ref(py), context.clone_ref(py), true),
        })
        .collect();
    callbacks_list(py, entries)
});

/// `_callbacks`: `None` when empty (as CPython's C future), else `[(callback, context), ...]`.
fn callbacks_list(py: Python<'_>, entries: Vec<(Py<PyAny>, Py<PyAny>, bool)>) -> PyResult<Bound<'_, PyAny>> {
    if entries.is_empty() {
        return Ok(none(py));
    }
    let list = PyList::empty(py);
    for (target, context, wakeup) in entries {
        let func = if wakeup {
            target.bind(py).getattr(intern!(py, "_Task__wakeup"))?
        } else {
            target.into_bound(py)
        };
        list.append((func, context))?;
    }
    Ok(list.into_any())
}
getter!(get_result_attr, |task| Ok(optional(
    task.py(),
    data(task).borrow().result.as_ref()
)));
getter!(get_exception_attr, |task| Ok(optional(
    task.py(),
    data(task).borrow().exception.as_ref()
)));
getter!(get_log_traceback, |task| Ok(PyBool::new(
    task.py(),
    data(task).borrow().log_traceback
)
.to_owned()
.into_any()));
setter!(set_log_traceback, |task, value| {
    if truthy(value.as_ref())? {
        return Err(PyValueError::new_err("_log_traceback can only be set to False"));
    }
    data(task).borrow_mut().log_traceback = false;
    Ok(())
});
getter!(get_source_traceback, |task| Ok(optional(
    task.py(),
    data(task).borrow().source_traceback.as_ref()
)));
getter!(get_cancel_message, |task| Ok(optional(
    task.py(),
    data(task).borrow().cancel_message.as_ref()
)));
setter!(set_cancel_message, |task, value| {
    data(task).borrow_mut().cancel_message = value.map(Bound::unbind);
    Ok(())
});
getter!(get_log_destroy_pending, |task| Ok(PyBool::new(
    task.py(),
    data(task).borrow().log_destroy_pending
)
.to_owned()
.into_any()));
setter!(set_log_destroy_pending, |task, value| {
    let flag = truthy(value.as_ref())?;
    data(task).borrow_mut().log_destroy_pending = flag;
    Ok(())
});
getter!(get_must_cancel, |task| Ok(PyBool::new(
    task.py(),
    data(task).borrow().must_cancel
)
.to_owned()
.into_any()));
getter!(get_coro_attr, |task| Ok(optional(
    task.py(),
    data(task).borrow().coro.as_ref()
)));
getter!(get_fut_waiter, |task| Ok(optional(
    task.py(),
    data(task).borrow().fut_waiter.as_ref()
)));

static FUTURE_GETSETS: [GetSetDef; 10] = [
    GetSetDef::new(c"_state", get_state, None),
    GetSetDef::new(c"_asyncio_future_blocking", get_blocking, Some(set_blocking)),
    GetSetDef::new(c"_loop", get_loop_attr, None),
    GetSetDef::new(c"_callbacks", get_callbacks, None),
    GetSetDef::new(c"_result", get_result_attr, None),
    GetSetDef::new(c"_exception", get_exception_attr, None),
    GetSetDef::new(c"_log_traceback", get_log_traceback, Some(set_log_traceback)),
    GetSetDef::new(c"_source_traceback", get_source_traceback, None),
    GetSetDef::new(c"_cancel_message", get_cancel_message, Some(set_cancel_message)),
    GetSetDef::END,
];

static GETSETS: [GetSetDef; 14] = [
    GetSetDef::new(c"_state", get_state, None),
    GetSetDef::new(c"_asyncio_future_blocking", get_blocking, Some(set_blocking)),
    GetSetDef::new(c"_loop", get_loop_attr, None),
    GetSetDef::new(c"_callbacks", get_callbacks, None),
    GetSetDef::new(c"_result", get_result_attr, None),
    GetSetDef::new(c"_exception", get_exception_attr, None),
    GetSetDef::new(c"_log_traceback", get_log_traceback, Some(set_log_traceback)),
    GetSetDef::new(c"_source_traceback", get_source_traceback, None),
    GetSetDef::new(c"_cancel_message", get_cancel_message, Some(set_cancel_message)),
    GetSetDef::new(
        c"_log_destroy_pending",
        get_log_destroy_pending,
        Some(set_log_destroy_pending),
    ),
    GetSetDef::new(c"_must_cancel", get_must_cancel, None),
    GetSetDef::new(c"_coro", get_coro_attr, None),
    GetSetDef::new(c"_fut_waiter", get_fut_waiter, None),
    GetSetDef::END,
];
