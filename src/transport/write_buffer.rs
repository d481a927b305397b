//! A transport's unsent bytes, sent with one vectored syscall per attempt.
//!
//! asyncio keeps a single `bytearray` and copies every write into it. Here small writes are
//! still copied (into the tail chunk, so a burst of small writes becomes one contiguous run),
//! but a large `bytes` object is kept by reference: it is immutable, so holding it costs no
//! copy, and the kernel reads it straight from the Python object.

use std::collections::VecDeque;

/// Writes at least this large, of an immutable `bytes`, are kept by reference, not copied.
pub const SHARE_THRESHOLD: usize = 16 * 1024;

/// Most chunks handed to one `sendmsg`: well under `IOV_MAX` (1024), and more than a turn's
/// writes to one socket normally produce.
pub const MAX_IOVECS: usize = 64;

/// A run of bytes whose memory outlives the buffer's use of it: an immutable Python `bytes`
/// (kept alive by the `owner` reference) or anything else with a stable address.
pub trait Shared: Send {
    fn bytes(&self) -> &[u8];
}

enum Chunk<S> {
    Owned(Vec<u8>),
    Shared(S),
}

impl<S: Shared> Chunk<S> {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(s) => s.bytes(),
        }
    }
}

pub struct WriteBuffer<S> {
    chunks: VecDeque<Chunk<S>>,
    /// Bytes of the front chunk already sent.
    head_sent: usize,
    len: usize,
}

impl<S> Default for WriteBuffer<S> {
    fn default() -> Self {
        WriteBuffer {
            chunks: VecDeque::new(),
            head_sent: 0,
            len: 0,
        }
    }
}

impl<S: Shared> WriteBuffer<S> {
    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a copy of `data`.
    pub fn push_copy(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if let Some(Chunk::Owned(tail)) = self.chunks.back_mut() {
            // Appending to the front chunk is fine too: `head_sent` indexes from its start.
            tail.extend_from_slice(data);
            return;
        }
        self.chunks.push_back(Chunk::Owned(data.to_vec()));
    }

    /// Appends bytes held by reference.
    pub fn push_shared(&mut self, data: S) {
        let n = data.bytes().len();
        if n == 0 {
            return;
        }
        self.len += n;
        self.chunks.push_back(Chunk::Shared(data));
    }

    /// Fills `out` with the unsent bytes, in order, as I/O slices; returns how many were filled.
    pub fn io_slices<'a>(&'a self, out: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if n == out.len() {
                break;
            }
            let bytes = chunk.bytes();
            let bytes = if i == 0 { &bytes[self.head_sent..] } else { bytes };
            out[n] = std::io::IoSlice::new(bytes);
            n += 1;
        }
        n
    }

    /// Drops the first `sent` unsent bytes. Returns the chunks released, for the caller to drop
    /// at a point where releasing a Python reference is safe.
    pub fn consume(&mut self, mut sent: usize) -> Vec<S> {
        debug_assert!(sent <= self.len);
        sent = sent.min(self.len);
        self.len -= sent;
        let mut released = Vec::new();
        while sent > 0 {
            let Some(front) = self.chunks.front() else { break };
            let left = front.bytes().len() - self.head_sent;
            if sent < left {
                self.head_sent += sent;
                break;
            }
            sent -= left;
            self.head_sent = 0;
            if let Some(Chunk::Shared(s)) = self.chunks.pop_front() {
                released.push(s);
            }
        }
        released
    }

    /// Empties the buffer, returning the chunks held by reference (see `consume`).
    pub fn clear(&mut self) -> Vec<S> {
        self.len = 0;
        self.head_sent = 0;
        self.chunks
            .drain(..)
            .filter_map(|c| match c {
                Chunk::Shared(s) => Some(s),
                Chunk::Owned(_) => None,
            })
            .collect()
    }

    pub fn shared(&self) -> impl Iterator<Item = &S> {
        self.chunks.iter().filter_map(|c| match c {
            Chunk::Shared(s) => Some(s),
            Chunk::Owned(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;

    struct Static(&'static [u8]);
    impl Shared for Static {
        fn bytes(&self) -> &[u8] {
            self.0
        }
    }

    fn unsent(buf: &WriteBuffer<Static>) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let n = buf.io_slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn small_copies_coalesce_into_one_slice() {
        let mut buf = WriteBuffer::<Static>::default();
        buf.push_copy(b"ab");
        buf.push_copy(b"cd");
        buf.push_copy(b"");
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        assert_eq!(buf.io_slices(&mut slices), 1);
        assert_eq!(unsent(&buf), b"abcd");
        assert_eq!(buf.len(), 4);
    }

    #[test]
    fn partial_sends_keep_order_across_chunks() {
        let mut buf = WriteBuffer::default();
        buf.push_copy(b"head");
        buf.push_shared(Static(b"middle"));
        buf.push_copy(b"tail");
        assert_eq!(buf.consume(2).len(), 0);
        assert_eq!(unsent(&buf), b"admiddletail");
        // Crossing the shared chunk releases it exactly once.
        assert_eq!(buf.consume(9).len(), 1);
        assert_eq!(unsent(&buf), b"ail");
        assert_eq!(buf.len(), 3);
        buf.consume(3);
        assert!(buf.is_empty());
        assert_eq!(unsent(&buf), b"");
    }

    #[test]
    fn appending_after_a_partial_send_keeps_the_unsent_head() {
        let mut buf = WriteBuffer::<Static>::default();
        buf.push_copy(b"abcdef");
        buf.consume(4);
        buf.push_copy(b"gh");
        assert_eq!(unsent(&buf), b"efgh");
        assert_eq!(buf.len(), 4);
    }

    #[test]
    fn clear_returns_every_shared_chunk() {
        let mut buf = WriteBuffer::default();
        buf.push_shared(Static(b"x"));
        buf.push_copy(b"y");
        buf.push_shared(Static(b"z"));
        assert_eq!(buf.shared().count(), 2);
        assert_eq!(buf.clear().len(), 2);
        assert!(buf.is_empty());
        assert_eq!(unsent(&buf), b"");
    }

    #[test]
    fn slices_are_capped_by_the_output_length() {
        let mut buf = WriteBuffer::default();
        for _ in 0..5 {
            buf.push_shared(Static(b"s"));
        }
        let mut slices = [IoSlice::new(&[]); 3];
        assert_eq!(buf.io_slices(&mut slices), 3);
    }
}
