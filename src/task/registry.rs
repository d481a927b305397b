//! A task's entry in `asyncio.tasks._all_tasks`, the weak set `asyncio.all_tasks()` reads.
//!
//! CPython's C task (3.11) adds itself with `_all_tasks.add(task)`, a Python method, and the
//! weak set's own Python callback removes the entry when the task dies: two Python frames per
//! task, more than a tenth of a short task's cost (callgrind). This module does what those two
//! do, natively: a weak reference whose callback discards it from the set's `data`, or queues it
//! in `_pending_removals` while someone iterates the set, exactly as `weakref.WeakSet` does. On
//! another Python version (another layout), or when the set is not a plain `weakref.WeakSet` (a
//! replaced registry), tasks register through `asyncio.tasks._register_task` instead.

use crate::method_defs::MethodDef;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PySet};

/// How tasks register, decided once.
enum Registry {
    /// `_all_tasks` is a plain `weakref.WeakSet`: the set itself and the native removal callback
    /// bound to it.
    Native { weak_set: Py<PyAny>, remove: Py<PyAny> },
    /// Anything else: `asyncio.tasks._register_task`.
    Call(Py<PyAny>),
}

static REGISTRY: PyOnceLock<Registry> = PyOnceLock::new();

static REMOVE: MethodDef = MethodDef::one_arg(
    c"_remove",
    remove,
    c"Drop a dead task's weak reference from asyncio's task registry.",
    false,
);

fn registry(py: Python<'_>) -> PyResult<&Registry> {
    REGISTRY.get_or_try_init(py, || {
        let tasks = py.import(intern!(py, "asyncio.tasks"))?;
        let call =
            || -> PyResult<Registry> { Ok(Registry::Call(tasks.getattr(intern!(py, "_register_task"))?.unbind())) };
        // `_all_tasks` is 3.11's name and layout: 3.12 keeps a `_scheduled_tasks` set beside a
        // separate one for eager tasks.
        if py.version_info() < (3, 11) || py.version_info() >= (3, 12) {
            return call();
        }
        let weak_set = tasks.getattr(intern!(py, "_all_tasks"))?;
        let plain = weak_set
            .get_type()
            .is(py.import(intern!(py, "weakref"))?.getattr(intern!(py, "WeakSet"))?);
        if !plain {
            return call();
        }
        // SAFETY: REMOVE is a 'static METH_O definition; the function keeps `weak_set` as its self.
        let remove = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyCFunction_NewEx(
                    std::ptr::from_ref(&REMOVE).cast_mut().cast(),
                    weak_set.as_ptr(),
                    std::ptr::null_mut(),
                ),
            )?
        };
        Ok(Registry::Native {
            weak_set: weak_set.unbind(),
            remove: remove.unbind(),
        })
    })
}

/// Adds `task` to asyncio's registry of tasks.
pub(super) fn register(task: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = task.py();
    match registry(py)? {
        Registry::Call(register) => {
            register.bind(py).call1((task,))?;
        }
        Registry::Native { weak_set, remove } => {
            let weak_set = weak_set.bind(py);
            // As WeakSet.add: first apply removals deferred while the set was being iterated.
            let pending = weak_set.getattr(intern!(py, "_pending_removals"))?;
            if pending.is_truthy()? {
                weak_set.call_method0(intern!(py, "_commit_removals"))?;
            }
            // SAFETY: `task` supports weak references (the base type's weaklist) and `remove` is
            // callable; a new reference or null with an exception set comes back.
            let weak =
                unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyWeakref_NewRef(task.as_ptr(), remove.as_ptr()))? };
            weak_set.getattr(intern!(py, "data"))?.cast_into::<PySet>()?.add(weak)?;
        }
    }
    Ok(())
}

unsafe extern "C" fn remove(weak_set: *mut ffi::PyObject, weak: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: called by CPython as a `METH_O` function bound to the weak set, with the GIL held.
    unsafe { pyo3::impl_::trampoline::binaryfunc(weak_set, weak, remove_impl) }
}

/// `WeakSet._remove`: discard the dead reference, or defer that while the set is iterated.
unsafe fn remove_impl(
    py: Python<'_>,
    weak_set: *mut ffi::PyObject,
    weak: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: both are borrowed references valid for the call.
    let (weak_set, weak) = unsafe {
        (
            Bound::from_borrowed_ptr(py, weak_set),
            Bound::from_borrowed_ptr(py, weak),
        )
    };
    if weak_set.getattr(intern!(py, "_iterating"))?.is_truthy()? {
        weak_set
            .getattr(intern!(py, "_pending_removals"))?
            .cast_into::<PyList>()?
            .append(weak)?;
    } else {
        weak_set
            .getattr(intern!(py, "data"))?
            .cast_into::<PySet>()?
            .discard(weak)?;
    }
    Ok(py.None().into_ptr())
}
