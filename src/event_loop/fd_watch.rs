//! The table of watched file descriptors: at most one reader and one writer handle per fd,
//! mirrored into the poller's interest set.
//!
//! Invariant: an fd is in the table exactly when it has a reader or a writer, and then it is
//! registered in the poller with the matching interest.

use crate::handles::Handle;
use crate::poller::{Interest, Poller};
use pyo3::prelude::*;
use pyo3::PyVisit;
use std::collections::HashMap;
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
}

impl FdWatch {
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

#[derive(Default)]
pub struct FdWatches {
    map: HashMap<RawFd, FdWatch>,
}

impl FdWatches {
    /// Installs `handle` on `side` of `fd` and returns the handle it replaces (to be cancelled by
    /// the caller, outside any borrow). On a poller error nothing changes.
    pub fn set(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        side: Side,
        handle: Py<Handle>,
    ) -> io::Result<Option<Py<Handle>>> {
        let known = self.map.contains_key(&fd);
        let watch = self.map.entry(fd).or_default();
        let previous = watch.slot(side).replace(handle);
        if let Err(err) = poller.watch(fd, watch.interest(), known) {
            let added = std::mem::replace(watch.slot(side), previous);
            if watch.interest().is_empty() {
                self.map.remove(&fd);
            }
            drop(added);
            return Err(err);
        }
        Ok(previous)
    }

    /// Removes the handle on `side` of `fd`, returning it (for the caller to cancel).
    pub fn clear(&mut self, poller: &Poller, fd: RawFd, side: Side) -> Option<Py<Handle>> {
        let watch = self.map.get_mut(&fd)?;
        let removed = watch.slot(side).take()?;
        let interest = watch.interest();
        if interest.is_empty() {
            self.map.remove(&fd);
            poller.unwatch(fd);
        } else {
            // The fd may have been closed behind our back; the remaining side then fails later
            // with the same error asyncio's selector would give.
            let _ = poller.watch(fd, interest, true);
        }
        Some(removed)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, fd: RawFd) -> Option<&FdWatch> {
        self.map.get(&fd)
    }

    /// Registers every watched fd in `poller` (a fresh one, after `fork()`), skipping fds that
    /// can no longer be registered (closed behind the loop's back).
    pub fn register_all(&self, poller: &Poller) {
        for (&fd, watch) in &self.map {
            let _ = poller.watch(fd, watch.interest(), false);
        }
    }

    pub fn drain(&mut self) -> Vec<Py<Handle>> {
        self.map
            .drain()
            .flat_map(|(_, w)| w.reader.into_iter().chain(w.writer))
            .collect()
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for watch in self.map.values() {
            visit.call(&watch.reader)?;
            visit.call(&watch.writer)?;
        }
        Ok(())
    }
}
