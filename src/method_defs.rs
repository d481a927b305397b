//! Native methods defined with plain CPython method definitions, for the few calls whose
//! argument handling through PyO3's generic machinery cost as much as their work (see
//! `event_loop::fast_calls` and `transport::fast_methods`).
//!
//! A definition is turned into an ordinary method descriptor of a given class, so it binds,
//! type-checks `self` and shows in `help()` like any builtin method.
//!
//! The entry points run inside `pyo3::impl_::trampoline`, the (documentation-hidden) wrapper
//! PyO3's own generated methods use; `Cargo.toml` keeps PyO3 on one minor version, and a PyO3
//! upgrade must check that this API is unchanged.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;
use std::ffi::CStr;

/// A `PyMethodDef` in a `static`: CPython only reads it, from any thread holding the GIL. An
/// array of them, ended by [`MethodDef::END`], is a method table.
#[repr(transparent)]
pub struct MethodDef(ffi::PyMethodDef);

// SAFETY: the definition is immutable and only holds pointers to static strings and functions.
unsafe impl Sync for MethodDef {}

/// The C signature of a `METH_FASTCALL | METH_KEYWORDS` method.
pub type FastCall = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// The C signature of a `METH_NOARGS` method.
pub type NoArgs = unsafe extern "C" fn(*mut ffi::PyObject, *mut ffi::PyObject) -> *mut ffi::PyObject;

// `doc` may start with a `name($self, ...)\n--\n\n` line: CPython then shows that signature.
impl MethodDef {
    pub const fn fastcall(name: &'static CStr, meth: FastCall, doc: &'static CStr) -> Self {
        MethodDef(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: meth,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: doc.as_ptr(),
        })
    }

    /// A `METH_O` method (`class_method`: also `METH_CLASS`, bound to the class).
    pub const fn one_arg(name: &'static CStr, meth: NoArgs, doc: &'static CStr, class_method: bool) -> Self {
        MethodDef(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunction: meth },
            ml_flags: if class_method {
                ffi::METH_O | ffi::METH_CLASS
            } else {
                ffi::METH_O
            },
            ml_doc: doc.as_ptr(),
        })
    }

    /// The entry that ends a method table.
    pub const END: Self = MethodDef(ffi::PyMethodDef::zeroed());

    /// The table starting at `defs[0]`, for a `Py_tp_methods` slot.
    pub fn table(defs: &'static [MethodDef]) -> *mut std::ffi::c_void {
        defs.as_ptr().cast_mut().cast()
    }

    pub const fn noargs(name: &'static CStr, meth: NoArgs, doc: &'static CStr) -> Self {
        MethodDef(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunction: meth },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: doc.as_ptr(),
        })
    }
}

/// Sets each definition on `cls` as a method descriptor under its name, replacing what was there.
pub fn install(cls: &Bound<'_, PyType>, defs: &[&'static MethodDef]) -> PyResult<()> {
    let py = cls.py();
    for def in defs {
        // SAFETY: `def` is a valid, 'static method definition; CPython keeps the pointer and never
        // writes through it. The descriptor checks that `self` is an instance of `cls`.
        let descr = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyDescr_NewMethod(cls.as_type_ptr(), std::ptr::from_ref(&def.0).cast_mut()),
            )?
        };
        // SAFETY: `ml_name` is a static NUL-terminated string.
        let name = unsafe { CStr::from_ptr(def.0.ml_name) }.to_str()?;
        cls.setattr(name, descr)?;
    }
    Ok(())
}

/// Defines `unsafe extern "C" fn $name`, a `METH_FASTCALL | METH_KEYWORDS` entry point that runs
/// `$body(py, self, args, nargsf, kwnames)` (an `unsafe fn` returning a new reference) inside
/// PyO3's trampoline: panics become exceptions, and PyO3 knows the thread is attached.
macro_rules! fastcall_entry {
    ($name:ident => $body:expr) => {
        unsafe extern "C" fn $name(
            slf: *mut pyo3::ffi::PyObject,
            args: *const *mut pyo3::ffi::PyObject,
            nargsf: pyo3::ffi::Py_ssize_t,
            kwnames: *mut pyo3::ffi::PyObject,
        ) -> *mut pyo3::ffi::PyObject {
            // SAFETY: CPython calls this as a `METH_FASTCALL | METH_KEYWORDS` method, holding the
            // GIL, with arguments as that convention lays them out; `$body` takes them as such.
            unsafe { pyo3::impl_::trampoline::fastcall_with_keywords(slf, args, nargsf, kwnames, $body) }
        }
    };
}
pub(crate) use fastcall_entry;
