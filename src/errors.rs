//! Mapping of OS errors to Python exceptions.
//!
//! An `io::Error` becomes `OSError(errno, strerror)`: `CPython`'s `OSError` constructor then picks
//! the matching subclass (`ConnectionRefusedError`, `BlockingIOError`, ...) and sets `errno`, which
//! asyncio code inspects. `PyO3`'s blanket conversion would leave `errno` unset.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use std::io;

pub fn os_error(err: &io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(code) => {
            let message = io::Error::from_raw_os_error(code).to_string();
            // std appends " (os error N)"; strerror's text is what Python users expect.
            let strerror = message.split(" (os error").next().unwrap_or(&message).to_owned();
            PyOSError::new_err((code, strerror))
        }
        None => PyOSError::new_err(err.to_string()),
    }
}
