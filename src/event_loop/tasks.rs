//! `create_future` and `create_task` without a Python frame: both run once per task or future.
//!
//! The C-accelerated `asyncio.Future`/`asyncio.Task` types have no vectorcall of their own
//! (3.11), so calling them with `loop=` built a keyword dict for each object and dropped it
//! again: a fifth of a future's cost (callgrind). The common shapes, `Future(loop=self)` and
//! `Task(coro, loop=self)`, instead run the type's `tp_new` and `tp_init` with a `{"loop": self}`
//! dict the loop keeps, which is what calling the type does; tasks with a name or a context go
//! through vectorcall with cached keyword names.
//!
//! Tasks and futures stay `CPython`'s own types: introspection (`asyncio.all_tasks`, `Task.print_stack`,
//! `get_coro`, cancellation messages) keeps working unchanged.

use super::LoopBase;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};

static FUTURE_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TASK_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// Keyword-name tuples for `Task(coro, loop=..., [name=...], [context=...])` with at least one
/// of the optional two, indexed by `(has_name | has_context << 1) - 1`.
static TASK_KWNAMES: [PyOnceLock<Py<PyTuple>>; 3] = [PyOnceLock::new(), PyOnceLock::new(), PyOnceLock::new()];

fn kwnames<'a>(py: Python<'_>, cell: &'a PyOnceLock<Py<PyTuple>>, names: &[&str]) -> PyResult<&'a Py<PyTuple>> {
    cell.get_or_try_init(py, || {
        let names: Vec<Bound<'_, PyString>> = names.iter().map(|n| PyString::intern(py, n)).collect();
        Ok(PyTuple::new(py, names)?.unbind())
    })
}

/// Calls `callable(*positional, **dict(zip(names, keyword_values)))` through vectorcall.
fn vectorcall<'py>(
    py: Python<'py>,
    callable: &Bound<'py, PyAny>,
    args: &[*mut ffi::PyObject],
    positional: usize,
    names: &Py<PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: every pointer in `args` is a live reference borrowed from the caller for the
    // duration of the call; `names` holds exactly `args.len() - positional` interned strings.
    unsafe {
        let result = ffi::PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), positional, names.as_ptr());
        Bound::from_owned_ptr_or_err(py, result)
    }
}

/// What calling `ty(*args, **kwargs)` does for a type whose `tp_new` returns an instance of it.
fn construct<'py>(
    ty: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = ty.py();
    let ty = ty.cast::<PyType>()?;
    let raw = ty.as_type_ptr();
    // SAFETY: `raw` is a live type object; `tp_new` and `tp_init` are called with a tuple and a
    // dict as their contracts require, the new object is owned by `obj` before `tp_init` runs,
    // and each error return comes with the exception set.
    unsafe {
        let (Some(new), Some(init)) = ((*raw).tp_new, (*raw).tp_init) else {
            return ty.call(args, Some(kwargs));
        };
        let obj = Bound::from_owned_ptr_or_err(py, new(raw, args.as_ptr(), kwargs.as_ptr()))?;
        if ffi::PyObject_TypeCheck(obj.as_ptr(), raw) != 0 && init(obj.as_ptr(), args.as_ptr(), kwargs.as_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(obj)
    }
}

impl LoopBase {
    /// `{"loop": self}`, made on first use.
    fn loop_kwargs<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        if let Some(kwargs) = &slf.borrow().loop_kwargs {
            return Ok(kwargs.bind(py).clone());
        }
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "loop"), slf)?;
        slf.borrow_mut().loop_kwargs = Some(kwargs.clone().unbind());
        Ok(kwargs)
    }

    pub(crate) fn new_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let future_type = FUTURE_TYPE.import(py, "asyncio", "Future")?;
        construct(future_type, &PyTuple::empty(py), &Self::loop_kwargs(slf)?)
    }

    pub(super) fn new_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let task_type = TASK_TYPE.import(py, "asyncio", "Task")?;
        let name = name.filter(|n| !n.is_none());
        let context = context.filter(|c| !c.is_none());
        if name.is_none() && context.is_none() {
            return construct(task_type, &PyTuple::new(py, [coro])?, &Self::loop_kwargs(slf)?);
        }
        // Fixed arrays, not vectors: this runs once per task.
        let mut args = [coro.as_ptr(), slf.as_ptr(), std::ptr::null_mut(), std::ptr::null_mut()];
        let mut names = ["loop", "", ""];
        let mut count = 2;
        for (value, name) in [(name, "name"), (context, "context")] {
            if let Some(value) = value {
                args[count] = value.as_ptr();
                names[count - 1] = name;
                count += 1;
            }
        }
        let index = (usize::from(name.is_some()) | usize::from(context.is_some()) << 1) - 1;
        let names = kwnames(py, &TASK_KWNAMES[index], &names[..count - 1])?;
        // In debug mode the task's creation traceback already ends at the caller: this method has
        // no Python frame of its own to drop (asyncio's drops its create_task frame).
        vectorcall(py, task_type, &args[..count], 1, names)
    }
}
