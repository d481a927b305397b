//! `Handle` and `TimerHandle`: the objects `call_soon`, `call_later` and `call_at` return.
//!
//! A handle owns its callback, the positional arguments (the tuple the call already built, stored
//! as is: no per-callback tuple is made) and the `contextvars.Context` it runs in. The loop keeps
//! handles in its ready queue and timer heap; Python code only sees `cancel()`, `cancelled()`,
//! `get_context()`, `when()` and asyncio-compatible `repr`.
//!
//! Cancellation follows asyncio: the callback and arguments are released at once (they may hold
//! large objects or reference cycles), except in debug mode, where the repr is kept first. A
//! cancelled timer stays in the heap; it bumps the loop's cancelled-timer counter so the loop can
//! rebuild the heap when cancelled entries dominate.

use crate::call_args::CallArgs;
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[pyclass(subclass, module = "ferroloop._ferroloop")]
#[allow(clippy::struct_excessive_bools)] // independent flags, each mirroring one of asyncio's
pub struct Handle {
    callback: Option<Py<PyAny>>,
    args: Option<CallArgs>,
    context: Option<Py<PyAny>>,
    cancelled: bool,
    /// Set for timer handles: deadline on the loop clock.
    pub(crate) when: f64,
    /// A timer in the loop's heap (asyncio's `_scheduled`); cleared when it moves to the ready queue.
    pub(crate) scheduled: bool,
    /// The deadline was given to `call_at()` as an `int` (exactly representable as a float), which
    /// `when()` gives back as an `int`, as asyncio's handle returns the object it was given.
    when_is_int: bool,
    /// The loop's count of cancelled timers still in its heap; `None` for plain handles.
    timer_cancels: Option<Arc<AtomicUsize>>,
    debug: bool,
    /// A one-shot handle of the loop's (`call_soon`, `call_later`, ...) outside debug mode, while
    /// it sits in the loop's queue or heap. Such a handle is not tracked by the GC: the loop
    /// reports the handle's references as its own (`visit_owned`), so young-generation
    /// collections do not walk every queued callback. When the loop lets go of the handle
    /// (`LoopBase::let_go`), a handle that someone else still holds becomes an ordinary tracked
    /// object again. Invariant: `owned_by_loop` exactly when untracked. Debug-mode handles keep
    /// everything for diagnostics and are always tracked.
    owned_by_loop: bool,
    /// Set when `callback` is not the callable itself but the object whose native method this
    /// handle calls directly (see [`NativeCall`]).
    native: Option<&'static NativeCall>,
    /// The context, a copy this handle made (`context=None`) and so referred to by nothing else,
    /// is out of the GC's lists while the handle is loop-owned, for the same reason as the
    /// handle itself, once the queue it joins is deep (see `DEEP_QUEUE`). It is tracked again
    /// before anyone else can see it (`disown`, `get_context`) and before it is released
    /// (`Drop`): CPython frees a context assuming it is tracked. Invariant: set only while
    /// `owned_by_loop` (or while the handle is being dropped).
    context_untracked: bool,
    /// Debug mode only, boxed so that handles outside debug mode stay small.
    diagnostics: Option<Box<Diagnostics>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The context may outlive us (an invocation in flight still holds it) and is freed by
        // CPython as a tracked object.
        self.retrack_context();
        // SAFETY: a handle is dropped by its deallocation or by loop code, both attached to the
        // interpreter. Released as `Bound`s, the references skip `Py`'s check of the thread-local
        // attachment count: this runs for every callback.
        let py = unsafe { Python::assume_attached() };
        release(py, self.callback.take());
        if let Some(args) = self.args.take() {
            args.release(py);
        }
        release(py, self.context.take());
    }
}

/// Drops a reference with the interpreter known to be attached (see `Drop for Handle`).
pub fn release<T>(py: Python<'_>, obj: Option<Py<T>>) {
    drop(obj.map(|o| o.into_bound(py)));
}

/// What a debug-mode handle keeps for diagnostics.
#[derive(Default)]
struct Diagnostics {
    source_traceback: Option<Py<PyAny>>,
    /// The repr frozen at cancellation, as asyncio does.
    frozen_repr: Option<String>,
}

/// A native method a handle calls on its target object without a bound-method object or
/// argument parsing: the loop's own fd watchers (transport cores) use it. To Python code the
/// handle looks the same as one holding the bound method `target.<name>`.
pub struct NativeCall {
    /// The method's Python name, for `repr`, `_callback` and error reports.
    pub name: &'static str,
    /// Called with the target and the handle's arguments.
    pub call: fn(&Bound<'_, PyAny>, &CallArgs) -> PyResult<()>,
}

/// What the loop needs to invoke a handle, taken out while the handle is not borrowed (the
/// callback may cancel its own handle).
pub struct Invocation {
    pub callback: Py<PyAny>,
    pub args: CallArgs,
    pub context: Option<Py<PyAny>>,
    pub native: Option<&'static NativeCall>,
}

impl Invocation {
    /// Drops the references (as `release` does).
    pub fn release(self, py: Python<'_>) {
        release(py, Some(self.callback));
        self.args.release(py);
        release(py, self.context);
    }

    /// The callable as Python code would see it (the bound method, for a native call).
    pub fn public_callback(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        public_callback(py, &self.callback, self.native)
    }
}

fn public_callback(py: Python<'_>, callback: &Py<PyAny>, native: Option<&NativeCall>) -> PyResult<Py<PyAny>> {
    match native {
        Some(native) => Ok(callback.bind(py).getattr(native.name)?.unbind()),
        None => Ok(callback.clone_ref(py)),
    }
}

/// Queue depth from which a loop-owned handle's copied context leaves the GC's lists. Below it,
/// a context is recycled through CPython's context free list (255 entries) before any collection
/// sees it, so tracking costs nothing and untracking would only add work. Above it, every queued
/// context is a fresh allocation that young-generation collections walk and then promote, which
/// triggers full collections: queuing 200,000 `call_soon()` callbacks cost 625 ns per call, 281
/// with the collector off (docs/perf-log.md).
const DEEP_QUEUE: usize = 256;

static FORMAT_CALLBACK_SOURCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static EXTRACT_STACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The fallible part of making a handle: its context (the caller's or a copy of the current one)
/// and, in debug mode, its diagnostics. The handle itself is then assembled infallibly, directly
/// where it is moved into its Python object: building it first and moving it through `Result`s
/// copied the struct several times per callback (perf put most of `LoopBase.schedule`'s own time
/// on those copies).
struct Setup {
    context: Py<PyAny>,
    context_copied: bool,
    debug: bool,
    diagnostics: Option<Box<Diagnostics>>,
}

impl Setup {
    fn new(py: Python<'_>, context: Option<Py<PyAny>>, debug: bool) -> PyResult<Self> {
        let (context, context_copied) = match context {
            Some(ctx) if !ctx.is_none(py) => (ctx, false),
            // SAFETY: PyContext_CopyCurrent returns a new reference or NULL with an exception set.
            _ => unsafe {
                (
                    Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())?.unbind(),
                    true,
                )
            },
        };
        let diagnostics = debug.then(|| {
            Box::new(Diagnostics {
                source_traceback: capture_stack(py),
                frozen_repr: None,
            })
        });
        Ok(Setup {
            context,
            context_copied,
            debug,
            diagnostics,
        })
    }
}

/// What a loop-owned timer adds to a handle.
pub struct TimerSpec {
    pub when: f64,
    pub when_is_int: bool,
    pub cancels: Arc<AtomicUsize>,
}

impl Handle {
    /// Builds a handle from its parts. `queued` is set for a one-shot handle of the loop's, about
    /// to join a queue or heap that already holds that many handles: outside debug mode it is
    /// then loop-owned (see `owned_by_loop`), and its copied context leaves the GC's lists when
    /// the queue is deep (see `DEEP_QUEUE`).
    #[allow(clippy::inline_always)] // inlined into each caller, so the struct is written once
    #[inline(always)]
    fn assemble(
        callback: Py<PyAny>,
        args: CallArgs,
        setup: Setup,
        queued: Option<usize>,
        timer: Option<TimerSpec>,
        native: Option<&'static NativeCall>,
    ) -> Self {
        let owned_by_loop = queued.is_some() && !setup.debug;
        let context_untracked = owned_by_loop && setup.context_copied && queued >= Some(DEEP_QUEUE);
        if context_untracked {
            // SAFETY: a live context object, tracked since its creation by PyContext_CopyCurrent
            // and referred to by this handle alone.
            unsafe { ffi::PyObject_GC_UnTrack(setup.context.as_ptr().cast()) };
        }
        let (when, when_is_int, scheduled, timer_cancels) = match timer {
            Some(t) => (t.when, t.when_is_int, true, Some(t.cancels)),
            None => (0.0, false, false, None),
        };
        Handle {
            callback: Some(callback),
            args: Some(args),
            context: Some(setup.context),
            cancelled: false,
            when,
            scheduled,
            when_is_int,
            timer_cancels,
            debug: setup.debug,
            owned_by_loop,
            native,
            context_untracked,
            diagnostics: setup.diagnostics,
        }
    }

    /// A handle the loop runs many times (fd watchers, signal handlers), as a Python object
    /// tracked by the GC: it keeps its callback until cancelled. `native`, if given, is called on
    /// `callback` (see [`NativeCall`]). Its context is a copy of the current one.
    pub fn persistent(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: CallArgs,
        native: Option<&'static NativeCall>,
        debug: bool,
    ) -> PyResult<Py<Handle>> {
        let setup = Setup::new(py, None, debug)?;
        let handle = Py::new(py, Self::assemble(callback, args, setup, None, None, native))?;
        set_gc_tracked(handle.bind(py).as_any(), true);
        Ok(handle)
    }

    /// A one-shot handle of the loop's (`call_soon`), about to join a queue of `queued` handles:
    /// untracked by the GC unless in debug mode (see `owned_by_loop`). `native`, if given, is
    /// called on `callback` (a task's step or wake-up). Inlined into its two callers, as it was
    /// into the one it had: this runs for every callback.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn loop_owned(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: CallArgs,
        context: Option<Py<PyAny>>,
        debug: bool,
        queued: usize,
        native: Option<&'static NativeCall>,
    ) -> PyResult<Py<Handle>> {
        let setup = Setup::new(py, context, debug)?;
        let handle = Py::new(py, Self::assemble(callback, args, setup, Some(queued), None, native))?;
        set_gc_tracked(handle.bind(py).as_any(), debug);
        Ok(handle)
    }

    /// A one-shot timer of the loop's (`call_at`), about to join a heap of `queued` timers; as
    /// [`Handle::loop_owned`].
    #[allow(clippy::too_many_arguments)] // the parts of a timer handle, each needed
    pub fn loop_owned_timer(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: CallArgs,
        context: Option<Py<PyAny>>,
        debug: bool,
        queued: usize,
        timer: TimerSpec,
    ) -> PyResult<Bound<'_, TimerHandle>> {
        let setup = Setup::new(py, context, debug)?;
        let base = Self::assemble(callback, args, setup, Some(queued), Some(timer), None);
        let handle = Bound::new(py, PyClassInitializer::from(base).add_subclass(TimerHandle))?;
        set_gc_tracked(handle.as_any(), debug);
        Ok(handle)
    }

    /// Puts a context untracked by `assemble` back in the GC's lists.
    fn retrack_context(&mut self) {
        if std::mem::take(&mut self.context_untracked) {
            if let Some(ctx) = &self.context {
                // SAFETY: the context is live (this handle holds it) and untracked: only this
                // handle changes its tracking state, and it untracked it.
                unsafe { ffi::PyObject_GC_Track(ctx.as_ptr().cast()) };
            }
        }
    }

    pub fn is_loop_owned(&self) -> bool {
        self.owned_by_loop
    }

    /// The callback to run. A loop-owned handle, about to run for the only time, hands over its
    /// callback and arguments without reference-count traffic (`restore` gives them back if the
    /// handle outlives the run); other handles keep theirs and hand out new references.
    pub fn take_invocation(&mut self, py: Python<'_>) -> Option<Invocation> {
        if !self.owned_by_loop {
            return self.invocation(py);
        }
        if self.cancelled {
            return None;
        }
        Some(Invocation {
            callback: self.callback.take()?,
            args: self.args.take()?,
            context: self.context.as_ref().map(|c| c.clone_ref(py)),
            native: self.native,
        })
    }

    /// Gives the handle its callback and arguments back (new references) while it is still
    /// loop-owned, so that an exception handler sees the full handle, as with asyncio.
    pub fn restore_for_report(&mut self, py: Python<'_>, invocation: &Invocation) {
        if self.owned_by_loop && !self.cancelled && self.callback.is_none() {
            self.callback = Some(invocation.callback.clone_ref(py));
            self.args = Some(invocation.args.clone_ref(py));
        }
    }

    /// Stops being loop-owned: gives back what `take_invocation` took (unless cancelled since,
    /// as asyncio's `cancel()` drops them) and returns true if the caller must now track it.
    pub fn disown(&mut self, invocation: Option<Invocation>) -> (bool, Option<Invocation>) {
        if !self.owned_by_loop {
            return (false, invocation);
        }
        self.owned_by_loop = false;
        self.retrack_context();
        match invocation {
            Some(inv) if !self.cancelled && self.callback.is_none() => {
                self.callback = Some(inv.callback);
                self.args = Some(inv.args);
                (true, None)
            }
            other => (true, other),
        }
    }

    /// Reports the references of a loop-owned (untracked) handle on the loop's behalf.
    pub fn visit_owned(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if self.owned_by_loop {
            visit.call(&self.callback)?;
            if let Some(args) = &self.args {
                args.traverse(visit)?;
            }
            visit.call(&self.context)?;
            if self.context_untracked {
                if let Some(ctx) = &self.context {
                    // The GC does not look inside an untracked context: report what it refers
                    // to (its variables) as the loop's, or a cycle through a context variable
                    // back to the loop could never be collected.
                    visit_referents(ctx, visit)?;
                }
            }
        }
        Ok(())
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// The object a native-call handle calls its method on (`None` for other handles).
    pub fn native_target(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.native?;
        self.callback.as_ref().map(|c| c.clone_ref(py))
    }

    /// The callback and, for a native call, the method to look up on it: copied out of the
    /// borrow, so that looking the bound method up (which allocates) happens after it ends.
    fn callback_parts(&self, py: Python<'_>) -> Option<(Py<PyAny>, Option<&'static NativeCall>)> {
        self.callback.as_ref().map(|c| (c.clone_ref(py), self.native))
    }

    pub fn source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.diagnostics
            .as_ref()
            .and_then(|d| d.source_traceback.as_ref())
            .map(|tb| tb.clone_ref(py))
    }

    /// The callback, arguments and context to run, or `None` if the handle was cancelled.
    pub fn invocation(&self, py: Python<'_>) -> Option<Invocation> {
        if self.cancelled {
            return None;
        }
        Some(Invocation {
            callback: self.callback.as_ref()?.clone_ref(py),
            args: self.args.as_ref()?.clone_ref(py),
            context: self.context.as_ref().map(|c| c.clone_ref(py)),
            native: self.native,
        })
    }

    fn do_cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let debug = {
            let mut h = slf.borrow_mut();
            if h.cancelled {
                return Ok(());
            }
            h.cancelled = true;
            if h.scheduled {
                if let Some(counter) = &h.timer_cancels {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            h.debug
        };
        // In debug mode the repr (now saying "cancelled") is kept before the callback goes, so
        // later diagnostics can still name it. Rendering calls Python code: no borrow is held.
        let frozen = if debug { Some(Self::render_repr(slf)?) } else { None };
        let (callback, args) = {
            let mut h = slf.borrow_mut();
            if let Some(frozen) = frozen {
                h.diagnostics.get_or_insert_with(Box::default).frozen_repr = Some(frozen);
            }
            (h.callback.take(), h.args.take())
        };
        // Dropped here, outside the borrow: releasing them can run arbitrary Python code.
        drop((callback, args));
        Ok(())
    }

    fn render_repr(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let class_name = slf.get_type().name()?.to_string();
        let (cancelled, is_timer, when, callback, args, traceback) = {
            let h = slf.borrow();
            if let Some(r) = h.diagnostics.as_ref().and_then(|d| d.frozen_repr.as_ref()) {
                return Ok(r.clone());
            }
            (
                h.cancelled,
                h.timer_cancels.is_some(),
                h.when,
                h.callback_parts(py),
                h.args.as_ref().map(|a| a.clone_ref(py)),
                h.source_traceback(py),
            )
        };
        let callback = callback
            .map(|(c, native)| public_callback(py, &c, native))
            .transpose()?;
        let mut info = vec![class_name];
        if cancelled {
            info.push("cancelled".to_owned());
        }
        if is_timer {
            info.push(format!("when={}", PyFloat::new(py, when).repr()?));
        }
        if let Some(callback) = callback {
            let args = args.unwrap_or(CallArgs::None);
            info.push(format_callback_source(py, &callback, &args)?);
        }
        if let Some(tb) = traceback {
            let tb = tb.bind(py);
            if tb.len()? > 0 {
                let frame = tb.get_item(-1)?;
                let (file, line): (String, usize) = (frame.get_item(0)?.extract()?, frame.get_item(1)?.extract()?);
                info.push(format!("created at {file}:{line}"));
            }
        }
        Ok(format!("<{}>", info.join(" ")))
    }
}

/// Calls `visit` on each object `obj` refers to, through its type's `tp_traverse`.
fn visit_referents(obj: &Py<PyAny>, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
    struct Forward<'a, 'v> {
        visit: &'a PyVisit<'v>,
        error: Option<PyTraverseError>,
    }

    unsafe extern "C" fn forward(referent: *mut ffi::PyObject, arg: *mut std::ffi::c_void) -> std::ffi::c_int {
        // SAFETY: `arg` is the `Forward` below, alive for the whole tp_traverse call; `referent`
        // is a live object the traversed one holds. It is wrapped without an incref and never
        // dropped, so its reference count is untouched.
        unsafe {
            let forward = &mut *arg.cast::<Forward<'_, '_>>();
            let referent =
                std::mem::ManuallyDrop::new(Py::<PyAny>::from_owned_ptr(Python::assume_attached(), referent));
            match forward.visit.call(&*referent) {
                Ok(()) => 0,
                Err(err) => {
                    forward.error = Some(err);
                    1
                }
            }
        }
    }

    let mut state = Forward { visit, error: None };
    // SAFETY: `obj` is a live object of a GC type (a context), traversed with the GIL held
    // during a collection, as its tp_traverse expects.
    unsafe {
        if let Some(traverse) = (*ffi::Py_TYPE(obj.as_ptr())).tp_traverse {
            if traverse(obj.as_ptr(), forward, (&raw mut state).cast()) != 0 {
                return state.error.map_or(Ok(()), Err);
            }
        }
    }
    Ok(())
}

/// `callback(args) at file:line`, as asyncio's `format_helpers._format_callback_source` writes it
/// (in handle reprs and "Exception in callback ..." messages).
pub fn format_callback_source(py: Python<'_>, callback: &Py<PyAny>, args: &CallArgs) -> PyResult<String> {
    let formatter = FORMAT_CALLBACK_SOURCE.import(py, "asyncio.format_helpers", "_format_callback_source")?;
    formatter.call1((callback, args.to_tuple(py)?))?.extract()
}

/// Puts `obj` (of a GC type) in or out of the GC's lists. Objects recycled through the handles'
/// free lists (`free_list`) come back untracked whatever they were, so every creation site says what it wants.
pub fn set_gc_tracked(obj: &Bound<'_, PyAny>, tracked: bool) {
    let ptr = obj.as_ptr();
    // SAFETY: `obj` is a live object of a GC type (Handle or a subclass); tracking state is only
    // changed when it differs, as the C API requires.
    unsafe {
        let is_tracked = ffi::PyObject_GC_IsTracked(ptr) != 0;
        if tracked && !is_tracked {
            ffi::PyObject_GC_Track(ptr.cast());
        } else if !tracked && is_tracked {
            ffi::PyObject_GC_UnTrack(ptr.cast());
        }
    }
}

/// The caller's stack as asyncio's `format_helpers.extract_stack` formats it. Called from a
/// native method, frame 0 is the Python code that called the loop method.
fn capture_stack(py: Python<'_>) -> Option<Py<PyAny>> {
    let frame = py.import("sys").ok()?.getattr("_getframe").ok()?.call1((0,)).ok()?;
    let extract = EXTRACT_STACK
        .import(py, "asyncio.format_helpers", "extract_stack")
        .ok()?;
    extract.call1((frame,)).ok().map(Bound::unbind)
}

/// Runs `inv` inside its context, like `context.run(callback, *args)` but without building an
/// argument tuple for `run`.
pub fn invoke(py: Python<'_>, inv: &Invocation) -> PyResult<()> {
    let ctx = inv.context.as_ref().map_or(std::ptr::null_mut(), Py::as_ptr);
    // SAFETY: all pointers are live references held by `inv` for the duration of the call; every
    // successful PyContext_Enter is paired with PyContext_Exit, and the result reference is
    // consumed or released.
    unsafe {
        if !ctx.is_null() && ffi::PyContext_Enter(ctx) < 0 {
            return Err(PyErr::fetch(py));
        }
        let call_result = if let Some(native) = inv.native {
            (native.call)(inv.callback.bind(py), &inv.args)
        } else {
            let result = inv.args.call(inv.callback.as_ptr());
            if result.is_null() {
                Err(PyErr::fetch(py))
            } else {
                ffi::Py_DECREF(result);
                Ok(())
            }
        };
        if !ctx.is_null() && ffi::PyContext_Exit(ctx) < 0 {
            let exit_err = PyErr::fetch(py);
            return call_result.and(Err(exit_err));
        }
        call_result
    }
}

#[pymethods]
impl Handle {
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::do_cancel(slf)
    }

    fn cancelled(&self) -> bool {
        self.cancelled
    }

    fn get_context(&mut self, py: Python<'_>) -> Option<Py<PyAny>> {
        // Python code may now build reference cycles through it: the GC must see it.
        self.retrack_context();
        self.context.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _callback(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        let parts = slf.borrow().callback_parts(py);
        parts.map(|(c, native)| public_callback(py, &c, native)).transpose()
    }

    #[getter]
    fn _args(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyTuple>>> {
        // Copied out first: building the tuple allocates, which may run a collection and with it
        // finalizers that cancel this very handle.
        let args = slf.borrow().args.as_ref().map(|a| a.clone_ref(slf.py()));
        args.map(|a| a.to_tuple(slf.py())).transpose()
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.cancelled
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        Handle::render_repr(slf)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.callback)?;
        if let Some(args) = &self.args {
            args.traverse(&visit)?;
        }
        visit.call(&self.context)?;
        if let Some(diagnostics) = &self.diagnostics {
            visit.call(&diagnostics.source_traceback)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.retrack_context();
        self.callback = None;
        self.args = None;
        self.context = None;
        if let Some(diagnostics) = &mut self.diagnostics {
            diagnostics.source_traceback = None;
        }
    }
}

/// A handle with a deadline. All state lives in the base `Handle`; this class adds the timer
/// methods, so the loop stores every handle as a `Handle`.
// Both types recycle their objects through `free_list`, each in its own list.
#[pyclass(extends = Handle, module = "ferroloop._ferroloop")]
pub struct TimerHandle;

impl TimerHandle {
    /// The deadline as the Python number it was given as: a float, or an int (see `when_is_int`).
    #[allow(clippy::cast_possible_truncation)] // exact: `when_is_int` is set only for such values
    fn deadline(slf: &PyRef<'_, Self>) -> Py<PyAny> {
        let py = slf.py();
        let base = slf.as_super();
        if base.when_is_int {
            pyo3::types::PyInt::new(py, base.when as i64).into_any().unbind()
        } else {
            PyFloat::new(py, base.when).into_any().unbind()
        }
    }
}

#[pymethods]
impl TimerHandle {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<(Self, Handle)> {
        Err(PyRuntimeError::new_err(
            "TimerHandle objects are created by the loop's call_later() and call_at()",
        ))
    }

    fn when(slf: PyRef<'_, Self>) -> Py<PyAny> {
        Self::deadline(&slf)
    }

    #[getter]
    fn _when(slf: PyRef<'_, Self>) -> Py<PyAny> {
        Self::deadline(&slf)
    }

    #[getter]
    fn _scheduled(slf: PyRef<'_, Self>) -> bool {
        slf.as_super().scheduled
    }

    fn __hash__(slf: PyRef<'_, Self>) -> PyResult<isize> {
        let py = slf.py();
        PyFloat::new(py, slf.as_super().when).hash()
    }

    fn __richcmp__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        // Copied out first: comparing callbacks and arguments runs Python code, which may touch
        // (even cancel) these very handles.
        let (a, b) = (
            TimerKey::of(py, &slf.as_super().borrow()),
            TimerKey::of(py, &other.as_super().borrow()),
        );
        // asyncio compares `_cancelled` last, after the callbacks ran their `__eq__`: read it then.
        let timer_eq = |py, a: &TimerKey, b: &TimerKey| -> PyResult<bool> {
            Ok(timer_eq(py, a, b)? && slf.as_super().borrow().cancelled == other.as_super().borrow().cancelled)
        };
        let result = match op {
            CompareOp::Lt => a.when < b.when,
            CompareOp::Le => a.when < b.when || timer_eq(py, &a, &b)?,
            CompareOp::Gt => a.when > b.when,
            CompareOp::Ge => a.when > b.when || timer_eq(py, &a, &b)?,
            CompareOp::Eq => timer_eq(py, &a, &b)?,
            CompareOp::Ne => !timer_eq(py, &a, &b)?,
        };
        Ok(pyo3::types::PyBool::new(py, result).to_owned().into_any().unbind())
    }
}

/// What asyncio's `TimerHandle.__eq__` compares before `_cancelled`, taken out of a handle.
struct TimerKey {
    when: f64,
    callback: Option<Py<PyAny>>,
    args: Option<CallArgs>,
}

impl TimerKey {
    fn of(py: Python<'_>, h: &Handle) -> Self {
        TimerKey {
            when: h.when,
            callback: h.callback.as_ref().map(|c| c.clone_ref(py)),
            args: h.args.as_ref().map(|a| a.clone_ref(py)),
        }
    }
}

fn timer_eq(py: Python<'_>, a: &TimerKey, b: &TimerKey) -> PyResult<bool> {
    fn same(py: Python<'_>, x: Option<&Py<PyAny>>, y: Option<&Py<PyAny>>) -> PyResult<bool> {
        match (x, y) {
            (None, None) => Ok(true),
            (Some(x), Some(y)) => x.bind(py).eq(y.bind(py)),
            _ => Ok(false),
        }
    }
    let args = |key: &TimerKey| key.args.as_ref().map(|a| a.to_tuple(py).map(Py::into_any)).transpose();
    Ok(a.when == b.when
        && same(py, a.callback.as_ref(), b.callback.as_ref())?
        && same(py, args(a)?.as_ref(), args(b)?.as_ref())?)
}
