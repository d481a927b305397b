//! The datagram side of `SocketCore`: asyncio's `_SelectorDatagramTransport` (UDP and Unix
//! datagram sockets).
//!
//! Each readable turn receives one datagram and calls `datagram_received(data, addr)`; OS errors
//! go to `error_received(exc)` and leave the endpoint open, as with asyncio. `sendto()` sends at
//! once when nothing is queued; datagrams the kernel refuses for now are queued whole, with their
//! address, and sent in order when the socket is writable.
//!
//! Received addresses are built here for IPv4, IPv6 and Unix sockets, in exactly the form the
//! `socket` module gives; sockets of other families, and `sendto()` to an address on an
//! unconnected socket, go through the Python socket object so that every address form (and name
//! lookup) behaves exactly as `socket.sendto()`/`recvfrom()` do.

use super::{report_write_type_error, SocketCore};
use crate::errors::os_error;
use crate::event_loop::Side;
use crate::transport::link;
use crate::transport::{is_fatal, is_os_error, is_retry, logger, with_buffer, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use crate::transport::{with_read_buffer, MAX_READ};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::{ffi, intern, PyTraverseError, PyVisit};
use std::collections::VecDeque;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::RawFd;

/// A queued datagram: immutable bytes (asyncio copies into `bytes` too) and its address.
pub(super) type Datagram = (Py<PyBytes>, Py<PyAny>);

pub(super) struct DatagramState {
    /// The remote address of an endpoint created with `remote_addr=`; `sendto()` accepts only
    /// it (or None).
    address: Option<Py<PyAny>>,
    /// The socket has a peer: send with `send()`, not `sendto()`.
    connected: bool,
    /// Received addresses can be decoded natively (IPv4, IPv6, Unix).
    native_addresses: bool,
    queue: VecDeque<Datagram>,
    queued_bytes: usize,
}

impl DatagramState {
    pub(super) fn new(address: Option<Py<PyAny>>, connected: bool, family: i32) -> Self {
        DatagramState {
            address,
            connected,
            native_addresses: matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX),
            queue: VecDeque::new(),
            queued_bytes: 0,
        }
    }

    pub(super) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub(super) fn clear(&mut self) -> VecDeque<Datagram> {
        self.queued_bytes = 0;
        std::mem::take(&mut self.queue)
    }

    pub(super) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.address)?;
        for (data, addr) in &self.queue {
            visit.call(data)?;
            visit.call(addr)?;
        }
        Ok(())
    }
}

/// One `send()`/`sendto()` outcome, with the error already a Python exception.
enum Sent {
    Done,
    NotNow,
    Failed(PyErr),
}

fn send_native(fd: RawFd, data: &[u8]) -> io::Result<()> {
    // SAFETY: `data` is valid for reads of its length.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn send_one(slf: &Bound<'_, SocketCore>, data: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>) -> PyResult<Sent> {
    let py = slf.py();
    let (fd, connected, sock) = {
        let s = slf.borrow();
        let connected = s.datagram.as_ref().is_some_and(|d| d.connected);
        (s.link.fd, connected, s.sock.as_ref().map(|o| o.clone_ref(py)))
    };
    let outcome = if connected {
        with_buffer(data, |bytes| send_native(fd, bytes))?.map_err(|e| (is_retry(&e), os_error(&e)))
    } else {
        let Some(sock) = sock else {
            return Ok(Sent::Done);
        };
        sock.call_method1(py, intern!(py, "sendto"), (data, addr))
            .map(drop)
            .map_err(|e| {
                let retry = e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
                    || e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py);
                (retry, e)
            })
    };
    Ok(match outcome {
        Ok(()) => Sent::Done,
        Err((true, _)) => Sent::NotNow,
        Err((false, err)) => Sent::Failed(err),
    })
}

/// `error_received(exc)` for OS errors (the endpoint stays open), `_fatal_error` for the rest.
fn send_failed(slf: &Bound<'_, SocketCore>, err: PyErr) -> PyResult<()> {
    let py = slf.py();
    if is_fatal(py, &err) {
        return Err(err);
    }
    let exc = err.into_value(py).into_any();
    if is_os_error(exc.bind(py)) {
        return error_received(slf, exc.bind(py));
    }
    SocketCore::fatal_error(slf, exc.bind(py), "Fatal write error on datagram transport")
}

fn error_received(slf: &Bound<'_, SocketCore>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    let protocol = slf.borrow().link.protocol.as_ref().map(|p| p.clone_ref(py));
    if let Some(protocol) = protocol {
        protocol.call_method1(py, intern!(py, "error_received"), (exc,))?;
    }
    Ok(())
}

pub(super) fn sendto(slf: &Bound<'_, SocketCore>, data: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    report_write_type_error(data)?;
    if data.len()? == 0 {
        return Ok(());
    }
    let mut addr = addr.clone();
    let (address, conn_lost) = {
        let s = slf.borrow();
        let d = s.datagram.as_ref().expect("sendto() on a stream transport");
        (d.address.as_ref().map(|a| a.clone_ref(py)), s.conn_lost)
    };
    if let Some(address) = address {
        let address = address.into_bound(py);
        if !(addr.is_none() || addr.eq(&address)?) {
            return Err(PyValueError::new_err(format!(
                "Invalid address: must be None or {}",
                address.str()?
            )));
        }
        addr = address;
    }
    if conn_lost > 0 {
        // asyncio warns and drops for connected endpoints; an unconnected one would fail on its
        // closed socket, and is dropped the same way here.
        slf.borrow_mut().conn_lost += 1;
        if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
            logger(py)?.call_method1(intern!(py, "warning"), ("socket.send() raised exception.",))?;
        }
        return Ok(());
    }
    let queue_empty = slf.borrow().datagram.as_ref().is_some_and(|d| d.queue.is_empty());
    if queue_empty {
        match send_one(slf, data, &addr)? {
            Sent::Done => return Ok(()),
            Sent::NotNow => link::watch(slf, Side::Write)?,
            Sent::Failed(err) => return send_failed(slf, err),
        }
    }
    // Queue an immutable copy, as asyncio does.
    let bytes = with_buffer(data, |b| PyBytes::new(py, b).unbind())?;
    {
        let mut s = slf.borrow_mut();
        let d = s.datagram.as_mut().expect("datagram state");
        d.queued_bytes += bytes.bind(py).as_bytes().len();
        d.queue.push_back((bytes, addr.unbind()));
    }
    link::maybe_pause_protocol(slf)
}

/// The writer callback: send queued datagrams in order until the kernel refuses one.
pub(super) fn sendto_ready(slf: &Bound<'_, SocketCore>) -> PyResult<()> {
    let py = slf.py();
    loop {
        let next = {
            let mut s = slf.borrow_mut();
            let d = s.datagram.as_mut().expect("datagram state");
            let next = d.queue.pop_front();
            if let Some((data, _)) = &next {
                d.queued_bytes -= data.bind(py).as_bytes().len();
            }
            next
        };
        let Some((data, addr)) = next else { break };
        match send_one(slf, data.bind(py).as_any(), addr.bind(py))? {
            Sent::Done => {}
            Sent::NotNow => {
                let mut s = slf.borrow_mut();
                let d = s.datagram.as_mut().expect("datagram state");
                d.queued_bytes += data.bind(py).as_bytes().len();
                d.queue.push_front((data, addr));
                break;
            }
            Sent::Failed(err) => return send_failed(slf, err),
        }
    }
    // May queue more.
    link::maybe_resume_protocol(slf)?;
    let (empty, closing) = {
        let s = slf.borrow();
        (s.unsent() == 0, s.closing)
    };
    if empty {
        link::unwatch(slf, Side::Write)?;
        if closing {
            SocketCore::_call_connection_lost(slf, py.None())?;
        }
    }
    Ok(())
}

/// The reader callback: one datagram to `datagram_received`, or an OS error to `error_received`.
pub(super) fn read_ready(slf: &Bound<'_, SocketCore>) -> PyResult<()> {
    let py = slf.py();
    let (fd, native, sock, protocol) = {
        let s = slf.borrow();
        if s.conn_lost > 0 {
            return Ok(());
        }
        (
            s.link.fd,
            s.datagram.as_ref().is_some_and(|d| d.native_addresses),
            s.sock.as_ref().map(|o| o.clone_ref(py)),
            s.link.protocol.as_ref().map(|p| p.clone_ref(py)),
        )
    };
    let received = if native {
        recv_from(py, fd)
    } else {
        let Some(sock) = sock else { return Ok(()) };
        sock.call_method1(py, intern!(py, "recvfrom"), (MAX_READ,))
            .and_then(|pair| pair.extract::<(Py<PyAny>, Py<PyAny>)>(py))
    };
    let (data, addr) = match received {
        Ok(pair) => pair,
        Err(err) if is_fatal(py, &err) => return Err(err),
        Err(err) => {
            let exc = err.into_value(py).into_any();
            let exc = exc.bind(py);
            if exc.is_instance_of::<pyo3::exceptions::PyBlockingIOError>()
                || exc.is_instance_of::<pyo3::exceptions::PyInterruptedError>()
            {
                return Ok(());
            }
            if is_os_error(exc) {
                return error_received(slf, exc);
            }
            return SocketCore::fatal_error(slf, exc, "Fatal read error on datagram transport");
        }
    };
    if let Some(protocol) = protocol {
        protocol.call_method1(py, intern!(py, "datagram_received"), (data, addr))?;
    }
    Ok(())
}

fn recv_from(py: Python<'_>, fd: RawFd) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let data = with_read_buffer(|buf| {
        // SAFETY: `buf` and `storage` are valid for writes of the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                storage.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(PyBytes::new(py, &buf[..n as usize]))
        }
    })
    .map_err(|e| os_error(&e))?;
    // SAFETY: zero-initialised, then filled by the kernel up to `len`.
    let storage = unsafe { storage.assume_init() };
    Ok((data.into_any().unbind(), address_to_py(py, &storage, len)?))
}

/// A socket address as the `socket` module presents it (CPython's `makesockaddr`).
fn address_to_py(py: Python<'_>, storage: &libc::sockaddr_storage, len: libc::socklen_t) -> PyResult<Py<PyAny>> {
    if len == 0 {
        return Ok(py.None());
    }
    let ptr = std::ptr::from_ref(storage);
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*ptr.cast::<libc::sockaddr_in>() };
            let host = ntop(libc::AF_INET, std::ptr::from_ref(&a.sin_addr).cast())?;
            Ok((host, u16::from_be(a.sin_port)).into_pyobject(py)?.into_any().unbind())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*ptr.cast::<libc::sockaddr_in6>() };
            let host = ntop(libc::AF_INET6, std::ptr::from_ref(&a.sin6_addr).cast())?;
            let addr = (
                host,
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            );
            Ok(addr.into_pyobject(py)?.into_any().unbind())
        }
        libc::AF_UNIX => {
            // SAFETY: the family says the storage holds a sockaddr_un.
            let a = unsafe { &*ptr.cast::<libc::sockaddr_un>() };
            let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
            let path_len = (len as usize).saturating_sub(offset).min(a.sun_path.len());
            let path: Vec<u8> = a.sun_path[..path_len].iter().map(|&c| c as u8).collect();
            if path.first() == Some(&0) {
                // Linux's abstract namespace: the name is bytes, leading NUL included.
                return Ok(PyBytes::new(py, &path).into_any().unbind());
            }
            let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
            // SAFETY: a valid pointer and length; returns a new reference or NULL with an error.
            let name = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyUnicode_DecodeFSDefaultAndSize(path.as_ptr().cast(), end as ffi::Py_ssize_t),
                )?
            };
            Ok(name.unbind())
        }
        _ => Ok(PyTuple::new(py, [storage.ss_family])?.into_any().unbind()),
    }
}

extern "C" {
    // POSIX; not bound by the libc crate. The same function CPython formats addresses with, so
    // every address (IPv4-compatible IPv6 ones included) reads exactly as `socket` gives it.
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

fn ntop(family: i32, addr: *const libc::c_void) -> PyResult<String> {
    let mut out = [0 as libc::c_char; 64];
    // SAFETY: `addr` points to an in_addr/in6_addr matching `family`; `out` is large enough for
    // either text form (INET6_ADDRSTRLEN is 46).
    let text = unsafe { inet_ntop(family, addr, out.as_mut_ptr(), out.len() as libc::socklen_t) };
    if text.is_null() {
        return Err(os_error(&io::Error::last_os_error()));
    }
    // SAFETY: inet_ntop wrote a NUL-terminated string into `out`.
    let text = unsafe { std::ffi::CStr::from_ptr(out.as_ptr()) };
    Ok(text.to_string_lossy().into_owned())
}
