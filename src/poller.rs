//! The readiness poller: one level-triggered epoll instance plus an eventfd waker.
//!
//! asyncio's `add_reader`/`add_writer` are level-triggered: a reader that leaves data unread is
//! called again on the next turn. epoll in level mode gives exactly that with one `epoll_wait`
//! per loop turn, so this module is a thin, safe wrapper over the syscalls rather than a general
//! cross-platform poller (those re-arm timer and notifier fds on every wait, costing four extra
//! syscalls per turn).
//!
//! Invariants:
//! - `wait` is only called by the loop's thread, with the GIL released; `wake` may be called from
//!   any thread at any time.
//! - The waker's token is [`WAKE_TOKEN`]; every other event carries the fd it was registered for.
//! - Wake-ups are coalesced: `wake` writes to the eventfd only when no wake-up is pending, and the
//!   loop clears the pending flag after draining the eventfd, so no wake-up is ever lost.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Event token reserved for the cross-thread waker.
pub const WAKE_TOKEN: u64 = u64::MAX;

/// What a watched fd is waiting for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    #[must_use]
    pub fn is_empty(self) -> bool {
        !self.read && !self.write
    }

    fn epoll_bits(self) -> u32 {
        let mut bits = 0;
        if self.read {
            bits |= libc::EPOLLIN as u32;
        }
        if self.write {
            bits |= libc::EPOLLOUT as u32;
        }
        bits
    }
}

/// Readiness reported for one fd, mapped the way asyncio's selectors map epoll bits: an error
/// or hang-up wakes both the reader and the writer, so each can see the failure itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub fd: RawFd,
    pub readable: bool,
    pub writable: bool,
}

pub struct Poller {
    epoll: OwnedFd,
    waker: OwnedFd,
    wake_pending: AtomicBool,
    /// Whether the kernel has `epoll_pwait2` (Linux 5.11+), which takes a nanosecond timeout.
    precise_timeouts: AtomicBool,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscalls; each returned fd is checked and immediately owned.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let waker = unsafe { OwnedFd::from_raw_fd(cvt(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?) };
        let poller = Poller {
            epoll,
            waker,
            wake_pending: AtomicBool::new(false),
            precise_timeouts: AtomicBool::new(true),
        };
        poller.ctl(
            libc::EPOLL_CTL_ADD,
            poller.waker.as_raw_fd(),
            libc::EPOLLIN as u32,
            WAKE_TOKEN,
        )?;
        Ok(poller)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` outlives the call; epoll_ctl does not keep the pointer.
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &raw mut event) })?;
        Ok(())
    }

    /// Watches `fd` for `interest`, registering it or updating an existing registration.
    ///
    /// An fd closed and reopened behind our back is no longer in the epoll set even though we
    /// still think it is watched, so `ENOENT` on modify falls back to add (and `EEXIST` on add
    /// falls back to modify).
    pub fn watch(&self, fd: RawFd, interest: Interest, known: bool) -> io::Result<()> {
        debug_assert!(!interest.is_empty());
        let bits = interest.epoll_bits();
        let token = fd as u64;
        let (first, second) = if known {
            (libc::EPOLL_CTL_MOD, libc::EPOLL_CTL_ADD)
        } else {
            (libc::EPOLL_CTL_ADD, libc::EPOLL_CTL_MOD)
        };
        match self.ctl(first, fd, bits, token) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EEXIST)) => {
                self.ctl(second, fd, bits, token)
            }
            other => other,
        }
    }

    /// Stops watching `fd`. An fd that was already closed has left the epoll set by itself, so
    /// `EBADF`/`ENOENT` are not errors here.
    pub fn unwatch(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    /// Wakes a thread blocked in [`Poller::wait`], or makes its next call return at once.
    pub fn wake(&self) -> io::Result<()> {
        if self.wake_pending.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let n = unsafe { libc::write(self.waker.as_raw_fd(), (&raw const one).cast(), 8) };
        if n < 0 {
            let err = io::Error::last_os_error();
            // EAGAIN means the counter is saturated: a wake-up is pending anyway.
            if err.kind() != io::ErrorKind::WouldBlock {
                self.wake_pending.store(false, Ordering::Release);
                return Err(err);
            }
        }
        Ok(())
    }

    fn drain_waker(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our own non-blocking eventfd.
        let _ = unsafe { libc::read(self.waker.as_raw_fd(), (&raw mut buf).cast(), 8) };
        // Cleared only after the read: a `wake` racing with us then either finds the flag still
        // set (its callback is already queued and the loop looks at the queue next) or writes
        // after our read, leaving the eventfd readable for the next wait.
        self.wake_pending.store(false, Ordering::Release);
    }

    /// Waits for readiness, at most `timeout` (`None`: without limit), appending what it finds to
    /// `out`. Returns `ErrorKind::Interrupted` when a signal arrived, so the caller can run
    /// Python's signal handlers.
    pub fn wait(
        &self,
        buf: &mut Vec<libc::epoll_event>,
        out: &mut Vec<Readiness>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        buf.clear();
        let capacity = buf.capacity().max(64);
        buf.reserve(capacity);
        let n = self.epoll_wait(buf.as_mut_ptr(), capacity, timeout)?;
        // SAFETY: the kernel initialised the first `n` entries.
        unsafe { buf.set_len(n) };
        let not_out = !(libc::EPOLLOUT as u32);
        let not_in = !(libc::EPOLLIN as u32);
        for event in buf.iter() {
            let (bits, token) = (event.events, event.u64);
            if token == WAKE_TOKEN {
                self.drain_waker();
                continue;
            }
            out.push(Readiness {
                fd: token as RawFd,
                readable: bits & not_out != 0,
                writable: bits & not_in != 0,
            });
        }
        Ok(())
    }

    fn epoll_wait(
        &self,
        events: *mut libc::epoll_event,
        capacity: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let max = capacity.min(libc::c_int::MAX as usize) as libc::c_int;
        // Zero and unbounded waits need no timespec: plain epoll_wait is the cheaper call.
        let exact_in_millis = timeout.is_none_or(|t| t.subsec_nanos() % 1_000_000 == 0);
        if !exact_in_millis && self.precise_timeouts.load(Ordering::Relaxed) {
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
            });
            let ts_ptr = ts.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
            // SAFETY: `events` has room for `max` entries; `ts_ptr` is null or points to a live
            // timespec; a null sigmask leaves the signal mask alone.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.epoll.as_raw_fd(),
                    events,
                    max,
                    ts_ptr,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if ret >= 0 {
                return Ok(ret as usize);
            }
            let err = io::Error::last_os_error();
            // ENOSYS: kernel before 5.11; EPERM: a seccomp filter that does not know the call.
            if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
                return Err(err);
            }
            self.precise_timeouts.store(false, Ordering::Relaxed);
        }
        // Millisecond fallback: round up so a timer is never woken for early.
        let ms = timeout.map_or(-1, |t| {
            let ms = t.as_nanos().div_ceil(1_000_000);
            ms.min(libc::c_int::MAX as u128) as libc::c_int
        });
        // SAFETY: as above.
        let ret = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events, max, ms) };
        Ok(cvt(ret)? as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 returns, owned right after.
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
            0
        );
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn wake_from_another_thread_ends_an_unbounded_wait() {
        let poller = std::sync::Arc::new(Poller::new().unwrap());
        let p2 = poller.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            p2.wake().unwrap();
        });
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        poller.wait(&mut buf, &mut out, None).unwrap();
        assert!(out.is_empty());
        t.join().unwrap();
    }

    /// Regression: clearing the pending flag before draining the eventfd could swallow a racing
    /// wake-up and leave the flag set forever, so the loop slept through later wake-ups.
    #[test]
    fn racing_wakes_are_never_lost() {
        use std::sync::atomic::AtomicUsize;
        const ROUNDS: usize = 20_000;
        let poller = std::sync::Arc::new(Poller::new().unwrap());
        let sent = std::sync::Arc::new(AtomicUsize::new(0));
        let (p2, s2) = (poller.clone(), sent.clone());
        let producer = std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                s2.fetch_add(1, Ordering::SeqCst);
                p2.wake().unwrap();
            }
        });
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        while sent.load(Ordering::SeqCst) < ROUNDS {
            let seen = sent.load(Ordering::SeqCst);
            // A lost wake-up shows as a wait that runs to its (long) timeout with work pending.
            let start = std::time::Instant::now();
            poller.wait(&mut buf, &mut out, Some(Duration::from_secs(5))).unwrap();
            let stalled = start.elapsed() >= Duration::from_secs(5);
            assert!(!(stalled && sent.load(Ordering::SeqCst) > seen), "wake-up lost");
        }
        producer.join().unwrap();
    }

    #[test]
    fn readiness_is_level_triggered() {
        let poller = Poller::new().unwrap();
        let (r, w) = pipe();
        poller
            .watch(
                r.as_raw_fd(),
                Interest {
                    read: true,
                    write: false,
                },
                false,
            )
            .unwrap();
        // SAFETY: writes one byte from a live buffer to our pipe.
        assert_eq!(unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) }, 1);
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            out.clear();
            poller.wait(&mut buf, &mut out, Some(Duration::ZERO)).unwrap();
            assert_eq!(
                out,
                vec![Readiness {
                    fd: r.as_raw_fd(),
                    readable: true,
                    writable: false
                }]
            );
        }
        poller.unwatch(r.as_raw_fd());
        out.clear();
        poller.wait(&mut buf, &mut out, Some(Duration::ZERO)).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn hang_up_wakes_reader_and_writer() {
        let poller = Poller::new().unwrap();
        let (r, w) = pipe();
        poller
            .watch(
                w.as_raw_fd(),
                Interest {
                    read: true,
                    write: true,
                },
                false,
            )
            .unwrap();
        drop(r);
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        poller.wait(&mut buf, &mut out, Some(Duration::ZERO)).unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].readable && out[0].writable);
    }

    #[test]
    fn timeout_is_not_early() {
        let poller = Poller::new().unwrap();
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        let start = std::time::Instant::now();
        poller
            .wait(&mut buf, &mut out, Some(Duration::from_micros(1500)))
            .unwrap();
        assert!(start.elapsed() >= Duration::from_micros(1500));
    }
}
