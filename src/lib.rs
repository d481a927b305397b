//! ferroloop's native module, `ferroloop._ferroloop`.
//!
//! The engine of an asyncio event loop: ready queue, timer heap, fd watchers and the poll, all of
//! the per-callback and per-event work. The Python package (`python/ferroloop`) subclasses
//! [`event_loop::LoopBase`] into the full `asyncio.AbstractEventLoop`.

mod call_args;
mod clock;
mod errors;
mod event_loop;
mod free_list;
mod handles;
mod method_defs;
mod native_type;
// Public for the pure-Rust ceiling server in bench/ceiling-server, which measures the same poller
// with no Python in the way.
pub mod poller;
mod task;
mod timers;
mod transport;

use pyo3::prelude::*;

#[pymodule]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopBase>()?;
    event_loop::install_fast_calls(m.py())?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    free_list::install(m.py());
    task::init(m)?;
    m.add_class::<transport::socket::SocketCore>()?;
    m.add_class::<transport::pipe::PipeCore>()?;
    m.add_class::<transport::sock_wait::RecvWaiter>()?;
    m.add_class::<transport::sock_call::SockCall>()?;
    transport::sock_call::install(m.py());
    m.add_function(wrap_pyfunction!(transport::sock_wait::sock_recv, m)?)?;
    m.add_function(wrap_pyfunction!(
        transport::fast_methods::_install_socket_transport_methods,
        m
    )?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
