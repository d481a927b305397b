//! The future half of a task: its result, exception, cancellation and done callbacks, with the
//! semantics of CPython's C `Future` (3.11), which the task's `Future` methods and its own step
//! both use.

use super::{data, Callback, State};
use crate::call_args::CallArgs;
use crate::event_loop::LoopBase;
use crate::handles::NativeCall;
use pyo3::exceptions::{PyStopIteration, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static CANCELLED_ERROR: PyOnceLock<Py<pyo3::types::PyType>> = PyOnceLock::new();
static INVALID_STATE_ERROR: PyOnceLock<Py<pyo3::types::PyType>> = PyOnceLock::new();

pub(super) fn cancelled_error_type(py: Python<'_>) -> PyResult<&Bound<'_, pyo3::types::PyType>> {
    CANCELLED_ERROR.import(py, "asyncio.exceptions", "CancelledError")
}

pub(super) fn invalid_state(py: Python<'_>, message: String) -> PyResult<PyErr> {
    let ty = INVALID_STATE_ERROR.import(py, "asyncio.exceptions", "InvalidStateError")?;
    Ok(PyErr::from_value(ty.call1((message,))?))
}

/// The error that raises `exc` with the traceback it carries, as CPython's `PyErr_SetObject`
/// does (PyO3's `PyErr::from_value` drops the traceback on 3.11): a stored exception re-raised
/// shows where it first came from.
pub(super) fn raise(exc: Bound<'_, PyAny>) -> PyErr {
    let py = exc.py();
    // SAFETY: `exc` is a live exception instance (every caller passes one); PyErr_SetObject
    // takes new references of its own.
    unsafe { ffi::PyErr_SetObject(ffi::Py_TYPE(exc.as_ptr()).cast(), exc.as_ptr()) };
    PyErr::fetch(py)
}

/// `'PENDING'`, `'CANCELLED'` or `'FINISHED'`, for `_state` and error messages.
pub(super) fn state_name(state: State) -> &'static str {
    match state {
        State::Pending => "PENDING",
        State::Cancelled => "CANCELLED",
        State::Finished => "FINISHED",
    }
}

/// Queues `target(*args)` on the task's loop, in `context`: natively on a ferroloop loop (with
/// `native` called on `target` if given), else through `loop.call_soon`, as CPython's future
/// does.
pub(super) fn call_soon(
    task: &Bound<'_, PyAny>,
    target: Bound<'_, PyAny>,
    native: Option<&'static NativeCall>,
    args: CallArgs,
    context: Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = task.py();
    let (loop_, native_loop) = {
        let d = data(task).borrow();
        (d.loop_.as_ref().map(|l| l.clone_ref(py)), d.native_loop)
    };
    let Some(loop_) = loop_ else {
        return Err(pyo3::exceptions::PyRuntimeError::new_err("uninitialized Task object"));
    };
    let loop_ = loop_.into_bound(py);
    if native_loop {
        // SAFETY: `native_loop` is set only for LoopBase instances.
        let loop_ = unsafe { loop_.cast_into_unchecked::<LoopBase>() };
        return LoopBase::enqueue(&loop_, target.unbind(), args, context.unbind(), native);
    }
    let callback = match native {
        Some(native) => target.getattr(native.name)?,
        None => target,
    };
    let mut positional = vec![callback];
    match args {
        CallArgs::None => {}
        CallArgs::One(arg) => positional.push(arg.into_bound(py)),
        CallArgs::Many(tuple) => positional.extend(tuple.into_bound(py).iter()),
    }
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item(intern!(py, "context"), context)?;
    loop_.call_method(
        intern!(py, "call_soon"),
        pyo3::types::PyTuple::new(py, positional)?,
        Some(&kwargs),
    )?;
    Ok(())
}

/// Runs (queues) the done callbacks once the task is done, clearing the list first.
pub(super) fn schedule_callbacks(task: &Bound<'_, PyAny>) -> PyResult<()> {
    let callbacks = std::mem::take(&mut data(task).borrow_mut().callbacks);
    for callback in callbacks {
        queue_callback(task, callback)?;
    }
    Ok(())
}

/// Queues one done callback of `task`, which is done.
fn queue_callback(task: &Bound<'_, PyAny>, callback: Callback) -> PyResult<()> {
    let py = task.py();
    let (target, native, context) = match callback {
        Callback::Python { func, context } => (func, None, context),
        Callback::Wakeup { task: waiter, context } => (waiter, Some(&super::step::WAKEUP), context),
    };
    call_soon(
        task,
        target.into_bound(py),
        native,
        CallArgs::One(task.clone().unbind()),
        context.into_bound(py),
    )
}

/// Appends a done callback, or queues it at once if the task is already done.
pub(super) fn add_done_callback(task: &Bound<'_, PyAny>, callback: Callback) -> PyResult<()> {
    {
        let mut d = data(task).borrow_mut();
        if d.state == State::Pending {
            d.callbacks.push(callback);
            return Ok(());
        }
    }
    queue_callback(task, callback)
}

/// `Future.set_result` without the task's refusal.
pub(super) fn set_result(task: &Bound<'_, PyAny>, value: Bound<'_, PyAny>) -> PyResult<()> {
    {
        let mut d = data(task).borrow_mut();
        if d.state != State::Pending {
            drop(d);
            return Err(invalid_state(task.py(), "invalid state".to_owned())?);
        }
        d.result = Some(value.unbind());
        d.state = State::Finished;
    }
    schedule_callbacks(task)
}

/// `Future.set_exception` without the task's refusal: `exc` may be an exception class, which is
/// instantiated.
pub(super) fn set_exception(task: &Bound<'_, PyAny>, exc: Bound<'_, PyAny>) -> PyResult<()> {
    let py = task.py();
    let pending = || data(task).borrow().state == State::Pending;
    if !pending() {
        return Err(invalid_state(py, "invalid state".to_owned())?);
    }
    // SAFETY: plain type checks on a live object.
    let exc = if unsafe { ffi::PyExceptionClass_Check(exc.as_ptr()) } != 0 {
        let instance = exc.call0()?;
        if !pending() {
            return Err(invalid_state(py, "invalid state".to_owned())?);
        }
        instance
    } else {
        exc
    };
    // SAFETY: as above.
    if unsafe { ffi::PyExceptionInstance_Check(exc.as_ptr()) } == 0 {
        return Err(PyTypeError::new_err("invalid exception object"));
    }
    if exc.get_type().is(py.get_type::<PyStopIteration>()) {
        return Err(PyTypeError::new_err(
            "StopIteration interacts badly with generators and cannot be raised into a Future",
        ));
    }
    // SAFETY: `exc` is an exception instance; a new reference or null (no traceback) comes back.
    let tb = unsafe { Bound::from_owned_ptr_or_opt(py, ffi::PyException_GetTraceback(exc.as_ptr())) };
    {
        let mut d = data(task).borrow_mut();
        d.exception = Some(exc.unbind());
        d.exception_tb = tb.map(Bound::unbind);
        d.state = State::Finished;
        d.log_traceback = true;
    }
    schedule_callbacks(task)
}

/// `Future.cancel(msg)`: true if the task was pending and is now cancelled.
pub(super) fn cancel(task: &Bound<'_, PyAny>, msg: Option<Bound<'_, PyAny>>) -> PyResult<bool> {
    {
        let mut d = data(task).borrow_mut();
        d.log_traceback = false;
        if d.state != State::Pending {
            return Ok(false);
        }
        d.state = State::Cancelled;
        d.cancel_message = msg.map(Bound::unbind);
    }
    schedule_callbacks(task)?;
    Ok(true)
}

/// The `CancelledError` to raise: the one the coroutine raised (handed over once), else a new
/// one with the cancellation message.
pub(super) fn make_cancelled_error<'py>(task: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = task.py();
    let (cached, message) = {
        let mut d = data(task).borrow_mut();
        (
            d.cancelled_exc.take(),
            d.cancel_message.as_ref().map(|m| m.clone_ref(py)),
        )
    };
    if let Some(exc) = cached {
        return Ok(exc.into_bound(py));
    }
    let ty = cancelled_error_type(py)?;
    match message.map(|m| m.into_bound(py)).filter(|m| !m.is_none()) {
        None => ty.call0(),
        Some(message) => ty.call1((message,)),
    }
}

/// What `result()` finds in a done task.
pub(super) enum Outcome<'py> {
    Value(Bound<'py, PyAny>),
    /// The exception, with its saved traceback reattached.
    Raised(Bound<'py, PyAny>),
}

/// `result()` without raising the stored exception: an `Err` is the cancellation or the state
/// error; clears `_log_traceback` and (as CPython's future does) the saved traceback.
pub(super) fn outcome<'py>(task: &Bound<'py, PyAny>) -> PyResult<Outcome<'py>> {
    let py = task.py();
    let state = data(task).borrow().state;
    match state {
        State::Cancelled => Err(raise(make_cancelled_error(task)?)),
        State::Pending => Err(invalid_state(py, "Result is not set.".to_owned())?),
        State::Finished => {
            let (exception, tb, result) = {
                let mut d = data(task).borrow_mut();
                d.log_traceback = false;
                (
                    d.exception.as_ref().map(|e| e.clone_ref(py)),
                    d.exception_tb.take(),
                    d.result.as_ref().map(|r| r.clone_ref(py)),
                )
            };
            if let Some(exc) = exception {
                let tb = tb.unwrap_or_else(|| py.None());
                // SAFETY: `exc` is an exception instance and `tb` a traceback or None.
                if unsafe { ffi::PyException_SetTraceback(exc.as_ptr(), tb.as_ptr()) } < 0 {
                    return Err(PyErr::fetch(py));
                }
                return Ok(Outcome::Raised(exc.into_bound(py)));
            }
            Ok(Outcome::Value(
                result.map_or_else(|| py.None().into_bound(py), |r| r.into_bound(py)),
            ))
        }
    }
}
