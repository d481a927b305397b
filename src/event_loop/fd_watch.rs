//! The table of watched file descriptors: at most one reader and one writer handle per fd,
//! mirrored into the poller's interest set.
//!
//! Invariant: an fd's slot is in use exactly when it has a reader or a writer, and then the fd is
//! registered in the poller with the matching interest.
//!
//! A reader may be *parked*: an idle native `sock_recv()` reader left registered between two
//! receives on the same socket, so that an echo-style loop of `sock_recv()` calls does not pay an
//! `epoll_ctl` to remove and another to re-add the fd for every message. A parked reader is
//! invisible to the public API (`_get_reader`, `remove_reader`'s result), is resumed only by the
//! waiter that parked it (which checks it is the same, still open socket, so a closed-and-reused
//! fd number always gets a real registration), and removes itself for real if it fires while
//! parked.

use crate::handles::Handle;
use crate::poller::{Interest, Poller};
use pyo3::prelude::*;
use pyo3::PyVisit;
use std::io;
use std::os::fd::RawFd;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Read,
    Write,
}

#[derive(Default)]
pub struct FdWatch {
    pub reader: Option<Py<Handle>>,
    pub writer: Option<Py<Handle>>,
    /// The object the latest `add_reader()`/`add_writer()` was given, when it was not an int
    /// (asyncio's selector key keeps it too): a socket closed while watched has no usable
    /// `fileno()` any more, and `remove_reader(sock)` then finds its fd by this object.
    pub fileobj: Option<Py<PyAny>>,
    /// The reader is parked (see the module doc).
    pub reader_parked: bool,
}

impl FdWatch {
    fn in_use(&self) -> bool {
        self.reader.is_some() || self.writer.is_some()
    }

    fn slot(&mut self, side: Side) -> &mut Option<Py<Handle>> {
        match side {
            Side::Read => &mut self.reader,
            Side::Write => &mut self.writer,
        }
    }

    fn interest(&self) -> Interest {
        Interest {
            read: self.reader.is_some(),
            write: self.writer.is_some(),
        }
    }
}

/// What `FdWatches::set` replaced: the previous handle on that side and the previous file object.
pub type Replaced = (Option<Py<Handle>>, Option<Py<PyAny>>);

/// What `FdWatches::clear` removed: the handle, whether it was a parked reader, and the file
/// object if the fd is no longer watched.
pub type Cleared = (Py<Handle>, bool, Option<Py<PyAny>>);

/// The table, indexed by fd as libuv's watcher array is. The kernel hands out the lowest free fd
/// number, so the table stays about as long as the process's highest fd, and the lookup made
/// for every I/O event is an index instead of a hash (a `HashMap` with the standard `SipHash` cost
/// about 100 instructions per event; callgrind of the Protocol echo server, docs/perf-log.md).
#[derive(Default)]
pub struct FdWatches {
    /// A slot is in use when it has a reader or a writer.
    slots: Vec<FdWatch>,
    /// The number of slots in use.
    in_use: usize,
}

fn index(fd: RawFd) -> Option<usize> {
    usize::try_from(fd).ok()
}

impl FdWatches {
    /// The slot of `fd`, in use or not, if the table reaches that far.
    fn slot_mut(&mut self, fd: RawFd) -> Option<&mut FdWatch> {
        self.slots.get_mut(index(fd)?)
    }

    /// Installs `handle` on `side` of `fd`, registered through `fileobj` (see `FdWatch::fileobj`),
    /// and returns what it replaces: the handle (to be cancelled by the caller) and the previous
    /// file object, both to be let go outside any borrow, since dropping them may run Python code.
    /// On a poller error nothing changes.
    pub fn set(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        side: Side,
        handle: Py<Handle>,
        fileobj: Option<Py<PyAny>>,
    ) -> io::Result<Replaced> {
        let i = index(fd).ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        if i >= self.slots.len() {
            // Register before growing: only an fd the poller accepts (an open one, so below the
            // process's fd limit) may size the table. `add_reader(2**31 - 1, ...)` must fail with
            // EBADF, not allocate 50 GB.
            let interest = Interest {
                read: side == Side::Read,
                write: side == Side::Write,
            };
            poller.watch(fd, interest, false)?;
            self.slots.resize_with(i + 1, FdWatch::default);
            *self.slots[i].slot(side) = Some(handle);
            self.slots[i].fileobj = fileobj;
            self.in_use += 1;
            return Ok((None, None));
        }
        let watch = &mut self.slots[i];
        let known = watch.in_use();
        let previous = watch.slot(side).replace(handle);
        // A new reader replaces a parked one for good.
        let was_parked = watch.reader_parked;
        watch.reader_parked = was_parked && side == Side::Write;
        if let Err(err) = poller.watch(fd, watch.interest(), known) {
            watch.reader_parked = was_parked;
            let added = std::mem::replace(watch.slot(side), previous);
            drop(added);
            return Err(err);
        }
        if !known {
            self.in_use += 1;
        }
        let previous_fileobj = std::mem::replace(&mut watch.fileobj, fileobj);
        Ok((previous, previous_fileobj))
    }

    /// Removes the handle on `side` of `fd`, returning it (for the caller to cancel), whether it
    /// was a parked reader, and the file object when the fd is no longer watched at all (to be
    /// let go outside any borrow).
    pub fn clear(&mut self, poller: &Poller, fd: RawFd, side: Side) -> Option<Cleared> {
        let watch = self.slot_mut(fd)?;
        let removed = watch.slot(side).take()?;
        let parked = side == Side::Read && std::mem::take(&mut watch.reader_parked);
        let interest = watch.interest();
        if interest.is_empty() {
            let fileobj = watch.fileobj.take();
            self.in_use -= 1;
            // An fd closed while watched has already left the epoll set; the error is ignored.
            poller.unwatch(fd);
            return Some((removed, parked, fileobj));
        }
        // The fd may have been closed behind our back; the remaining side then fails later with
        // the same error asyncio's selector would give.
        let _ = poller.watch(fd, interest, true);
        Some((removed, parked, None))
    }

    /// The watched fd that was registered through `fileobj` (compared by identity), as asyncio's
    /// selector searches its keys when an object's `fileno()` is no longer valid.
    pub fn find_fileobj(&self, fileobj: &Bound<'_, PyAny>) -> Option<RawFd> {
        self.watched()
            .find(|(_, watch)| {
                watch
                    .fileobj
                    .as_ref()
                    .is_some_and(|obj| obj.as_ptr() == fileobj.as_ptr())
            })
            .map(|(fd, _)| fd)
    }

    /// Parks the reader of `fd` if it is `handle` (the caller's own).
    pub fn park_reader(&mut self, fd: RawFd, handle: &Py<Handle>) {
        if let Some(watch) = self.slot_mut(fd) {
            if watch.reader.as_ref().is_some_and(|r| r.is(handle)) {
                watch.reader_parked = true;
            }
        }
    }

    /// Takes the parked reader of `fd` back into use if it is `handle`; false if it is not there
    /// (replaced, removed or never parked), in which case the caller must install a new one.
    pub fn resume_reader(&mut self, fd: RawFd, handle: &Py<Handle>) -> bool {
        match self.slot_mut(fd) {
            Some(watch) if watch.reader_parked && watch.reader.as_ref().is_some_and(|r| r.is(handle)) => {
                watch.reader_parked = false;
                true
            }
            _ => false,
        }
    }

    /// The reader of `fd`, parked or not.
    pub fn reader(&self, fd: RawFd) -> Option<&Py<Handle>> {
        self.get(fd)?.reader.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.in_use == 0
    }

    pub fn get(&self, fd: RawFd) -> Option<&FdWatch> {
        self.slots.get(index(fd)?).filter(|watch| watch.in_use())
    }

    fn watched(&self) -> impl Iterator<Item = (RawFd, &FdWatch)> {
        // Slot indexes came from non-negative `RawFd`s, so they convert back.
        (0..).zip(&self.slots).filter(|(_, watch)| watch.in_use())
    }

    /// Registers every watched fd in `poller` (a fresh one, after `fork()`), skipping fds that
    /// can no longer be registered (closed behind the loop's back).
    pub fn register_all(&self, poller: &Poller) {
        for (fd, watch) in self.watched() {
            let _ = poller.watch(fd, watch.interest(), false);
        }
    }

    /// Empties the table: the handles, and the file objects to let go (outside any borrow).
    pub fn drain(&mut self) -> (Vec<Py<Handle>>, Vec<Py<PyAny>>) {
        self.in_use = 0;
        let mut handles = Vec::new();
        let mut fileobjs = Vec::new();
        for watch in std::mem::take(&mut self.slots) {
            handles.extend(watch.reader.into_iter().chain(watch.writer));
            fileobjs.extend(watch.fileobj);
        }
        (handles, fileobjs)
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for (_, watch) in self.watched() {
            visit.call(&watch.reader)?;
            visit.call(&watch.writer)?;
            visit.call(&watch.fileobj)?;
        }
        Ok(())
    }
}
