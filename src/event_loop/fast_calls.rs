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
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::impl_::trampoline::fastcall_with_keywords;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use pyo3::{intern, PyTypeInfo};

/// A `PyMethodDef` in a `static`: CPython only reads it, from any thread holding the GIL.
struct MethodDef(ffi::PyMethodDef);

// SAFETY: the definition is immutable and only holds pointers to static strings and functions.
unsafe impl Sync for MethodDef {}

static CALL_SOON: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"call_soon".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: call_soon,
    },
    ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
    ml_doc: c"call_soon($self, callback, /, *args, context=None)\n--\n\nArrange for callback(*args) to be called on the next turn of the loop, in `context` (a copy of the current context by default). Return a Handle.".as_ptr(),
});

static CALL_SOON_THREADSAFE: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"call_soon_threadsafe".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: call_soon_threadsafe,
    },
    ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
    ml_doc: c"call_soon_threadsafe($self, callback, /, *args, context=None)\n--\n\nLike call_soon(), from any thread: wakes the loop if it is waiting for I/O.".as_ptr(),
});

/// Replaces `LoopBase.call_soon` and `LoopBase.call_soon_threadsafe` with the fast versions.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let ty = LoopBase::type_object(py);
    for (name, def) in [
        ("call_soon", &CALL_SOON),
        ("call_soon_threadsafe", &CALL_SOON_THREADSAFE),
    ] {
        // SAFETY: `def` is a valid, 'static method definition for `ty`'s instances; CPython keeps
        // the pointer and never writes through it.
        let descr = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyDescr_NewMethod(ty.as_type_ptr(), std::ptr::from_ref(&def.0).cast_mut()),
            )?
        };
        ty.setattr(name, descr)?;
    }
    Ok(())
}

unsafe extern "C" fn call_soon(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython as a METH_FASTCALL | METH_KEYWORDS method, with the GIL held.
    unsafe { fastcall_with_keywords(slf, args, nargsf, kwnames, schedule_soon) }
}

unsafe extern "C" fn call_soon_threadsafe(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as for `call_soon`.
    unsafe { fastcall_with_keywords(slf, args, nargsf, kwnames, schedule_threadsafe) }
}

unsafe fn schedule_soon(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: forwarded unchanged from CPython's call.
    unsafe { schedule(py, slf, args, nargsf, kwnames, false) }
}

unsafe fn schedule_threadsafe(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: forwarded unchanged from CPython's call.
    unsafe { schedule(py, slf, args, nargsf, kwnames, true) }
}

/// Parses `(callback, *args, context=None)` from a vectorcall and queues the callback.
///
/// # Safety
/// The arguments are those of a `METH_FASTCALL | METH_KEYWORDS` call: `args` holds `nargs`
/// positional values followed by one value per name in `kwnames` (a tuple of str, or null).
unsafe fn schedule(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    threadsafe: bool,
) -> PyResult<*mut ffi::PyObject> {
    let method = if threadsafe {
        "call_soon_threadsafe"
    } else {
        "call_soon"
    };
    // SAFETY: see the function's contract; every pointer read below is a borrowed reference the
    // caller keeps alive for the duration of the call.
    unsafe {
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into::<LoopBase>()?;
        let nargs = ffi::PyVectorcall_NARGS(nargsf as usize);
        if nargs < 1 {
            return Err(PyTypeError::new_err(format!(
                "{method}() missing 1 required positional argument: 'callback'"
            )));
        }
        let positional = std::slice::from_raw_parts(args, nargs as usize);
        let callback = Bound::from_borrowed_ptr(py, positional[0]);
        let rest = if nargs == 1 {
            PyTuple::empty(py)
        } else {
            let tuple = Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(nargs - 1))?;
            for (i, &item) in positional[1..].iter().enumerate() {
                ffi::Py_INCREF(item);
                ffi::PyTuple_SET_ITEM(tuple.as_ptr(), i as ffi::Py_ssize_t, item);
            }
            tuple.cast_into_unchecked::<PyTuple>()
        };
        let mut context = None;
        if !kwnames.is_null() {
            let names = Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>();
            let expected = intern!(py, "context");
            for (i, name) in names.iter().enumerate() {
                let is_context = name.is(expected)
                    || name
                        .cast::<PyString>()
                        .is_ok_and(|n| n.to_str().is_ok_and(|s| s == "context"));
                if !is_context {
                    return Err(PyTypeError::new_err(format!(
                        "{method}() got an unexpected keyword argument '{name}'"
                    )));
                }
                context = Some(Py::from_borrowed_ptr(py, *args.add(nargs as usize + i)));
            }
        }
        LoopBase::schedule(&slf, method, callback, rest, context, threadsafe).map(Py::into_ptr)
    }
}
