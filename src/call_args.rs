//! The positional arguments a handle passes to its callback.
//!
//! asyncio keeps them as a tuple (`Handle._args`). Most callbacks take none or one: CPython's C
//! `Future` schedules each done callback as `call_soon(callback, future, context=...)`, so every
//! future completion and every task wake-up queues a one-argument call. Storing that argument
//! directly saves a tuple per callback (an allocation, a GC-tracked object while the callback
//! waits in the queue, and the tuple-unpacking call path); the tuple is built only when Python
//! code asks for it (`_args`, `repr`, error reports).

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::{PyTraverseError, PyVisit};

pub enum CallArgs {
    None,
    One(Py<PyAny>),
    /// Two or more arguments, as the caller's tuple.
    Many(Py<PyTuple>),
}

impl CallArgs {
    /// The arguments of `callback(*tuple)`.
    pub fn from_tuple(tuple: Bound<'_, PyTuple>) -> Self {
        match tuple.len() {
            0 => CallArgs::None,
            // SAFETY: index 0 exists; the item is borrowed from the live tuple.
            1 => CallArgs::One(unsafe { tuple.get_borrowed_item_unchecked(0) }.to_owned().unbind()),
            _ => CallArgs::Many(tuple.unbind()),
        }
    }

    /// asyncio's `_args`: a new tuple with the same items.
    pub fn to_tuple(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        Ok(match self {
            CallArgs::None => PyTuple::empty(py).unbind(),
            CallArgs::One(arg) => PyTuple::new(py, [arg])?.unbind(),
            CallArgs::Many(tuple) => tuple.clone_ref(py),
        })
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            CallArgs::None => CallArgs::None,
            CallArgs::One(arg) => CallArgs::One(arg.clone_ref(py)),
            CallArgs::Many(tuple) => CallArgs::Many(tuple.clone_ref(py)),
        }
    }

    /// Drops the references as `Bound`s (see `handles::release`).
    pub fn release(self, py: Python<'_>) {
        match self {
            CallArgs::None => {}
            CallArgs::One(arg) => drop(arg.into_bound(py)),
            CallArgs::Many(tuple) => drop(tuple.into_bound(py)),
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            CallArgs::None => Ok(()),
            CallArgs::One(arg) => visit.call(arg),
            CallArgs::Many(tuple) => visit.call(tuple),
        }
    }

    /// Calls `callback` with these arguments by vectorcall; returns the new reference to the
    /// result, or null with an exception set.
    ///
    /// # Safety
    /// The GIL must be held and `callback` must be a live object.
    pub unsafe fn call(&self, callback: *mut ffi::PyObject) -> *mut ffi::PyObject {
        // SAFETY: the caller's contract; the argument pointers are live references this value
        // holds for the duration of the call, and a tuple's items are stored contiguously.
        unsafe {
            match self {
                CallArgs::None => ffi::PyObject_CallNoArgs(callback),
                CallArgs::One(arg) => ffi::PyObject_CallOneArg(callback, arg.as_ptr()),
                CallArgs::Many(tuple) => {
                    let tuple = tuple.as_ptr();
                    let items = (&raw const (*tuple.cast::<ffi::PyTupleObject>()).ob_item).cast();
                    ffi::PyObject_Vectorcall(
                        callback,
                        items,
                        ffi::PyTuple_GET_SIZE(tuple) as usize,
                        std::ptr::null_mut(),
                    )
                }
            }
        }
    }
}
