//! Exposes PyO3's `Py_3_*` cfg flags for the interpreter being built against, so that code using
//! a slot newer than the oldest supported Python (`am_send`, 3.10) can be compiled conditionally.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
