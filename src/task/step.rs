//! Running a task: one step sends into (or throws into) the coroutine and looks at what it
//! yielded; the wake-up resumes the task when the future it waits for is done. Both follow
//! CPython's C task (3.11) case by case, messages included.

use super::future::{self, cancelled_error_type, invalid_state, Outcome};
use super::{data, is_exact_native, is_task, task_type, Callback, State};
use crate::call_args::CallArgs;
use crate::handles::NativeCall;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyStopIteration, PySystemExit, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

/// A step queued on a ferroloop loop: the handle's target is the task, its argument (if any) the
/// exception to throw in.
pub(crate) static STEP: NativeCall = NativeCall {
    name: "_Task__step",
    call: |task, args| {
        let exc = match args {
            CallArgs::None => None,
            CallArgs::One(exc) => Some(exc.bind(task.py()).clone()),
            CallArgs::Many(_) => return Err(PyTypeError::new_err("a task step takes at most one argument")),
        };
        step(checked(task)?, exc)
    },
};

/// The wake-up of a task whose awaited ferroloop task is done; the argument is that task.
pub(crate) static WAKEUP: NativeCall = NativeCall {
    name: "_Task__wakeup",
    call: |task, args| match args {
        CallArgs::One(fut) => wakeup(checked(task)?, fut.bind(task.py())),
        _ => Err(PyTypeError::new_err("a task wake-up takes one argument")),
    },
};

fn checked<'a, 'py>(task: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyAny>> {
    if is_task(task) {
        Ok(task)
    } else {
        Err(PyTypeError::new_err("a ferroloop Task was expected"))
    }
}

/// `asyncio.tasks._current_tasks`, the dict behind `asyncio.current_task()`: loop -> task.
static CURRENT_TASKS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
/// `("context",)`, the keyword names of `add_done_callback(callback, context=...)`.
static CONTEXT_KWNAMES: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

fn loop_of<'py>(task: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    data(task)
        .borrow()
        .loop_
        .as_ref()
        .map(|l| l.bind(task.py()).clone())
        .ok_or_else(|| PyRuntimeError::new_err("uninitialized Task object"))
}

fn context_of<'py>(task: &Bound<'py, PyAny>) -> Bound<'py, PyAny> {
    let py = task.py();
    data(task)
        .borrow()
        .context
        .as_ref()
        .map_or_else(|| py.None().into_bound(py), |c| c.bind(py).clone())
}

/// One step of the task, between `_enter_task` and `_leave_task` as asyncio's current-task
/// bookkeeping requires. An error here stops the loop only for `KeyboardInterrupt` and
/// `SystemExit` (which the task also stores); anything else goes to the exception handler.
pub(super) fn step(task: &Bound<'_, PyAny>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
    let py = task.py();
    let loop_ = loop_of(task)?;
    let current = CURRENT_TASKS.import(py, "asyncio.tasks", "_current_tasks")?;
    enter_task(current, &loop_, task)?;
    let outcome = step_inner(task, exc);
    let left = leave_task(current, &loop_, task);
    outcome.and(left)
}

/// asyncio's `_enter_task`, on its dict directly (the C function behind it does the same): the
/// loop's current task becomes `task`.
fn enter_task(current: &Bound<'_, PyDict>, loop_: &Bound<'_, PyAny>, task: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Some(running) = current.get_item(loop_)? {
        return Err(PyRuntimeError::new_err(format!(
            "Cannot enter into task {} while another task {} is being executed.",
            task.repr()?,
            running.repr()?
        )));
    }
    current.set_item(loop_, task)
}

/// asyncio's `_leave_task`.
fn leave_task(current: &Bound<'_, PyDict>, loop_: &Bound<'_, PyAny>, task: &Bound<'_, PyAny>) -> PyResult<()> {
    match current.get_item(loop_)? {
        Some(running) if running.is(task) => current.del_item(loop_),
        running => Err(PyRuntimeError::new_err(format!(
            "Leaving task {} does not match the current task {}.",
            task.repr()?,
            running.map_or_else(|| Ok("None".to_owned()), |r| r.repr().map(|r| r.to_string()))?
        ))),
    }
}

/// What sending into (or throwing into) the coroutine did.
enum Sent<'py> {
    Returned(Bound<'py, PyAny>),
    Yielded(Bound<'py, PyAny>),
    Raised(PyErr),
}

fn send<'py>(coro: &Bound<'py, PyAny>) -> Sent<'py> {
    let py = coro.py();
    let mut result = std::ptr::null_mut();
    // SAFETY: `coro` is live; PyIter_Send stores a new reference in `result` unless it fails,
    // in which case an exception is set.
    let status = unsafe { ffi::PyIter_Send(coro.as_ptr(), ffi::Py_None(), &raw mut result) };
    match status {
        // SAFETY: per the above, `result` is a new reference in both cases.
        ffi::PySendResult::PYGEN_RETURN => Sent::Returned(unsafe { Bound::from_owned_ptr(py, result) }),
        ffi::PySendResult::PYGEN_NEXT => Sent::Yielded(unsafe { Bound::from_owned_ptr(py, result) }),
        ffi::PySendResult::PYGEN_ERROR => Sent::Raised(PyErr::fetch(py)),
    }
}

fn throw<'py>(coro: &Bound<'py, PyAny>, exc: &Bound<'py, PyAny>) -> Sent<'py> {
    let py = coro.py();
    match coro.call_method1(intern!(py, "throw"), (exc,)) {
        Ok(yielded) => Sent::Yielded(yielded),
        Err(err) if err.is_instance_of::<PyStopIteration>(py) => match err.value(py).getattr(intern!(py, "value")) {
            Ok(value) => Sent::Returned(value),
            Err(err) => Sent::Raised(err),
        },
        Err(err) => Sent::Raised(err),
    }
}

fn step_inner(task: &Bound<'_, PyAny>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
    let py = task.py();
    let (state, must_cancel) = {
        let d = data(task).borrow();
        (d.state, d.must_cancel)
    };
    if state != State::Pending {
        let exc_repr = match &exc {
            Some(e) => e.repr()?.to_string(),
            None => "None".to_owned(),
        };
        return Err(invalid_state(
            py,
            format!("_step(): already done: {} {}", task.repr()?, exc_repr),
        )?);
    }
    let mut exc = exc;
    if must_cancel {
        let is_cancellation = match &exc {
            Some(e) => e.is_instance(cancelled_error_type(py)?)?,
            None => false,
        };
        if !is_cancellation {
            exc = Some(future::make_cancelled_error(task)?);
        }
        data(task).borrow_mut().must_cancel = false;
    }
    let (coro, previous_waiter) = {
        let mut d = data(task).borrow_mut();
        (d.coro.as_ref().map(|c| c.clone_ref(py)), d.fut_waiter.take())
    };
    drop(previous_waiter);
    let coro = coro
        .ok_or_else(|| PyRuntimeError::new_err("uninitialized Task object"))?
        .into_bound(py);
    let sent = match &exc {
        None => send(&coro),
        Some(exc) => throw(&coro, exc),
    };
    drop(exc);
    match sent {
        Sent::Returned(value) => {
            let cancel_message = {
                let mut d = data(task).borrow_mut();
                let must_cancel = std::mem::take(&mut d.must_cancel);
                must_cancel.then(|| d.cancel_message.as_ref().map(|m| m.clone_ref(py)))
            };
            match cancel_message {
                // The task was cancelled right before its coroutine returned.
                Some(message) => future::cancel(task, message.map(|m| m.into_bound(py))).map(drop),
                None => future::set_result(task, value),
            }
        }
        Sent::Raised(err) => {
            if err.is_instance(py, cancelled_error_type(py)?) {
                data(task).borrow_mut().cancelled_exc = Some(err.into_value(py).into_any());
                return future::cancel(task, None).map(drop);
            }
            let fatal = err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py);
            future::set_exception(task, err.clone_ref(py).into_value(py).into_bound(py).into_any())?;
            if fatal {
                return Err(err);
            }
            Ok(())
        }
        Sent::Yielded(result) => on_yield(task, &result),
    }
}

/// Queues a step of `task` (throwing `exc` in, if given).
pub(super) fn schedule_step(task: &Bound<'_, PyAny>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
    let args = exc.map_or(CallArgs::None, |e| CallArgs::One(e.unbind()));
    future::call_soon(task, task.clone(), Some(&STEP), args, context_of(task))
}

fn error_soon(task: &Bound<'_, PyAny>, message: String) -> PyResult<()> {
    let exc = PyRuntimeError::new_err(message)
        .into_value(task.py())
        .into_bound(task.py())
        .into_any();
    schedule_step(task, Some(exc))
}

/// asyncio's `futures._get_loop`.
fn future_loop<'py>(fut: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = fut.py();
    match fut.getattr_opt(intern!(py, "get_loop"))? {
        Some(get_loop) => get_loop.call0(),
        None => fut.getattr(intern!(py, "_loop")),
    }
}

/// What the coroutine yielded: nothing (a bare `yield`: run again next turn), a future to wait
/// for, or a mistake, which is thrown back into the coroutine on its next step.
fn on_yield(task: &Bound<'_, PyAny>, result: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = task.py();
    if result.is_none() {
        return schedule_step(task, None);
    }
    if result.is(task) {
        return error_soon(task, format!("Task cannot await on itself: {}", task.repr()?));
    }
    let loop_ = loop_of(task)?;
    let different_loop = |task: &Bound<'_, PyAny>| -> PyResult<()> {
        error_soon(
            task,
            format!(
                "Task {} got Future {} attached to a different loop",
                task.repr()?,
                result.repr()?
            ),
        )
    };
    let yield_instead = |task: &Bound<'_, PyAny>| -> PyResult<()> {
        error_soon(
            task,
            format!(
                "yield was used instead of yield from in task {} with {}",
                task.repr()?,
                result.repr()?
            ),
        )
    };
    if is_exact_native(result) {
        let (same_loop, blocking) = {
            let r = data(result).borrow();
            (r.loop_.as_ref().is_some_and(|l| l.is(&loop_)), r.blocking)
        };
        if !same_loop {
            return different_loop(task);
        }
        if !blocking {
            return yield_instead(task);
        }
        data(result).borrow_mut().blocking = false;
        future::add_done_callback(
            result,
            Callback::Wakeup {
                task: task.clone().unbind(),
                context: context_of(task).unbind(),
            },
        )?;
        return after_wait_begins(task, result);
    }
    let blocking = result.getattr_opt(intern!(py, "_asyncio_future_blocking"))?;
    if let Some(blocking) = blocking.filter(|b| !b.is_none()) {
        let blocking = blocking.is_truthy()?;
        if !future_loop(result)?.is(&loop_) {
            return different_loop(task);
        }
        if !blocking {
            return yield_instead(task);
        }
        result.setattr(intern!(py, "_asyncio_future_blocking"), false)?;
        let wakeup = task.getattr(intern!(py, "_Task__wakeup"))?;
        add_done_callback_with_context(result, &wakeup, &context_of(task))?;
        return after_wait_begins(task, result);
    }
    // SAFETY: a type check of a live object.
    if unsafe { ffi::PyGen_Check(result.as_ptr()) } != 0 {
        return error_soon(
            task,
            format!(
                "yield was used instead of yield from for generator in task {} with {}",
                task.repr()?,
                result.repr()?
            ),
        );
    }
    error_soon(task, format!("Task got bad yield: {}", result.repr()?))
}

/// `fut.add_done_callback(callback, context=context)`, without a bound method or keyword dict.
fn add_done_callback_with_context(
    fut: &Bound<'_, PyAny>,
    callback: &Bound<'_, PyAny>,
    context: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = fut.py();
    let kwnames = CONTEXT_KWNAMES.get_or_init(py, || {
        PyTuple::new(py, [PyString::intern(py, "context")])
            .expect("a one-item tuple")
            .unbind()
    });
    let name = intern!(py, "add_done_callback");
    let args = [fut.as_ptr(), callback.as_ptr(), context.as_ptr()];
    // SAFETY: `args` holds live borrowed references: self, one positional, one keyword value
    // named by `kwnames`; the result is a new reference or null with an exception set.
    unsafe {
        let result = ffi::PyObject_VectorcallMethod(
            name.as_ptr(),
            args.as_ptr(),
            2 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
            kwnames.as_ptr(),
        );
        Bound::from_owned_ptr_or_err(py, result).map(drop)
    }
}

/// The task now waits for `fut`; a cancellation requested before it got there passes on.
fn after_wait_begins(task: &Bound<'_, PyAny>, fut: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = task.py();
    let cancel_message = {
        let mut d = data(task).borrow_mut();
        d.fut_waiter = Some(fut.clone().unbind());
        d.must_cancel
            .then(|| d.cancel_message.as_ref().map(|m| m.clone_ref(py)))
    };
    if let Some(message) = cancel_message {
        let message = message.map(|m| m.into_bound(py));
        if cancel_waiter(fut, message)? {
            data(task).borrow_mut().must_cancel = false;
        }
    }
    Ok(())
}

/// `fut.cancel(message)`.
pub(super) fn cancel_waiter(fut: &Bound<'_, PyAny>, message: Option<Bound<'_, PyAny>>) -> PyResult<bool> {
    let py = fut.py();
    if is_exact_native(fut) {
        // SAFETY: reading the type of a live object.
        if unsafe { ffi::Py_TYPE(fut.as_ptr()) } == task_type(py) {
            return cancel(fut, message);
        }
        return future::cancel(fut, message);
    }
    let message = message.unwrap_or_else(|| py.None().into_bound(py));
    fut.call_method1(intern!(py, "cancel"), (message,))?.is_truthy()
}

/// `Task.cancel(msg)`.
pub(super) fn cancel(task: &Bound<'_, PyAny>, message: Option<Bound<'_, PyAny>>) -> PyResult<bool> {
    let py = task.py();
    let waiter = {
        let mut d = data(task).borrow_mut();
        d.log_traceback = false;
        if d.state != State::Pending {
            return Ok(false);
        }
        d.num_cancels_requested += 1;
        d.fut_waiter.as_ref().map(|w| w.clone_ref(py))
    };
    if let Some(waiter) = waiter {
        if cancel_waiter(waiter.bind(py), message.clone())? {
            // The waiter wakes the task with the cancellation; it stays the waiter, as it may be
            // a task that ignores the cancellation and must be cancelled again.
            return Ok(true);
        }
    }
    let mut d = data(task).borrow_mut();
    d.must_cancel = true;
    d.cancel_message = message.map(Bound::unbind);
    Ok(true)
}

/// Resumes `task` now that `fut`, the future it waited for, is done.
pub(super) fn wakeup(task: &Bound<'_, PyAny>, fut: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = task.py();
    if is_exact_native(fut) {
        return match future::outcome(fut) {
            Ok(Outcome::Value(_)) => step(task, None),
            Ok(Outcome::Raised(exc)) => step(task, Some(exc)),
            Err(err) => step(task, Some(err.into_value(py).into_bound(py).into_any())),
        };
    }
    match fut.call_method0(intern!(py, "result")) {
        Ok(_) => step(task, None),
        Err(err) => step(task, Some(err.into_value(py).into_bound(py).into_any())),
    }
}
