//! `create_future` and `create_task` without a Python frame: both run once per task or future,
//! and the C-accelerated `asyncio.Future`/`asyncio.Task` types are called directly with
//! vectorcall (keyword names cached), so a task costs what `CPython`'s own `Task()` costs.
//!
//! Tasks and futures stay `CPython`'s own types: introspection (`asyncio.all_tasks`, `Task.print_stack`,
//! `get_coro`, cancellation messages) keeps working unchanged.

use super::LoopBase;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};

static FUTURE_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TASK_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// Keyword-name tuples for `Task(coro, loop=..., [name=...], [context=...])`, indexed by
/// `has_name | has_context << 1`.
static TASK_KWNAMES: [PyOnceLock<Py<PyTuple>>; 4] = [
    PyOnceLock::new(),
    PyOnceLock::new(),
    PyOnceLock::new(),
    PyOnceLock::new(),
];
static LOOP_KWNAMES: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

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

impl LoopBase {
    pub(crate) fn new_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let future_type = FUTURE_TYPE.import(py, "asyncio", "Future")?;
        let names = kwnames(py, &LOOP_KWNAMES, &["loop"])?;
        vectorcall(py, future_type, &[slf.as_ptr()], 0, names)
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
        let index = usize::from(name.is_some()) | usize::from(context.is_some()) << 1;
        let names = kwnames(py, &TASK_KWNAMES[index], &names[..count - 1])?;
        // In debug mode the task's creation traceback already ends at the caller: this method has
        // no Python frame of its own to drop (asyncio's drops its create_task frame).
        vectorcall(py, task_type, &args[..count], 1, names)
    }
}
