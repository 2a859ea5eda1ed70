//! A connection's output queue: ordered segments of copied bytes, borrowed buffers (released by
//! their owner's callback once done with) and file ranges (sent with sendfile). Small sends are
//! appended to the tail copied segment, so the common queue is one contiguous buffer, as before.
//!
//! Borrowed segments that are done with (written, or discarded because the connection ended) are
//! never dropped here: they move to `finished`, and the loop drops them — running their release
//! callbacks — at a point where no borrow of its state is held.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::{Fd, MAX_IOV};

/// Bytes queued without a copy. Dropping the segment releases it (the C caller's release
/// callback); the loop drops it exactly once, outside any borrow of its state.
pub trait Segment {
    fn bytes(&self) -> &[u8];
}

/// A done-with segment waiting for its release.
pub(super) type Finished = Box<dyn Segment>;

enum Chunk {
    Copied(VecDeque<u8>),
    Borrowed { seg: Finished, start: usize },
    File(FileRange),
}

/// A range of a file still to send; the descriptor is the loop's own duplicate.
pub(super) struct FileRange {
    pub fd: OwnedFd,
    pub offset: u64,
    pub remaining: usize,
}

/// What is at the head of the queue, for one write.
pub(super) enum Head {
    Empty,
    /// This many slices of consecutive memory segments (at most MAX_IOV) were put in `bufs`.
    Memory(usize),
    File {
        fd: Fd,
        offset: u64,
        remaining: usize,
    },
}

/// A connection's output queue. An idle connection's is one null pointer: the queue's state
/// lives in a box that exists only while something is queued (or waits for its release).
#[derive(Default)]
pub(super) struct OutQueue {
    queue: Option<Box<Queue>>,
}

impl OutQueue {
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len)
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn copied_len(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.copied)
    }

    fn queue(&mut self) -> &mut Queue {
        self.queue.get_or_insert_with(Box::default)
    }

    /// Reserves room for `n` more copied bytes at the tail.
    pub fn try_reserve(&mut self, n: usize) -> Result<(), std::collections::TryReserveError> {
        self.queue().try_reserve(n)
    }

    /// Appends a copy of `data` (see Queue::extend).
    pub fn extend(&mut self, data: &[u8]) {
        if !data.is_empty() {
            self.queue().extend(data);
        }
    }

    /// Queues `seg` from byte `start` on, without copying.
    pub fn push_borrowed(&mut self, seg: Finished, start: usize) {
        self.queue().push_borrowed(seg, start);
    }

    pub fn push_file(&mut self, range: FileRange) {
        if range.remaining > 0 {
            self.queue().push_file(range);
        }
    }

    /// What one write should send now; memory segments are described in `bufs`.
    pub fn head<'a>(&'a self, bufs: &mut [&'a [u8]; MAX_IOV]) -> Head {
        self.queue.as_ref().map_or(Head::Empty, |q| q.head(bufs))
    }

    /// Removes `n` bytes the kernel took from the head (see Queue::consume).
    pub fn consume(&mut self, n: usize) {
        if let Some(q) = self.queue.as_mut() {
            q.consume(n);
        }
    }

    /// Drops everything queued; done-with borrowed segments wait in `finished`.
    pub fn discard(&mut self) {
        if let Some(q) = self.queue.as_mut() {
            q.discard();
        }
    }

    /// Moves the done-with borrowed segments to `released` (for their release callbacks), and
    /// lets go of the box once nothing is queued.
    pub fn take_finished(&mut self, released: &mut Vec<Finished>) {
        if let Some(q) = self.queue.as_mut() {
            released.append(&mut q.finished);
            if q.len == 0 {
                self.queue = None;
            }
        }
    }

    /// Lets go of the memory of an empty queue (finished segments wait for take_finished).
    pub fn shrink(&mut self) {
        if matches!(&self.queue, Some(q) if q.len == 0 && q.finished.is_empty()) {
            self.queue = None;
        }
    }

    /// Done-with borrowed segments waiting for their release.
    #[cfg(test)]
    pub fn finished(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.finished.len())
    }

    /// For tests: as discard(), then drops the finished segments here.
    #[cfg(test)]
    pub fn clear(&mut self) {
        self.queue = None;
    }
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    /// Every queued byte (memory and file): the watermarks apply to this.
    len: usize,
    /// Copied bytes only: the memory the loop holds, which the 1 GiB cap bounds.
    copied: usize,
    finished: Vec<Finished>,
}

impl Queue {
    /// Reserves room for `n` more copied bytes at the tail.
    pub fn try_reserve(&mut self, n: usize) -> Result<(), std::collections::TryReserveError> {
        match self.chunks.back_mut() {
            Some(Chunk::Copied(bytes)) => bytes.try_reserve(n),
            _ => {
                let mut bytes = VecDeque::new();
                bytes.try_reserve(n)?;
                self.chunks.try_reserve(1)?;
                self.chunks.push_back(Chunk::Copied(bytes));
                Ok(())
            }
        }
    }

    /// Appends a copy of `data` to the tail copied segment (a new one after a borrowed or file
    /// segment).
    pub fn extend(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.chunks.back_mut() {
            Some(Chunk::Copied(bytes)) => bytes.extend(data),
            _ => self
                .chunks
                .push_back(Chunk::Copied(data.iter().copied().collect())),
        }
        self.len += data.len();
        self.copied += data.len();
    }

    /// Queues `seg` from byte `start` on, without copying.
    pub fn push_borrowed(&mut self, seg: Finished, start: usize) {
        let n = seg.bytes().len() - start;
        if n == 0 {
            self.finished.push(seg);
            return;
        }
        self.chunks.push_back(Chunk::Borrowed { seg, start });
        self.len += n;
    }

    pub fn push_file(&mut self, range: FileRange) {
        if range.remaining == 0 {
            return;
        }
        self.len += range.remaining;
        self.chunks.push_back(Chunk::File(range));
    }

    /// What one write should send now; memory segments are described in `bufs`.
    pub fn head<'a>(&'a self, bufs: &mut [&'a [u8]; MAX_IOV]) -> Head {
        let mut n = 0;
        for chunk in &self.chunks {
            match chunk {
                Chunk::Copied(bytes) => {
                    let (a, b) = bytes.as_slices();
                    for part in [a, b] {
                        if !part.is_empty() && n < MAX_IOV {
                            bufs[n] = part;
                            n += 1;
                        }
                    }
                }
                Chunk::Borrowed { seg, start } => {
                    bufs[n] = &seg.bytes()[*start..];
                    n += 1;
                }
                Chunk::File(range) if n == 0 => {
                    return Head::File {
                        fd: range.fd.as_raw_fd(),
                        offset: range.offset,
                        remaining: range.remaining,
                    };
                }
                Chunk::File(_) => break,
            }
            if n >= MAX_IOV - 1 {
                break;
            }
        }
        if n == 0 {
            Head::Empty
        } else {
            Head::Memory(n)
        }
    }

    /// Removes `n` bytes the kernel took from the head; done-with borrowed segments move to
    /// `finished`, done-with files are closed.
    pub fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(chunk) = self.chunks.front_mut() else {
                unreachable!("consumed more than queued")
            };
            match chunk {
                Chunk::Copied(bytes) => {
                    let k = n.min(bytes.len());
                    bytes.drain(..k);
                    self.copied -= k;
                    n -= k;
                    if !bytes.is_empty() {
                        return;
                    }
                }
                Chunk::Borrowed { seg, start } => {
                    let k = n.min(seg.bytes().len() - *start);
                    *start += k;
                    n -= k;
                    if *start < seg.bytes().len() {
                        return;
                    }
                }
                Chunk::File(range) => {
                    let k = n.min(range.remaining);
                    range.remaining -= k;
                    range.offset += k as u64;
                    n -= k;
                    if range.remaining > 0 {
                        return;
                    }
                }
            }
            self.pop_front();
        }
        // Segments emptied by an exact fit.
        while matches!(self.chunks.front(), Some(Chunk::Copied(b)) if b.is_empty()) {
            self.chunks.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(Chunk::Borrowed { seg, .. }) = self.chunks.pop_front() {
            self.finished.push(seg);
        }
    }

    /// Drops everything queued (the stream can no longer write): borrowed segments move to
    /// `finished`, files are closed. A connection owns memory only while it has queued output.
    pub fn discard(&mut self) {
        while !self.chunks.is_empty() {
            self.pop_front();
        }
        self.chunks = VecDeque::new();
        self.len = 0;
        self.copied = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Shared(Vec<u8>);
    impl Segment for Shared {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
    }

    fn memory(q: &OutQueue) -> Vec<u8> {
        let mut bufs: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
        match q.head(&mut bufs) {
            Head::Memory(n) => bufs[..n].concat(),
            Head::Empty => Vec::new(),
            Head::File { .. } => panic!("file at the head"),
        }
    }

    fn file_head(q: &OutQueue) -> Option<(u64, usize)> {
        let mut bufs: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
        match q.head(&mut bufs) {
            Head::File {
                offset, remaining, ..
            } => Some((offset, remaining)),
            _ => None,
        }
    }

    #[test]
    fn small_sends_share_one_copied_segment() {
        let mut q = OutQueue::default();
        q.extend(b"ab");
        q.extend(b"cd");
        assert_eq!(q.queue.as_ref().unwrap().chunks.len(), 1);
        assert_eq!((q.len(), q.copied_len()), (4, 4));
        q.consume(3);
        assert_eq!(memory(&q), b"d");
        q.consume(1);
        q.shrink();
        assert!(
            q.is_empty() && q.queue.is_none(),
            "an empty queue holds no memory"
        );
    }

    #[test]
    fn consume_crosses_segments_and_finishes_borrowed_ones_in_order() {
        let mut q = OutQueue::default();
        q.extend(b"12");
        q.push_borrowed(Box::new(Shared(b"345".to_vec())), 1);
        q.extend(b"67");
        assert_eq!((q.len(), q.copied_len()), (6, 4));
        assert_eq!(memory(&q), b"124567");
        q.consume(3);
        assert_eq!(memory(&q), b"567");
        assert!(q.finished() == 0, "the borrowed segment is not done yet");
        q.consume(1);
        assert_eq!(q.finished(), 1);
        assert_eq!(memory(&q), b"67");
    }

    #[test]
    fn a_file_stops_the_memory_run_and_leads_once_at_the_head() {
        let mut q = OutQueue::default();
        q.extend(b"x");
        let fd = crate::sys::open_devnull().unwrap();
        q.push_file(FileRange {
            fd,
            offset: 10,
            remaining: 5,
        });
        q.extend(b"y");
        assert_eq!(memory(&q), b"x");
        q.consume(1);
        assert_eq!(file_head(&q), Some((10, 5)));
        q.consume(2);
        assert_eq!(file_head(&q), Some((12, 3)));
        q.consume(3);
        assert_eq!(memory(&q), b"y");
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn discard_finishes_every_borrowed_segment() {
        let mut q = OutQueue::default();
        q.push_borrowed(Box::new(Shared(b"a".to_vec())), 0);
        q.extend(b"b");
        q.push_borrowed(Box::new(Shared(b"c".to_vec())), 0);
        q.discard();
        assert_eq!(q.finished(), 2);
        assert!(q.is_empty());
    }
}
