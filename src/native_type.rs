//! Heap types built from slot tables, for the few classes PyO3 cannot express: a class whose
//! base is another extension's C type (ferroloop's `Task` subclasses `asyncio.Task`, whose layout
//! `_asyncio` does not publish), and iterators that need the `am_send` slot.
//!
//! A type's own data sits after its base's instance layout, at an offset only known once the
//! base type is seen at run time ([`data_offset`]).

use pyo3::exceptions::PySystemError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};
use std::ffi::{c_int, c_void, CStr};

/// `Py_am_send` (CPython 3.10+), which pyo3-ffi does not name.
pub const PY_AM_SEND: c_int = 81;

/// One `PyType_Slot`.
pub fn slot(id: c_int, pfunc: *mut c_void) -> ffi::PyType_Slot {
    ffi::PyType_Slot { slot: id, pfunc }
}

/// Where a subclass of `base` can keep a `T`: the end of the base's instance, aligned for `T`.
pub fn data_offset<T>(base: &Bound<'_, PyType>) -> usize {
    // SAFETY: a live type object; tp_basicsize is a plain field.
    let base_size = usize::try_from(unsafe { (*base.as_type_ptr()).tp_basicsize }).unwrap_or(0);
    base_size.next_multiple_of(std::mem::align_of::<T>())
}

/// Creates a heap type named `name` (dotted: module and class) from `slots`, deriving from
/// `base` (`object` if `None`), with instances of `basicsize` bytes. CPython copies the slot
/// table, but keeps pointers into the method and getset tables the slots name: those must be
/// `'static`.
pub fn build(
    py: Python<'_>,
    name: &'static CStr,
    base: Option<&Bound<'_, PyType>>,
    basicsize: usize,
    flags: std::ffi::c_ulong,
    mut slots: Vec<ffi::PyType_Slot>,
) -> PyResult<Py<PyType>> {
    slots.push(slot(0, std::ptr::null_mut()));
    let mut spec = ffi::PyType_Spec {
        name: name.as_ptr(),
        basicsize: c_int::try_from(basicsize).map_err(|_| PySystemError::new_err("type too large"))?,
        itemsize: 0,
        flags: flags as _,
        slots: slots.as_mut_ptr(),
    };
    let bases = match base {
        Some(base) => PyTuple::new(py, [base])?.into_any(),
        None => py.None().into_bound(py),
    };
    let bases_ptr = if bases.is_none() {
        std::ptr::null_mut()
    } else {
        bases.as_ptr()
    };
    // SAFETY: `spec` is valid for the call (CPython copies what it needs from it, keeping only
    // the pointers into the 'static tables); `bases` is a tuple of types or null.
    let ty = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpecWithBases(&raw mut spec, bases_ptr))? };
    Ok(ty.cast_into::<PyType>()?.unbind())
}
