//! The trace hook: one record for every decision the loop makes about a registration — the epoll
//! bits it saw, each read and write result, an EOF held back, a hangup settled, FIN sent, the
//! close decided with its cause. Off by default; when off, each trace point costs one branch.
//! Records are emitted only where no borrow of the loop's state is held, so the hook is an
//! ordinary callback.

use super::{CloseReason, Handler, Id, Loop};
use crate::sys::Errno;

/// One decision of the loop about registration `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trace {
    /// epoll reported these event bits.
    Epoll { bits: u32 },
    /// A read returned this many bytes (0: the peer's EOF), or failed with -errno.
    Read { result: i64 },
    /// A write (a direct send or a flush of the queue) handed this many bytes to the kernel, or
    /// failed with -errno (-EAGAIN: the kernel took nothing; the rest stays queued).
    Write { result: i64 },
    /// The peer's EOF came in the same step as data a queue-mode handler has not seen yet: held
    /// until the next step, so the reply to that data goes out first.
    EofHeld,
    /// EPOLLHUP/EPOLLERR after the input was drained; `err` is SO_ERROR (0: none).
    Hangup { err: Errno },
    /// FIN was sent (ep_shutdown, or a graceful close after its queue drained).
    FinSent,
    /// The registration's one close is decided (its on_close follows at the end of the step).
    Close { reason: CloseReason, err: Errno },
}

impl<H: Handler> Loop<H> {
    /// Turns the trace hook on or off (the FFI keeps the hook itself).
    pub fn set_tracing(&self, on: bool) {
        self.tracing.set(on);
    }

    /// Emits a record when tracing is on. Call only with no borrow of the state held.
    #[inline(always)]
    pub(super) fn trace(&self, id: Id, record: impl FnOnce() -> Trace) {
        if self.tracing.get() {
            let record = record();
            self.call(|| H::on_trace(self, id, record));
        }
    }
}

/// `result` of a read or write as a trace value: bytes, or -errno.
pub(super) fn outcome(result: Result<usize, Errno>) -> i64 {
    match result {
        Ok(n) => n as i64,
        Err(errno) => -i64::from(errno),
    }
}
