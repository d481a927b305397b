//! The ceiling for ferroloop's echo benchmarks: an echo server in Rust alone, on the same poller
//! as ferroloop's loop (level-triggered epoll), doing per message what a `Protocol` echo server
//! asks of the loop: one `recv()` into a page-aligned buffer, one `send()` back, buffering what
//! the kernel does not take.
//!
//! `ceiling-server ADDRESS` with ADDRESS `tcp:HOST:PORT` (port 0 picks one) or `unix:PATH`;
//! prints `READY ADDRESS` once listening and serves until its stdin is closed, like
//! `bench/net_server.py`, so `bench/net.py` can drive it as one more "loop".

use _ferroloop::poller::{Interest, Poller};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixListener;

const READ_SIZE: usize = 256 * 1024;

/// What the kernel did not take yet, for one connection.
#[derive(Default)]
struct Pending {
    data: Vec<u8>,
    sent: usize,
}

fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of its length.
    cvt(unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) })
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    cvt(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })
}

fn close(fd: RawFd) {
    // SAFETY: `fd` is a connection this server accepted and owns.
    unsafe { libc::close(fd) };
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn bind(address: &str) -> io::Result<(Listener, String)> {
        if let Some(path) = address.strip_prefix("unix:") {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)?;
            listener.set_nonblocking(true)?;
            return Ok((Listener::Unix(listener), address.to_owned()));
        }
        let listener = TcpListener::bind(address.strip_prefix("tcp:").unwrap_or(address))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        Ok((Listener::Tcp(listener), format!("tcp:{local}")))
    }

    fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }

    /// The next connection, non-blocking (TCP_NODELAY on, as asyncio sets it), if any.
    fn accept(&self) -> io::Result<RawFd> {
        match self {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept()?;
                stream.set_nonblocking(true)?;
                stream.set_nodelay(true)?;
                Ok(stream.into_raw_fd())
            }
            Listener::Unix(l) => {
                let (stream, _) = l.accept()?;
                stream.set_nonblocking(true)?;
                Ok(stream.into_raw_fd())
            }
        }
    }
}

fn main() -> io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "tcp:127.0.0.1:0".into());
    let (listener, shown) = Listener::bind(&address)?;
    let poller = Poller::new()?;
    let stdin = 0;
    let readable = Interest {
        read: true,
        write: false,
    };
    poller.watch(listener.fd(), readable, false)?;
    poller.watch(stdin, readable, false)?;
    println!("READY {shown}");
    io::stdout().flush()?;

    let layout = std::alloc::Layout::from_size_align(READ_SIZE, 4096).expect("layout");
    // SAFETY: non-zero size; freed at exit by the OS.
    let buf = unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc_zeroed(layout), READ_SIZE) };
    let mut pending: HashMap<RawFd, Pending> = HashMap::new();
    let (mut events, mut ready) = (Vec::with_capacity(256), Vec::with_capacity(256));
    loop {
        ready.clear();
        match poller.wait(&mut events, &mut ready, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in ready.drain(..) {
            let fd = event.fd;
            if fd == stdin {
                return Ok(());
            }
            if fd == listener.fd() {
                while let Ok(conn) = listener.accept() {
                    poller.watch(conn, readable, false)?;
                }
                continue;
            }
            if event.writable {
                if let Some(p) = pending.get_mut(&fd) {
                    match send(fd, &p.data[p.sent..]) {
                        Ok(n) => p.sent += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => p.sent = p.data.len(),
                    }
                    if p.sent == p.data.len() {
                        pending.remove(&fd);
                        poller.watch(fd, readable, true)?;
                    }
                }
                continue;
            }
            if !event.readable || pending.contains_key(&fd) {
                continue;
            }
            match recv(fd, buf) {
                Ok(0) | Err(_) => {
                    poller.unwatch(fd);
                    close(fd);
                }
                Ok(n) => {
                    let sent = match send(fd, &buf[..n]) {
                        Ok(sent) => sent,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(_) => n,
                    };
                    if sent < n {
                        // Stop reading until the rest is out, as a transport pauses its writer's peer.
                        pending.insert(
                            fd,
                            Pending {
                                data: buf[sent..n].to_vec(),
                                sent: 0,
                            },
                        );
                        poller.watch(
                            fd,
                            Interest {
                                read: false,
                                write: true,
                            },
                            true,
                        )?;
                    }
                }
            }
        }
    }
}
