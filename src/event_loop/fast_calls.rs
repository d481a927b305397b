//! `call_soon` and `call_soon_threadsafe` as CPython fastcall methods with their own argument
//! parsing.
//!
//! Both run once per queued callback, and also for every wake-up of CPython's C `Task` and
//! `Future`, which schedule through `loop.call_soon(callback, arg, context=...)`. PyO3's generic
//! parser for `(callback, *args, context=None)` cost about as much as the rest of the call
//! (callgrind: ~290 instructions per call, mostly keyword matching); parsing this one fixed
//! shape by hand costs a few dozen. The two methods are installed on `LoopBase` as ordinary
//! method descriptors when the module is imported, replacing the `#[pymethods]` entries of the
//! same names, which keep documenting the signature.
//!
//! Calls go through PyO3's own fastcall trampoline, so panics become Python exceptions and PyO3's
//! bookkeeping of the attached thread holds, exactly as for generated methods.

use super::LoopBase;
use crate::call_args::CallArgs;
use crate::method_defs::{self, fastcall_entry, MethodDef};
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;
use pyo3::PyTypeInfo;
use std::ffi::CStr;

/// The first `("context",)` keyword-names tuple seen, kept alive so that its address identifies
/// it. Callers pass the same tuple every time: CPython's C `Task` and `Future` keep one for their
/// `call_soon(callback, arg, context=...)` calls, and a Python call site passes its code object's
/// constant. Recognising it by address skips matching names for most wake-ups.
static CONTEXT_ONLY: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

static CALL_SOON: MethodDef = MethodDef::fastcall(
    c"call_soon",
    call_soon,
    c"call_soon($self, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called on the next turn of the loop, in `context` (a copy of the current context by default). Return a Handle.",
);

static CALL_SOON_THREADSAFE: MethodDef = MethodDef::fastcall(
    c"call_soon_threadsafe",
    call_soon_threadsafe,
    c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), from any thread: wakes the loop if it is waiting for I/O.",
);

/// `get_debug()` runs for every future and task made on the loop: CPython's `Future.__init__`
/// asks its loop whether to record a creation traceback. PyO3's generated wrapper made that
/// call cost about 600 instructions (callgrind), a quarter of making a future.
static GET_DEBUG: MethodDef = MethodDef::noargs(
    c"get_debug",
    get_debug,
    c"get_debug($self, /)\n--\n\nReturn whether the loop is in debug mode.",
);

/// Replaces `LoopBase.call_soon`, `LoopBase.call_soon_threadsafe` and `LoopBase.get_debug` with
/// the fast versions.
pub fn install(py: Python<'_>) -> PyResult<()> {
    method_defs::install(
        &LoopBase::type_object(py),
        &[&CALL_SOON, &CALL_SOON_THREADSAFE, &GET_DEBUG],
    )
}

unsafe extern "C" fn get_debug(slf: *mut ffi::PyObject, args: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: called by CPython as a `METH_NOARGS` method, with the GIL held.
    unsafe { pyo3::impl_::trampoline::noargs(slf, args, get_debug_impl) }
}

unsafe fn get_debug_impl(py: Python<'_>, slf: *mut ffi::PyObject) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: `slf` is the borrowed `self` of the call, which the method descriptor checked is a
    // LoopBase (or subclass) instance.
    let slf = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopBase>() };
    let debug = slf.try_borrow()?.debug_enabled();
    Ok(pyo3::types::PyBool::new(py, debug).to_owned().into_ptr())
}

fastcall_entry!(call_soon => schedule::<false>);

fastcall_entry!(call_soon_threadsafe => schedule::<true>);

/// Parses `(callback, *args, context=None)` from a vectorcall and queues the callback.
///
/// # Safety
/// The arguments are those of a `METH_FASTCALL | METH_KEYWORDS` call: `args` holds `nargs`
/// positional values followed by one value per name in `kwnames` (a tuple of str, or null).
unsafe fn schedule<const THREADSAFE: bool>(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    let method = if THREADSAFE {
        "call_soon_threadsafe"
    } else {
        "call_soon"
    };
    // SAFETY: see the function's contract; every pointer read below is a borrowed reference the
    // caller keeps alive for the duration of the call.
    unsafe {
        // The method descriptor checked that `self` is a LoopBase (or subclass) instance.
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopBase>();
        let nargs = ffi::PyVectorcall_NARGS(nargsf as usize);
        let positional: &[*mut ffi::PyObject] = if nargs == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(args, nargs as usize)
        };
        let mut callback = positional.first().map(|&c| Bound::from_borrowed_ptr(py, c));
        let rest = match positional.get(1..).unwrap_or(&[]) {
            [] => CallArgs::None,
            [arg] => CallArgs::One(Py::from_borrowed_ptr(py, *arg)),
            many => {
                let tuple = Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(many.len() as ffi::Py_ssize_t))?;
                for (i, &item) in many.iter().enumerate() {
                    ffi::Py_INCREF(item);
                    ffi::PyTuple_SET_ITEM(tuple.as_ptr(), i as ffi::Py_ssize_t, item);
                }
                CallArgs::Many(tuple.cast_into_unchecked::<PyTuple>().unbind())
            }
        };
        let mut context = None;
        if !kwnames.is_null() {
            if CONTEXT_ONLY.get(py).is_some_and(|known| known.as_ptr() == kwnames) {
                context = Some(Py::from_borrowed_ptr(py, *args.add(nargs as usize)));
            } else {
                let names = Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>();
                for i in 0..names.len() {
                    let name = names.get_borrowed_item_unchecked(i);
                    let value = *args.add(nargs as usize + i);
                    if ffi::PyUnicode_Check(name.as_ptr()) == 0 {
                        // CPython's calls never pass one; a C caller might.
                        return Err(PyTypeError::new_err(format!("{method}() keywords must be strings")));
                    }
                    let is = |text: &CStr| ffi::PyUnicode_CompareWithASCIIString(name.as_ptr(), text.as_ptr()) == 0;
                    if is(c"context") {
                        context = Some(Py::from_borrowed_ptr(py, value));
                    } else if is(c"callback") {
                        // As for a Python `def call_soon(self, callback, *args, ...)`.
                        if callback.is_some() {
                            return Err(PyTypeError::new_err(format!(
                                "{method}() got multiple values for argument 'callback'"
                            )));
                        }
                        callback = Some(Bound::from_borrowed_ptr(py, value));
                    } else {
                        let name = name.to_owned();
                        return Err(PyTypeError::new_err(format!(
                            "{method}() got an unexpected keyword argument '{name}'"
                        )));
                    }
                }
                if names.len() == 1 && context.is_some() {
                    // Remember this `("context",)`: see `CONTEXT_ONLY`.
                    let _ = CONTEXT_ONLY.set(py, names.unbind());
                }
            }
        }
        let Some(callback) = callback else {
            return Err(PyTypeError::new_err(format!(
                "{method}() missing 1 required positional argument: 'callback'"
            )));
        };
        LoopBase::schedule(&slf, method, callback, rest, context, THREADSAFE).map(Py::into_ptr)
    }
}
