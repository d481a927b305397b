//! The iterator `await task` drives (asyncio's `FutureIter`): it yields the task while it is
//! pending, which tells the awaiting task's step what to wait for, and then returns its result.
//!
//! It implements `am_send`, so an awaiting coroutine gets the result without a `StopIteration`
//! being raised and caught, as with CPython's own future iterator.

use super::future::{self, Outcome};
use super::{data, State};
use crate::method_defs::{fastcall_entry, MethodDef};
use crate::native_type::{self, slot, PY_AM_SEND};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use std::ffi::{c_int, c_void};

#[repr(C)]
struct IterObject {
    ob_base: ffi::PyObject,
    /// The task, until the iterator has returned its result (or was closed); owned.
    task: *mut ffi::PyObject,
}

static ITER_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

pub(super) fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let slots = vec![
        slot(ffi::Py_tp_dealloc, iter_dealloc as *mut c_void),
        slot(ffi::Py_tp_traverse, iter_traverse as *mut c_void),
        slot(ffi::Py_tp_clear, iter_clear as *mut c_void),
        slot(ffi::Py_tp_iter, ffi::PyObject_SelfIter as *mut c_void),
        slot(ffi::Py_tp_iternext, iter_next as *mut c_void),
        slot(PY_AM_SEND, iter_send_slot as *mut c_void),
        slot(ffi::Py_tp_methods, MethodDef::table(&METHODS)),
    ];
    let ty = native_type::build(
        py,
        c"ferroloop._ferroloop.TaskIter",
        None,
        std::mem::size_of::<IterObject>(),
        ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_HAVE_GC | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION,
        slots,
    )?;
    // SAFETY: GIL held; a GC heap type freed with PyObject_GC_Del, whose instances are set up
    // and tracked by `AwaitIter::create`.
    unsafe { crate::free_list::install_raw::<{ crate::free_list::TASK_ITER }>(ty.bind(py).as_type_ptr()) };
    let _ = ITER_TYPE.set(py, ty);
    Ok(())
}

pub(crate) struct AwaitIter;

impl AwaitIter {
    /// A new iterator over `task` (a ferroloop task), as a new reference.
    ///
    /// # Safety
    /// `task` must be a live ferroloop task.
    pub(crate) unsafe fn create(py: Python<'_>, task: *mut ffi::PyObject) -> PyResult<*mut ffi::PyObject> {
        let ty = ITER_TYPE
            .get(py)
            .ok_or_else(|| PyRuntimeError::new_err("ferroloop's task iterator type is not initialised"))?
            .bind(py)
            .as_type_ptr();
        // SAFETY: tp_alloc of our GC type returns a zeroed, tracked instance or null with an
        // exception set; the task pointer is live per the contract and gets its own reference.
        unsafe {
            let alloc = (*ty).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
            let obj = alloc(ty, 0);
            if obj.is_null() {
                return Err(PyErr::fetch(py));
            }
            ffi::Py_INCREF(task);
            (*obj.cast::<IterObject>()).task = task;
            // An object from the free list comes back untracked (see `free_list`).
            if ffi::PyObject_GC_IsTracked(obj) == 0 {
                ffi::PyObject_GC_Track(obj.cast());
            }
            Ok(obj)
        }
    }
}

/// One move of the iterator.
enum Move<'py> {
    /// The task is pending: yield it to the awaiting task's step.
    Yield(Bound<'py, PyAny>),
    /// The task is done: its result.
    Return(Bound<'py, PyAny>),
    /// Already returned or closed.
    Exhausted,
}

/// # Safety
/// `it` must be a live iterator object.
unsafe fn advance(py: Python<'_>, it: *mut ffi::PyObject) -> PyResult<Move<'_>> {
    // SAFETY: per the contract; the task pointer is owned by the iterator while non-null.
    unsafe {
        let it = it.cast::<IterObject>();
        if (*it).task.is_null() {
            return Ok(Move::Exhausted);
        }
        let task = Bound::from_borrowed_ptr(py, (*it).task);
        {
            let mut d = data(&task).borrow_mut();
            if d.state == State::Pending {
                if d.blocking {
                    return Err(PyRuntimeError::new_err("await wasn't used with future"));
                }
                d.blocking = true;
                drop(d);
                return Ok(Move::Yield(task));
            }
        }
        // Done: the iterator lets go of the task and hands out its outcome.
        let task = Bound::from_owned_ptr(py, std::mem::replace(&mut (*it).task, std::ptr::null_mut()));
        match future::outcome(&task)? {
            Outcome::Value(value) => Ok(Move::Return(value)),
            Outcome::Raised(exc) => Err(future::raise(exc)),
        }
    }
}

/// Raises `StopIteration(value)` the cheap way where CPython allows it (the value itself as the
/// exception's argument, instantiated only if someone looks), as `_PyGen_SetStopIterationValue`.
fn set_stop_iteration(value: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = value.py();
    // SAFETY: type checks and raising with live objects.
    unsafe {
        let stop = ffi::PyExc_StopIteration;
        if ffi::PyTuple_Check(value.as_ptr()) == 0 && ffi::PyExceptionInstance_Check(value.as_ptr()) == 0 {
            ffi::PyErr_SetObject(stop, value.as_ptr());
        } else {
            let exc = Bound::from_owned_ptr_or_err(py, ffi::PyObject_CallOneArg(stop, value.as_ptr()))?;
            ffi::PyErr_SetObject(stop, exc.as_ptr());
        }
    }
    Ok(())
}

unsafe extern "C" fn iter_next(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_iternext with the GIL held on a live iterator.
    unsafe { pyo3::impl_::trampoline::iternextfunc(slf, iter_next_impl) }
}

unsafe fn iter_next_impl(py: Python<'_>, slf: *mut ffi::PyObject) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: see iter_next. A null return without an exception ends the iteration with None.
    match unsafe { advance(py, slf)? } {
        Move::Yield(task) => Ok(task.into_ptr()),
        Move::Return(value) if value.is_none() => Ok(std::ptr::null_mut()),
        Move::Return(value) => {
            set_stop_iteration(&value)?;
            Ok(std::ptr::null_mut())
        }
        Move::Exhausted => Ok(std::ptr::null_mut()),
    }
}

/// `am_send`, with the shape of the `setattrofunc` trampoline (three pointers in, an int out):
/// the third pointer is where the result goes.
unsafe extern "C" fn iter_send_slot(
    slf: *mut ffi::PyObject,
    _arg: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> c_int {
    // SAFETY: CPython calls am_send with the GIL held, a live iterator and a result slot. The
    // trampoline returns -1 (PYGEN_ERROR) with the exception set on failure.
    unsafe { pyo3::impl_::trampoline::setattrofunc(slf, std::ptr::null_mut(), result.cast(), iter_send_impl) }
}

unsafe fn iter_send_impl(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    _arg: *mut ffi::PyObject,
    result: *mut ffi::PyObject,
) -> PyResult<c_int> {
    // SAFETY: `result` is the `PyObject **` CPython passed (see iter_send_slot).
    unsafe {
        let result = result.cast::<*mut ffi::PyObject>();
        *result = std::ptr::null_mut();
        match advance(py, slf)? {
            Move::Yield(task) => {
                *result = task.into_ptr();
                Ok(ffi::PySendResult::PYGEN_NEXT as c_int)
            }
            Move::Return(value) => {
                *result = value.into_ptr();
                Ok(ffi::PySendResult::PYGEN_RETURN as c_int)
            }
            Move::Exhausted => {
                *result = py.None().into_ptr();
                Ok(ffi::PySendResult::PYGEN_RETURN as c_int)
            }
        }
    }
}

unsafe extern "C" fn iter_send_method(slf: *mut ffi::PyObject, arg: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: called by CPython as a METH_O method with the GIL held.
    unsafe { pyo3::impl_::trampoline::binaryfunc(slf, arg, iter_send_method_impl) }
}

/// `send(value)`: the value is ignored (a future's iterator only returns the result).
unsafe fn iter_send_method_impl(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    _arg: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: see iter_send_method.
    match unsafe { advance(py, slf)? } {
        Move::Yield(task) => Ok(task.into_ptr()),
        Move::Return(value) => {
            set_stop_iteration(&value)?;
            Ok(std::ptr::null_mut())
        }
        Move::Exhausted => {
            set_stop_iteration(&py.None().into_bound(py))?;
            Ok(std::ptr::null_mut())
        }
    }
}

fastcall_entry!(iter_throw => iter_throw_impl);

/// `throw(type[, value[, traceback]])`: raises the exception here, as a generator that does not
/// catch it would, and ends the iteration.
unsafe fn iter_throw_impl(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: fastcall arguments, borrowed for the call; the references handed to PyErr_Restore
    // are new ones, which it steals.
    unsafe {
        let nargs = ffi::PyVectorcall_NARGS(nargsf as usize);
        if !kwnames.is_null() && ffi::PyTuple_GET_SIZE(kwnames) > 0 {
            return Err(PyTypeError::new_err("throw() takes no keyword arguments"));
        }
        if !(1..=3).contains(&nargs) {
            return Err(PyTypeError::new_err(format!(
                "throw expected at least 1 argument, got {nargs}"
            )));
        }
        let arg = |i: ffi::Py_ssize_t| {
            let obj = *args.offset(i);
            if i < nargs && obj != ffi::Py_None() {
                obj
            } else {
                std::ptr::null_mut()
            }
        };
        let mut typ = *args;
        let mut val = arg(1);
        let mut tb = arg(2);
        if !tb.is_null() && ffi::PyTraceBack_Check(tb) == 0 {
            return Err(PyTypeError::new_err("throw() third argument must be a traceback"));
        }
        ffi::Py_INCREF(typ);
        ffi::Py_XINCREF(val);
        ffi::Py_XINCREF(tb);
        if ffi::PyExceptionClass_Check(typ) != 0 {
            ffi::PyErr_NormalizeException(&raw mut typ, &raw mut val, &raw mut tb);
        } else if ffi::PyExceptionInstance_Check(typ) != 0 {
            if !val.is_null() {
                ffi::Py_DECREF(typ);
                ffi::Py_DECREF(val);
                ffi::Py_XDECREF(tb);
                return Err(PyTypeError::new_err("instance exception may not have a separate value"));
            }
            val = typ;
            typ = ffi::PyExceptionInstance_Class(val);
            ffi::Py_INCREF(typ);
            if tb.is_null() {
                tb = ffi::PyException_GetTraceback(val);
            }
        } else {
            ffi::Py_DECREF(typ);
            ffi::Py_XDECREF(tb);
            return Err(PyTypeError::new_err(
                "exceptions must be classes deriving BaseException or instances of such a class",
            ));
        }
        clear_task(slf);
        ffi::PyErr_Restore(typ, val, tb);
        Err(PyErr::fetch(py))
    }
}

unsafe extern "C" fn iter_close(slf: *mut ffi::PyObject, _args: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: called by CPython as a METH_NOARGS method with the GIL held.
    unsafe {
        clear_task(slf);
        ffi::Py_NewRef(ffi::Py_None())
    }
}

/// Drops the iterator's task.
///
/// # Safety
/// `slf` must be a live iterator object; the GIL must be held.
unsafe fn clear_task(slf: *mut ffi::PyObject) {
    // SAFETY: per the contract; the pointer is nulled before the reference is released.
    unsafe {
        let it = slf.cast::<IterObject>();
        let task = std::mem::replace(&mut (*it).task, std::ptr::null_mut());
        ffi::Py_XDECREF(task);
    }
}

unsafe extern "C" fn iter_clear(slf: *mut ffi::PyObject) -> c_int {
    // SAFETY: called by the collector with the GIL held.
    unsafe { clear_task(slf) };
    0
}

unsafe extern "C" fn iter_traverse(slf: *mut ffi::PyObject, visit: ffi::visitproc, arg: *mut c_void) -> c_int {
    // SAFETY: called by the collector on a live iterator; a heap type's instances visit it.
    unsafe {
        let ret = visit(ffi::Py_TYPE(slf).cast(), arg);
        if ret != 0 {
            return ret;
        }
        let task = (*slf.cast::<IterObject>()).task;
        if task.is_null() {
            0
        } else {
            visit(task, arg)
        }
    }
}

unsafe extern "C" fn iter_dealloc(slf: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc once the reference count is zero, with the GIL held.
    unsafe {
        let ty = ffi::Py_TYPE(slf);
        ffi::PyObject_GC_UnTrack(slf.cast());
        clear_task(slf);
        if let Some(free) = (*ty).tp_free {
            free(slf.cast());
        }
        ffi::Py_DECREF(ty.cast());
    }
}

static METHODS: [MethodDef; 4] = [
    MethodDef::one_arg(
        c"send",
        iter_send_method,
        c"send($self, value, /)\n--\n\nAdvance the iterator (the value is ignored).",
        false,
    ),
    MethodDef::fastcall(
        c"throw",
        iter_throw,
        c"throw($self, typ, val=None, tb=None, /)\n--\n\nRaise an exception here.",
    ),
    MethodDef::noargs(c"close", iter_close, c"close($self, /)\n--\n\nStop iterating."),
    MethodDef::END,
];
