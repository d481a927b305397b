//! The hot methods of `SocketTransport` (a Python class) as native method descriptors.
//!
//! A protocol calls `transport.write(data)` once per message, and asyncio's streams call
//! `transport.is_closing()` in every `drain()`. Written in Python, each was a frame that only
//! forwarded to the native core. Binding the core's methods on each instance avoided the frame
//! but cost a bound-method object per connection (transports have no `__dict__` now, to keep
//! idle connections small). These descriptors, installed on the class once, reach the core
//! through the transport's `_core` slot and call its Rust methods directly: no frame, no
//! per-connection object, no second method lookup or argument parsing.

use super::socket::SocketCore;
use crate::method_defs::{self, fastcall_entry, MethodDef};
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::impl_::trampoline::noargs;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyType;

static WRITE: MethodDef = MethodDef::fastcall(
    c"write",
    write,
    c"write($self, data, /)\n--\n\nWrite bytes-like data to the transport without blocking; what cannot be sent now is buffered.",
);

static IS_CLOSING: MethodDef = MethodDef::noargs(
    c"is_closing",
    is_closing,
    c"is_closing($self, /)\n--\n\nReturn True if the transport is closing or closed.",
);

/// Installs the descriptors on `cls` (`SocketTransport`), replacing its Python methods.
#[pyfunction]
pub fn _install_socket_transport_methods(cls: &Bound<'_, PyType>) -> PyResult<()> {
    method_defs::install(cls, &[&WRITE, &IS_CLOSING])
}

/// The transport's core (its `_core` slot; `AttributeError` until `__init__` has set it, as the
/// Python methods raised).
fn core<'py>(transport: &Bound<'py, PyAny>) -> PyResult<Bound<'py, SocketCore>> {
    let core = transport.getattr(intern!(transport.py(), "_core"))?;
    Ok(core.cast_into::<SocketCore>()?)
}

fastcall_entry!(write => write_impl);

/// `write(data)`.
///
/// # Safety
/// The arguments of a `METH_FASTCALL | METH_KEYWORDS` call, as CPython passes them.
unsafe fn write_impl(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: `args` holds `nargs` positional values and `kwnames` is null or a tuple; all are
    // borrowed for the duration of the call.
    unsafe {
        let nargs = ffi::PyVectorcall_NARGS(nargsf as usize);
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames)
        };
        if nargs != 1 || nkw != 0 {
            return Err(PyTypeError::new_err(format!(
                "write() takes exactly one positional argument ({} given)",
                nargs + nkw
            )));
        }
        let transport = Bound::from_borrowed_ptr(py, slf);
        let data = Bound::from_borrowed_ptr(py, *args);
        SocketCore::write(&core(&transport)?, &data)?;
        Ok(ffi::Py_NewRef(ffi::Py_None()))
    }
}

unsafe extern "C" fn is_closing(slf: *mut ffi::PyObject, args: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: called by CPython as a `METH_NOARGS` method, with the GIL held.
    unsafe { noargs(slf, args, is_closing_impl) }
}

unsafe fn is_closing_impl(py: Python<'_>, slf: *mut ffi::PyObject) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: `slf` is the borrowed `self` of the call.
    let transport = unsafe { Bound::from_borrowed_ptr(py, slf) };
    let closing = SocketCore::is_closing(&core(&transport)?)?;
    Ok(pyo3::types::PyBool::new(py, closing).to_owned().into_ptr())
}
