//! `create_future` and `create_task` without a Python frame: both run once per future or task.
//!
//! The loop makes ferroloop's own `Future` and `Task` (see `crate::task`), subclasses of
//! asyncio's that keep asyncio's introspection (`asyncio.all_tasks`, `Task.print_stack`,
//! `get_coro`, cancellation messages) and queue their steps and callbacks natively. Where those
//! are not available (Python versions other than 3.11), it makes asyncio's.

use super::LoopBase;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;

impl LoopBase {
    /// Whether this loop's tasks and futures may queue natively, and whether it is in debug mode.
    fn task_mode(slf: &Bound<'_, Self>) -> (bool, bool) {
        let s = slf.borrow();
        (s.queues_tasks_natively(), s.debug_enabled())
    }

    /// A ferroloop future bound to this loop.
    pub(crate) fn new_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if !crate::task::available(py) {
            let kwargs = PyDict::new(py);
            kwargs.set_item(intern!(py, "loop"), slf)?;
            return py
                .import(intern!(py, "asyncio"))?
                .getattr(intern!(py, "Future"))?
                .call((), Some(&kwargs));
        }
        let (native, debug) = Self::task_mode(slf);
        crate::task::create_future(slf.as_any(), native, debug)
    }

    /// A ferroloop task running `coro` on this loop.
    pub(super) fn new_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if !crate::task::available(py) {
            let kwargs = PyDict::new(py);
            kwargs.set_item(intern!(py, "loop"), slf)?;
            kwargs.set_item(intern!(py, "name"), name)?;
            kwargs.set_item(intern!(py, "context"), context)?;
            return py
                .import(intern!(py, "asyncio"))?
                .getattr(intern!(py, "Task"))?
                .call((coro,), Some(&kwargs));
        }
        let (native, debug) = Self::task_mode(slf);
        // In debug mode the task's creation traceback ends at the caller: this method has no
        // Python frame of its own to drop (asyncio's drops its create_task frame).
        crate::task::create(slf.as_any(), native, debug, coro, name, context)
    }
}
