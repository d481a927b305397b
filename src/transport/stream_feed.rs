//! Received data for asyncio's streams, handed straight to the `StreamReader`.
//!
//! `asyncio.open_connection()` and `start_server()` put a `StreamReaderProtocol` on the
//! transport, whose `data_received(data)` only looks its reader up (through a property that
//! calls a weak reference) and calls `reader.feed_data(data)`. Those two Python frames cost about
//! as much as the rest of delivering a message (callgrind of the streams echo benchmark), so for
//! exactly that class, while its `data_received` is still asyncio's own, the transport does the
//! same steps itself. A subclass, or a patched or wrapped method, gets its `data_received` called.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyType};

/// `asyncio.StreamReaderProtocol` and its `data_received` function, as first seen.
struct StreamProtocol {
    cls: Py<PyType>,
    data_received: Py<PyAny>,
}

static STREAM_PROTOCOL: PyOnceLock<Option<StreamProtocol>> = PyOnceLock::new();

fn stream_protocol(py: Python<'_>) -> Option<&StreamProtocol> {
    STREAM_PROTOCOL
        .get_or_init(py, || {
            // Without it (an interpreter whose asyncio lacks it) every protocol is called as usual.
            let cls = py
                .import("asyncio.streams")
                .and_then(|m| m.getattr("StreamReaderProtocol"))
                .and_then(|c| Ok(c.cast_into::<PyType>()?))
                .ok()?;
            let data_received = cls.getattr("data_received").ok()?.unbind();
            Some(StreamProtocol {
                cls: cls.unbind(),
                data_received,
            })
        })
        .as_ref()
}

/// Where a stream protocol's data goes.
enum Route<'py> {
    /// A plain `StreamReaderProtocol`'s reader.
    Reader(Bound<'py, PyAny>),
    /// A plain `StreamReaderProtocol` whose reader is gone: its `data_received` drops the data.
    Nowhere,
    /// Any other protocol: its own `data_received`.
    Protocol,
}

/// Delivers `data` to `protocol` as `protocol.data_received(data)` does.
pub fn data_received(protocol: &Bound<'_, PyAny>, data: Bound<'_, PyBytes>) -> PyResult<()> {
    let py = protocol.py();
    match route(protocol) {
        Route::Reader(reader) => reader.call_method1(intern!(py, "feed_data"), (data,)).map(drop),
        Route::Nowhere => Ok(()),
        Route::Protocol => protocol.call_method1(intern!(py, "data_received"), (data,)).map(drop),
    }
}

fn route<'py>(protocol: &Bound<'py, PyAny>) -> Route<'py> {
    let py = protocol.py();
    let Some(known) = stream_protocol(py) else {
        return Route::Protocol;
    };
    let cls = known.cls.bind(py);
    let original = || {
        cls.getattr(intern!(py, "data_received"))
            .is_ok_and(|f| f.is(&known.data_received))
    };
    if !protocol.get_type().is(cls) || !original() {
        return Route::Protocol;
    }
    // asyncio 3.8+ keeps the reader behind a weak reference (None once the connection lost it).
    let Ok(weak) = protocol.getattr(intern!(py, "_stream_reader_wr")) else {
        return Route::Protocol;
    };
    if weak.is_none() {
        return Route::Nowhere;
    }
    match weak.call0() {
        Ok(reader) if reader.is_none() => Route::Nowhere,
        Ok(reader) => Route::Reader(reader),
        Err(_) => Route::Protocol,
    }
}
