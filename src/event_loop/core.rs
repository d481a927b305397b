//! One turn of the loop (asyncio's `_run_once`), in three phases:
//!
//! 1. Decide the poll timeout: zero when callbacks are ready or a stop is pending, else until the
//!    earliest live timer, else unbounded. Cancelled timers at the top of the heap are dropped
//!    here, and the heap is rebuilt when cancelled timers are most of a large heap.
//! 2. Poll with the GIL released. A signal interrupts the poll and Python's handlers run (so
//!    Ctrl-C raises `KeyboardInterrupt` out of `run_forever`, as with asyncio); signals already
//!    pending are handled before a poll that may block.
//! 3. Queue the callbacks of ready fds, then of due timers, and run exactly the callbacks queued
//!    before this phase began; callbacks they schedule run on the next turn.
//!
//! The loop's state is never borrowed while Python code runs or while the GIL is released, so
//! callbacks (and other threads) can call back into the loop freely.

use super::fd_watch::FdWatches;
use super::LoopBase;
use crate::clock;
use crate::errors::os_error;
use crate::free_list;
use crate::handles::{format_callback_source, invoke, Handle, Invocation};
use crate::poller::Readiness;
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// asyncio caps a poll at one day, so a clock jump cannot park the loop for longer.
const MAX_POLL_SECONDS: f64 = 24.0 * 3600.0;
/// A poll that waited this long means the loop is idle: the handle free lists are trimmed.
const IDLE_TRIM_SECONDS: f64 = 1.0;
/// Rebuild the heap only past this size, when more than half of it is cancelled (as asyncio).
const MIN_HEAP_FOR_REBUILD: usize = 100;

/// How a turn polls. Every turn that could find something looks at I/O, as asyncio's does:
/// programs observe how I/O interleaves with callbacks (a reader runs on the turn after its data
/// arrived). A turn with callbacks ready and no fd watched has nothing to find (cross-thread
/// callbacks are queued directly, the eventfd only wakes a blocked poll), so it skips the syscall.
/// Skipping while fds were watched but quiet was measured and reverted (docs/perf-log.md).
#[derive(Clone, Copy)]
enum PollPlan {
    /// Callbacks are ready and no fd is watched: there is no I/O to look at.
    Skip,
    /// Look at I/O without waiting; the GIL is kept, as the call cannot block.
    NonBlocking,
    /// Wait for I/O with the GIL released, at most this long (`None`: until something happens).
    Block(Option<Duration>),
}

impl LoopBase {
    /// Drops cancelled timers from the top of the heap, or rebuilds it when they dominate.
    /// Returns the removed handles: the caller drops them once the state is no longer borrowed.
    fn purge_cancelled_timers(&mut self, py: Python<'_>) -> Vec<Py<Handle>> {
        let cancelled = self.timer_cancels.load(Ordering::Relaxed);
        if self.timers.len() > MIN_HEAP_FOR_REBUILD && cancelled * 2 > self.timers.len() {
            let removed = self.timers.retain(|h| !h.borrow(py).is_cancelled());
            self.timer_cancels.store(0, Ordering::Relaxed);
            for h in &removed {
                h.borrow_mut(py).scheduled = false;
            }
            return removed;
        }
        let mut removed = Vec::new();
        while let Some((_, top)) = self.timers.peek() {
            if !top.borrow(py).is_cancelled() {
                break;
            }
            if let Some(h) = self.timers.pop() {
                h.borrow_mut(py).scheduled = false;
                removed.push(h);
            }
            self.timer_cancels.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// How this turn polls, given the clock reading `now` (taken only when there are timers).
    fn plan_poll(&self, now: f64) -> PollPlan {
        if self.stopping {
            // asyncio's stop(): one last look at I/O, then the current batch, then return.
            return PollPlan::NonBlocking;
        }
        if !self.ready.is_empty() {
            if self.watches.is_empty() {
                return PollPlan::Skip;
            }
            return PollPlan::NonBlocking;
        }
        match self.timers.peek() {
            None => PollPlan::Block(None),
            Some((when, _)) if when <= now => PollPlan::NonBlocking,
            Some((when, _)) => PollPlan::Block(Some(Duration::from_secs_f64((when - now).min(MAX_POLL_SECONDS)))),
        }
    }

    /// Queues the reader and/or writer of a ready fd. A cancelled handle found here is removed
    /// from the table (asyncio does the same), which stops the fd from waking us again; it goes
    /// to `stale`, and a file object the fd no longer needs to `released`, to be let go outside
    /// the loop's borrow.
    fn dispatch(
        &mut self,
        py: Python<'_>,
        event: Readiness,
        stale: &mut Vec<Py<Handle>>,
        released: &mut Vec<Py<PyAny>>,
    ) {
        let Some(poller) = self.poller.clone() else {
            return;
        };
        let Some(watch) = self.watches.get(event.fd) else {
            return;
        };
        let mut to_clear = Vec::new();
        for (wanted, slot, side) in [
            (event.readable, &watch.reader, super::fd_watch::Side::Read),
            (event.writable, &watch.writer, super::fd_watch::Side::Write),
        ] {
            let Some(handle) = slot.as_ref().filter(|_| wanted) else {
                continue;
            };
            if handle.borrow(py).is_cancelled() {
                to_clear.push(side);
            } else {
                self.ready.push_back(handle.clone_ref(py));
            }
        }
        for side in to_clear {
            if let Some((handle, _, fileobj)) = FdWatches::clear(&mut self.watches, &poller, event.fd, side) {
                stale.push(handle);
                released.extend(fileobj);
            }
        }
    }
}

/// `self.time()`, for a loop whose `time()` is overridden.
fn loop_time(slf: &Bound<'_, LoopBase>) -> PyResult<f64> {
    LoopBase::now(slf)?.extract()
}

/// Runs one turn of the loop.
pub fn run_once(slf: &Bound<'_, LoopBase>) -> PyResult<()> {
    let turn = turn(slf);
    if turn.is_err() && slf.borrow().has_deferred_writes() {
        // A signal handler or a replaced `time()` raised before the callbacks ran: what was
        // written meanwhile goes now, as asyncio would already have sent it, instead of waiting
        // for the loop's next run.
        return turn.and(LoopBase::flush_deferred_writes(slf));
    }
    turn
}

fn turn(slf: &Bound<'_, LoopBase>) -> PyResult<()> {
    let py = slf.py();
    if slf.borrow().ready.is_empty() {
        // A signal Python has noted but not handled yet must be handled before the poll may block:
        // nothing would end the wait for it. That happens with `_thread.interrupt_main()` (no OS
        // signal is sent), and when another thread's GIL hand-off recomputed the eval breaker
        // without the main thread's pending signal, so no Python code ran the handler. asyncio's
        // loop runs Python bytecode right before each `select()`, which handles them there. The
        // check is one atomic load when nothing is pending; a handler may queue callbacks, which
        // the plan below then sees.
        py.check_signals()?;
    }
    // The clock is read only when there are timers to compare with (a vDSO call still costs a
    // noticeable share of a one-callback turn), and through `self.time()` where that is
    // overridden, before each poll and after it, as asyncio's loop reads it.
    let time_overridden = slf.borrow().time_overridden;
    let mut now = if time_overridden {
        loop_time(slf)?
    } else {
        f64::NEG_INFINITY
    };
    let (plan, purged) = {
        let mut s = slf.borrow_mut();
        if s.poller.is_none() {
            return Err(super::closed_error());
        }
        let purged = s.purge_cancelled_timers(py);
        if !time_overridden && s.timers.len() > 0 {
            now = clock::monotonic();
        }
        (s.plan_poll(now), purged)
    };
    super::let_go_all(py, purged);
    let plan = flush_before_poll(slf, plan)?;

    // A turn that skips the poll takes neither the poller nor the buffers.
    let readiness = if let PollPlan::Skip = plan {
        // Signals still get their turn, as an interrupted poll would have given them.
        py.check_signals()?;
        None
    } else {
        let (poller, mut epoll_buf, mut readiness) = {
            let mut s = slf.borrow_mut();
            let poller = s.poller.clone().ok_or_else(super::closed_error)?;
            (
                poller,
                std::mem::take(&mut s.epoll_buf),
                std::mem::take(&mut s.readiness),
            )
        };
        readiness.clear();
        let poll_result = match plan {
            PollPlan::Block(timeout) => {
                // Handles kept from a burst go back to the allocator once the loop has been idle
                // (see `free_list`); the wait is timed only while there are any.
                let idle_since = free_list::holds_surplus(py).then(clock::monotonic);
                let waited = py.detach(|| poller.wait(&mut epoll_buf, &mut readiness, timeout));
                if timeout.is_some() || idle_since.is_some() {
                    // Only a wait bounded by a timer needs the clock again, or one being timed.
                    let after = clock::monotonic();
                    if idle_since.is_some_and(|since| after - since >= IDLE_TRIM_SECONDS) {
                        free_list::trim(py);
                    }
                    now = after;
                }
                waited
            }
            _ => poller.wait(&mut epoll_buf, &mut readiness, Some(Duration::ZERO)),
        };
        slf.borrow_mut().epoll_buf = epoll_buf;
        match poll_result {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => py.check_signals()?,
            Err(err) => return Err(os_error(&err)),
        }
        Some(readiness)
    };
    if time_overridden {
        now = loop_time(slf)?;
    }

    let (batch, stale, released, debug) = {
        let mut s = slf.borrow_mut();
        let mut stale = Vec::new();
        let mut released = Vec::new();
        if let Some(mut readiness) = readiness {
            for event in readiness.drain(..) {
                s.dispatch(py, event, &mut stale, &mut released);
            }
            s.readiness = readiness;
        }
        while let Some(timer) = s.timers.pop_due(now) {
            let cancelled = {
                let mut t = timer.borrow_mut(py);
                t.scheduled = false;
                t.is_cancelled()
            };
            if cancelled {
                s.timer_cancels.fetch_sub(1, Ordering::Relaxed);
                stale.push(timer);
            } else {
                s.ready.push_back(timer);
            }
        }
        let mut batch = std::mem::take(&mut s.spare);
        std::mem::swap(&mut batch, &mut s.ready);
        (batch, stale, released, s.debug)
    };
    super::let_go_all(py, stale);
    drop(released);
    let ran = run_batch(slf, batch, debug);
    // When a callback's exception stops the loop, its writes were still made, and asyncio would
    // have sent them.
    let flushed = LoopBase::flush_deferred_writes(slf);
    ran.and(flushed)
}

/// Writes deferred outside any callback (by a signal handler, a finalizer, a replaced `time()`)
/// must not wait through the poll. Sending them can run protocol code that queues callbacks, so
/// the poll then does not block.
fn flush_before_poll(slf: &Bound<'_, LoopBase>, plan: PollPlan) -> PyResult<PollPlan> {
    if !slf.borrow().has_deferred_writes() {
        return Ok(plan);
    }
    LoopBase::flush_deferred_writes(slf)?;
    Ok(match plan {
        PollPlan::Block(_) => PollPlan::NonBlocking,
        other => other,
    })
}

fn run_batch(slf: &Bound<'_, LoopBase>, mut batch: VecDeque<Py<Handle>>, debug: bool) -> PyResult<()> {
    while let Some(handle) = batch.pop_front() {
        // The writes a callback made leave when it returns (see `transport::socket`): together,
        // and before the next callback's work delays them.
        let outcome = run_handle(slf, handle, debug).and_then(|()| {
            if slf.borrow().has_deferred_writes() {
                LoopBase::flush_deferred_writes(slf)
            } else {
                Ok(())
            }
        });
        if let Err(err) = outcome {
            // KeyboardInterrupt/SystemExit (or a failing diagnostic) leave the loop; what was not
            // run stays queued, first, as asyncio leaves it.
            let mut s = slf.borrow_mut();
            while let Some(rest) = batch.pop_back() {
                s.ready.push_front(rest);
            }
            s.spare = batch;
            return Err(err);
        }
    }
    slf.borrow_mut().spare = batch;
    Ok(())
}

/// Runs one handle; an `Err` means the loop must stop at once.
fn run_handle(slf: &Bound<'_, LoopBase>, handle: Py<Handle>, debug: bool) -> PyResult<()> {
    let py = slf.py();
    let Some(invocation) = handle.borrow_mut(py).take_invocation(py) else {
        super::let_go(py, handle, None);
        return Ok(());
    };
    if !debug {
        let outcome = run_invocation(slf, &handle, &invocation);
        super::let_go(py, handle, Some(invocation));
        return outcome;
    }
    // Debug mode: the handle is the loop's current one while it runs, as in asyncio's `_run_once`.
    slf.borrow_mut().current_handle = Some(handle.clone_ref(py));
    let started = clock::monotonic();
    let outcome = run_invocation(slf, &handle, &invocation);
    let previous = slf.borrow_mut().current_handle.take();
    drop(previous);
    super::let_go(py, handle.clone_ref(py), Some(invocation));
    outcome?;
    let elapsed = clock::monotonic() - started;
    if elapsed >= slf.borrow().slow_callback_duration {
        slf.call_method1(intern!(py, "_log_slow_callback"), (handle, elapsed))?;
    }
    Ok(())
}

/// Calls the handle's callback; an exception other than `KeyboardInterrupt`/`SystemExit` goes to
/// the exception handler, as asyncio's `Handle._run` does.
#[inline]
fn run_invocation(slf: &Bound<'_, LoopBase>, handle: &Py<Handle>, invocation: &Invocation) -> PyResult<()> {
    let py = slf.py();
    match invoke(py, invocation) {
        Err(err) if !is_fatal(py, &err) => {
            handle.borrow_mut(py).restore_for_report(py, invocation);
            report_callback_error(slf, handle, invocation, err)
        }
        other => other,
    }
}

fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// Passes an exception raised by a callback to `call_exception_handler` with asyncio's keys.
fn report_callback_error(
    slf: &Bound<'_, LoopBase>,
    handle: &Py<Handle>,
    invocation: &Invocation,
    err: PyErr,
) -> PyResult<()> {
    let py = slf.py();
    let traceback = handle.borrow(py).source_traceback(py);
    let description = format_callback_source(py, &invocation.public_callback(py)?, &invocation.args)?;
    let context = PyDict::new(py);
    context.set_item(intern!(py, "message"), format!("Exception in callback {description}"))?;
    context.set_item(intern!(py, "exception"), err.into_value(py))?;
    context.set_item(intern!(py, "handle"), handle)?;
    if let Some(tb) = traceback {
        context.set_item(intern!(py, "source_traceback"), tb)?;
    }
    slf.call_method1(intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}
