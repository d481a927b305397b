//! Free lists for the objects the loop makes per callback: `Handle` and `TimerHandle`, and per
//! `await` of a ferroloop task or future: the iterator it drives. (Objects with a finalizer
//! cannot be recycled this way: see `crate::task`.)
//!
//! A handle lives for one turn of the loop, so reusing freed ones saves the allocator, the
//! zeroing and the garbage collector's allocation count (which schedules young collections).
//! PyO3's own `freelist` option does the same behind a `Mutex`, taken twice per handle; these
//! lists are only touched from `tp_alloc` and `tp_free`, which CPython calls with the GIL held,
//! so the GIL is all the locking they need (the module declares that it needs the GIL, so a
//! free-threaded interpreter runs it with the GIL enabled).
//!
//! The lists are installed by replacing the types' `tp_alloc` and `tp_free` slots once the types
//! exist. A recycled object comes back untracked by the GC, as PyO3's lists return them: every
//! creation site sets the tracking it wants.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::PyTypeInfo;
use std::cell::UnsafeCell;

/// Objects kept per type while the loop is busy (2 MiB of handles at most); beyond it, freed
/// objects go back to CPython's allocator. Large because queues fill in bursts: another thread
/// submitting with `call_soon_threadsafe()` queues thousands of callbacks per GIL slice, and
/// CPython's allocator unmaps an arena as soon as it empties, so every burst faulted its pages in
/// again. 2 million such callbacks: 62,000 page faults and 0.57 s with 1024 objects, 47,000 and
/// 0.48 s with 16384 (docs/perf-log.md). 65536 measured no better in the benchmark's row.
const CAPACITY: usize = 16384;

/// What each list keeps once a loop has been idle (see [`trim`]).
const IDLE_CAPACITY: usize = 1024;

/// The most objects the list of `await` iterators keeps: they come and go with the tasks of a
/// burst rather than with its callbacks.
const TASK_CAPACITY: usize = 4096;

struct FreeList {
    /// The exact type this list recycles (subclasses made in Python allocate as usual).
    ty: UnsafeCell<*mut ffi::PyTypeObject>,
    objects: UnsafeCell<Vec<*mut ffi::PyObject>>,
    capacity: usize,
}

// SAFETY: every access happens in `install`, `alloc`, `free` or `trim`, all called with the GIL
// held, and the GIL serialises them.
unsafe impl Sync for FreeList {}

impl FreeList {
    const fn new(capacity: usize) -> Self {
        FreeList {
            ty: UnsafeCell::new(std::ptr::null_mut()),
            objects: UnsafeCell::new(Vec::new()),
            capacity,
        }
    }
}

static LISTS: [FreeList; 3] = [
    FreeList::new(CAPACITY),
    FreeList::new(CAPACITY),
    FreeList::new(TASK_CAPACITY),
];
const HANDLE: usize = 0;
const TIMER_HANDLE: usize = 1;
/// The list of `crate::task`'s `await` iterator.
pub const TASK_ITER: usize = 2;

/// `tp_alloc` of a type with a free list.
///
/// # Safety
/// CPython's contract for `tp_alloc`: GIL held, `subtype` a live type object.
unsafe extern "C" fn alloc<const LIST: usize>(
    subtype: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    let list = &LISTS[LIST];
    // SAFETY: the GIL is held (see `FreeList`); a recycled object is a whole, untracked object of
    // `subtype` whose contents were dropped, which PyObject_Init turns into a new reference. Like
    // a fresh allocation, that takes a reference to the heap type (which PyO3 0.27's deallocation
    // never gives back, on either path; fixed in later PyO3 releases): the balance is unchanged.
    unsafe {
        if nitems == 0 && std::ptr::eq(subtype, *list.ty.get()) {
            if let Some(obj) = (*list.objects.get()).pop() {
                return ffi::PyObject_Init(obj, subtype);
            }
        }
        ffi::PyType_GenericAlloc(subtype, nitems)
    }
}

/// `tp_free` of a type with a free list.
///
/// # Safety
/// CPython's contract for `tp_free`: GIL held, `obj` an object whose deallocation is finishing
/// (untracked, contents dropped).
unsafe extern "C" fn free<const LIST: usize>(obj: *mut std::ffi::c_void) {
    let list = &LISTS[LIST];
    let obj = obj.cast::<ffi::PyObject>();
    // SAFETY: as for `alloc`; the object's memory stays valid while it is in the list.
    unsafe {
        let objects = &mut *list.objects.get();
        if std::ptr::eq(ffi::Py_TYPE(obj), *list.ty.get()) && objects.len() < list.capacity {
            objects.push(obj);
        } else {
            ffi::PyObject_GC_Del(obj.cast());
        }
    }
}

/// Whether a list holds more than its idle size, so that an idle loop should [`trim`] it.
pub fn holds_surplus(_py: Python<'_>) -> bool {
    // SAFETY: the GIL is held (the token says so).
    LISTS
        .iter()
        .any(|list| unsafe { (*list.objects.get()).len() > IDLE_CAPACITY })
}

/// Gives back to CPython's allocator what the lists hold beyond their idle size. The loop calls
/// this after a poll that waited long enough to call the loop idle, so a burst's handles are
/// not kept for the life of the process.
pub fn trim(_py: Python<'_>) {
    for list in &LISTS {
        // SAFETY: the GIL is held (the token says so); the objects in a list are whole, untracked
        // objects of its type with their contents dropped, which PyObject_GC_Del frees as `free`
        // does.
        unsafe {
            let objects = &mut *list.objects.get();
            if objects.len() > IDLE_CAPACITY {
                for obj in objects.drain(IDLE_CAPACITY..) {
                    ffi::PyObject_GC_Del(obj.cast());
                }
                objects.shrink_to(IDLE_CAPACITY);
            }
        }
    }
}

/// Gives `T`'s type the free list `LIST`.
fn install_for<T: PyTypeInfo, const LIST: usize>(py: Python<'_>) {
    // SAFETY: PyO3's pyclasses are GC heap types freed with PyObject_GC_Del.
    unsafe { install_raw::<LIST>(T::type_object_raw(py)) };
}

/// Gives the type `ty` the free list `LIST`. Objects come back from the list untracked by the
/// GC and with their old (dropped) contents: whatever makes them must initialise every field it
/// uses and track the object. The type must have no finalizer (see the module's doc).
///
/// # Safety
/// The GIL must be held; `ty` must be a live heap type whose instances are GC objects freed with
/// `PyObject_GC_Del`, and `LIST` used for no other type.
pub unsafe fn install_raw<const LIST: usize>(ty: *mut ffi::PyTypeObject) {
    // SAFETY: per the contract. Objects allocated before the swap are freed through `free`,
    // which only keeps objects of the exact type, so any of them is fine.
    unsafe {
        *LISTS[LIST].ty.get() = ty;
        (*ty).tp_alloc = Some(alloc::<LIST>);
        (*ty).tp_free = Some(free::<LIST>);
    }
}

/// Installs the free lists of `Handle` and `TimerHandle`.
pub fn install(py: Python<'_>) {
    install_for::<crate::handles::Handle, HANDLE>(py);
    install_for::<crate::handles::TimerHandle, TIMER_HANDLE>(py);
}
