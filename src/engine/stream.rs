//! A connection's whole life (or any other stream fd's): its phase, and every transition, each
//! returning a [`Decision`] that the step loop carries out. The transitions are pure (no system
//! call, no handler call), so the unit tests below drive them through every phase without sockets.
//!
//! ```text
//!   Connecting ──connected──▶ Open ──ep_close / peer EOF──▶ Closing(reason) ──queue drained──▶ Terminate
//!       │                      │  ╲                              │
//!       └──connect failed──────┼───╲─────write failed────────────┴──▶ Failed(errno) ──input drained──▶ Terminate
//!                              └──read error, hangup, timeout, ep_abort ─────────────────────────▶ Terminate
//! ```
//! Beside the phase: the output direction (`Output`: FIN wanted by ep_shutdown, FIN sent), the
//! input direction (`input_eof`), whether incoming bytes are discarded (a graceful close started),
//! and whether the caller itself closed it (its later calls are its mistake).

use std::time::Instant;

use super::outq::{Head, OutQueue};
use super::{idle_of, CloseReason, FdFate, Flow, Options};
use crate::sys::{self, ev, Errno, Fd};

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// An outbound connect is in progress; `then` is a close decided meanwhile (with bytes queued,
    /// which go out once connected).
    Connecting { then: Option<CloseReason> },
    /// Both directions usable (as far as `Output` and `input_eof` say).
    Open,
    /// A close is decided: flush the queue, send FIN if due, then end with this reason.
    Closing(CloseReason),
    /// A write failed: nothing more goes out; the stream ends with this errno once what can still
    /// be read was delivered.
    Failed(Errno),
}

/// The output direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Output {
    Open,
    /// ep_shutdown: FIN once the queue drains.
    FinWanted,
    FinSent,
}

/// What the step loop must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    Nothing,
    /// Output remains: watch writability, bounded by the linger deadline (`rearm`: start a new
    /// deadline even if one is set).
    Flush {
        rearm: bool,
    },
    /// Send FIN now (shutdown(SHUT_WR)); report success with [`Stream::fin_sent`].
    SendFin,
    /// Hand the peer's EOF to the handler (EP_HALF_CLOSE) and keep the stream open for writing.
    DeliverEof,
    /// End the registration.
    Terminate {
        reason: CloseReason,
        err: Errno,
        fate: FdFate,
    },
}

impl Decision {
    fn end(reason: CloseReason, err: Errno, fate: FdFate) -> Self {
        Decision::Terminate { reason, err, fate }
    }

    fn failure(errno: Errno) -> Self {
        Decision::end(CloseReason::from_errno(errno), errno, FdFate::Close)
    }
}

/// What kind of descriptor a stream is and which directions it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Access {
    pub is_socket: bool,
    pub readable: bool,
    pub writable: bool,
}

impl Access {
    /// A connected stream socket: both directions.
    pub fn socket() -> Access {
        Access {
            is_socket: true,
            readable: true,
            writable: true,
        }
    }
}

pub(super) struct Stream<H> {
    pub fd: Fd,
    pub handler: H,
    pub opts: Options,
    pub access: Access,
    /// The status flags to restore when the loop lets go of an adopted fd.
    pub adopted_status: Option<i32>,
    pub phase: Phase,
    pub output: Output,
    pub input_eof: bool,
    /// A graceful close started (the caller's ep_close, or ep_drain's): input is read and dropped.
    pub discard_input: bool,
    /// The caller itself called ep_close: its later calls on the id get Error::Closing.
    pub closed_by_caller: bool,
    /// Read flow control (ep_pause_reading).
    pub paused: bool,
    /// Reading paused by EP_AUTO_PAUSE while the queue is above its high-water mark.
    pub throttled: bool,
    /// The epoll interest registered now.
    pub interest: u32,
    pub out: OutQueue,
    pub flow: Flow,
    /// The queue went above the high-water mark; on_writable is due once it drains to the low one.
    pub above_high: bool,
    /// The phase's deadline (connect timeout, or a flush that must progress).
    pub deadline: Option<Instant>,
    /// Output went out since the phase deadline was armed: a live slow reader is not a dead one.
    pub flushed_since_deadline: bool,
    /// Queued for a pass without a kernel event (see State::schedule).
    pub in_service: bool,
    /// Inactivity timeout in ms (0: none), measured from the last byte read or written.
    pub idle_ms: u32,
    pub last_active: Instant,
    /// Arming order of the one idle check that counts (older ones are ignored when they fire).
    /// (its low 32 bits: a false match only re-checks the timeout, which is harmless)
    pub idle_seq: u32,
    /// The loop step in which data was last delivered (see Handler::delivers_later); its low 32
    /// bits (a false match, 2^32 steps later, holds an EOF back one step).
    pub data_step: u32,
}

impl<H> Stream<H> {
    pub fn new(fd: Fd, handler: H, opts: Options, access: Access, flow: Flow) -> Self {
        Stream {
            fd,
            handler,
            opts,
            access,
            adopted_status: None,
            phase: Phase::Open,
            output: Output::Open,
            input_eof: false,
            discard_input: false,
            closed_by_caller: false,
            paused: false,
            throttled: false,
            interest: 0,
            out: OutQueue::default(),
            flow,
            above_high: false,
            deadline: None,
            flushed_since_deadline: false,
            in_service: false,
            idle_ms: 0,
            last_active: Instant::now(),
            idle_seq: 0,
            data_step: 0,
        }
    }

    pub fn connecting(&self) -> bool {
        matches!(self.phase, Phase::Connecting { .. })
    }

    pub fn failure(&self) -> Option<Errno> {
        match self.phase {
            Phase::Failed(errno) => Some(errno),
            _ => None,
        }
    }

    /// A close is decided or the stream failed: on_writable and the idle timeout no longer apply.
    pub fn ending(&self) -> bool {
        match self.phase {
            Phase::Connecting { then } => then.is_some(),
            Phase::Open => false,
            Phase::Closing(_) | Phase::Failed(_) => true,
        }
    }

    /// Whether a read may happen now. Pause is honoured until the stream cannot live on (a hangup
    /// or a failed send): then what remains is delivered before on_close.
    pub fn may_read(&self, hangup: bool) -> bool {
        let forced = hangup || self.failure().is_some();
        self.access.readable
            && !self.input_eof
            && (!(self.paused || self.throttled) || self.discard_input || forced)
    }

    /// The epoll interest this stream's state calls for. Edge-triggered reading also watches
    /// urgent data: a read stops short at the urgent mark with bytes after it, so that short
    /// read does not prove the socket drained, and the event that says so (EPOLLPRI) makes the
    /// read pass go on to EAGAIN. (Level-triggered reading needs no such event: the bytes after
    /// the mark keep EPOLLIN up; and EPOLLPRI would be reported for as long as the urgent byte
    /// is unread, a busy loop.)
    pub fn wanted_interest(&self) -> u32 {
        let edge = if self.opts.edge { ev::ET } else { 0 };
        if self.connecting() {
            return ev::OUT | edge;
        }
        let mut interest = if !self.may_read(false) {
            0
        } else if self.opts.edge {
            ev::IN | ev::RDHUP | ev::PRI
        } else {
            ev::IN | ev::RDHUP
        };
        if !self.out.is_empty() {
            interest |= ev::OUT;
        }
        interest | edge
    }

    /// How the peer's EOF ends this stream: an orderly close the app asked for with ep_shutdown
    /// is the app's (Local); otherwise the peer ended it.
    fn eof_reason(&self) -> CloseReason {
        if self.output == Output::Open {
            CloseReason::PeerEof
        } else {
            CloseReason::Local
        }
    }

    /// Decides `reason` as the close to come, unless one is decided already (the first wins).
    fn decide_close(&mut self, reason: CloseReason) {
        match self.phase {
            Phase::Open => self.phase = Phase::Closing(reason),
            Phase::Connecting { then: None } => {
                self.phase = Phase::Connecting { then: Some(reason) }
            }
            Phase::Connecting { .. } | Phase::Closing(_) | Phase::Failed(_) => {}
        }
    }

    // -----------------------------------------------------------------------------------------
    // transitions (pure)

    /// A graceful close starts (the caller's ep_close, or ep_drain's deadline).
    pub fn close(&mut self) -> Decision {
        if self.discard_input {
            return Decision::Nothing;
        }
        self.discard_input = true;
        self.decide_close(CloseReason::Local);
        if self.connecting() {
            if self.out.is_empty() {
                return Decision::end(CloseReason::Local, 0, FdFate::Close);
            }
            return Decision::Flush { rearm: true };
        }
        if self.out.is_empty() || self.failure().is_some() {
            return self.drained();
        }
        Decision::Flush { rearm: true }
    }

    /// ep_shutdown: FIN once the queue drains; the peer's EOF then ends the stream (Local).
    pub fn shutdown(&mut self) -> Decision {
        if self.discard_input || self.failure().is_some() || self.output != Output::Open {
            return Decision::Nothing;
        }
        self.output = Output::FinWanted;
        if self.out.is_empty() && !self.connecting() {
            self.drained()
        } else {
            Decision::Nothing
        }
    }

    /// The queue is empty (or can never drain): send a wanted FIN, or end a decided close.
    pub fn drained(&mut self) -> Decision {
        if let Phase::Failed(errno) = self.phase {
            return Decision::failure(errno);
        }
        let fin_due = self.output == Output::FinWanted
            || (self.output == Output::Open && self.phase == Phase::Closing(CloseReason::Local));
        if self.access.is_socket && fin_due {
            return Decision::SendFin;
        }
        self.settle_close()
    }

    /// FIN went out.
    pub fn fin_sent(&mut self) -> Decision {
        self.output = Output::FinSent;
        self.settle_close()
    }

    /// With the queue empty and any FIN sent: end the stream if a close is due.
    fn settle_close(&mut self) -> Decision {
        let reason = match self.phase {
            Phase::Closing(reason) => reason,
            // ep_shutdown done and the peer's EOF already seen: both directions are finished.
            _ if self.output == Output::FinSent && self.input_eof => CloseReason::Local,
            _ => return Decision::Nothing,
        };
        let fate = if self.output == Output::FinSent && !self.input_eof && !self.opts.borrow {
            FdFate::Linger
        } else {
            FdFate::Close
        };
        Decision::end(reason, 0, fate)
    }

    /// The peer's EOF was read (read() returned 0).
    pub fn peer_eof(&mut self) -> Decision {
        self.input_eof = true;
        if self.opts.half_close && !self.discard_input && self.failure().is_none() {
            if self.output == Output::FinSent {
                return Decision::end(CloseReason::Local, 0, FdFate::Close);
            }
            return Decision::DeliverEof;
        }
        self.decide_close(self.eof_reason());
        if self.out.is_empty() || self.failure().is_some() {
            // Ends now: no epoll_ctl for a descriptor about to be released.
            return self.drained();
        }
        Decision::Flush { rearm: false }
    }

    /// A write failed with `errno`: nothing more can be sent; the stream ends once reads are
    /// exhausted (see [`Stream::input_drained`]).
    pub fn write_failed(&mut self, errno: Errno) {
        if self.failure().is_none() {
            self.phase = Phase::Failed(errno);
        }
        self.out.discard();
    }

    /// Everything readable was delivered: a failed stream ends now.
    pub fn input_drained(&self) -> Decision {
        match self.phase {
            Phase::Failed(errno) => Decision::failure(errno),
            _ => Decision::Nothing,
        }
    }

    /// HUP or ERR after the input was drained. `socket_error` is SO_ERROR when ERR was reported.
    pub fn hung_up(&self, err: Option<Errno>) -> Decision {
        match err {
            Some(0) => Decision::failure(if self.access.readable {
                sys::EIO
            } else {
                sys::EPIPE
            }),
            Some(errno) => Decision::failure(errno),
            None if (self.input_eof || !self.access.readable) && self.out.is_empty() => {
                Decision::end(self.eof_reason(), 0, FdFate::Close)
            }
            None => Decision::Nothing,
        }
    }

    /// The outcome of an outbound connect: 0, or the errno it failed with.
    pub fn connected(&mut self, errno: Errno) -> Decision {
        if errno != 0 {
            return Decision::failure(errno);
        }
        self.phase = match self.phase {
            Phase::Connecting { then: Some(reason) } => Phase::Closing(reason),
            _ => Phase::Open,
        };
        self.deadline = None;
        Decision::Nothing
    }

    /// How an ep_abort ends the stream: the first cause wins, so a failed stream keeps its
    /// failure's reason.
    pub fn abort(&self) -> Decision {
        match self.phase {
            Phase::Failed(errno) => {
                Decision::end(CloseReason::from_errno(errno), errno, FdFate::Reset)
            }
            _ => Decision::end(CloseReason::Abort, 0, FdFate::Reset),
        }
    }

    // -----------------------------------------------------------------------------------------
    // input and output

    /// Tells epoll about a changed interest; no system call in the steady state.
    pub fn update_interest(&mut self, epfd: Fd, token: u64) {
        let wanted = self.wanted_interest();
        if wanted != self.interest && sys::epoll_modify(epfd, self.fd, wanted, token).is_ok() {
            self.interest = wanted;
        }
    }

    /// Writes one buffer (the direct path of ep_send).
    #[inline]
    pub fn write_one(&self, buf: &[u8]) -> Result<usize, Errno> {
        if self.access.is_socket {
            sys::send(self.fd, buf)
        } else {
            sys::write_vectored(self.fd, &[buf])
        }
    }

    pub fn write(&self, bufs: &[&[u8]]) -> Result<usize, Errno> {
        if self.access.is_socket {
            sys::send_vectored(self.fd, bufs)
        } else {
            sys::write_vectored(self.fd, bufs)
        }
    }

    /// The inactivity timeout.
    pub fn idle(&self) -> Option<std::time::Duration> {
        idle_of(self.idle_ms)
    }

    /// Records progress for the idle timeout (a clock read only when one is set).
    pub fn touch(&mut self) {
        if self.idle_ms != 0 {
            self.last_active = Instant::now();
        }
    }

    /// Writes as much of the queue as the kernel takes now; returns the bytes written. A failed
    /// write moves the stream to Failed; so does a queued file that ends before its range does
    /// (ENODATA). Borrowed segments written out move to `out.finished`.
    pub fn write_queue(&mut self) -> usize {
        let mut written = 0;
        loop {
            let mut bufs: [&[u8]; sys::MAX_IOV] = [&[]; sys::MAX_IOV];
            let (result, wanted) = match self.out.head(&mut bufs) {
                Head::Empty => break,
                Head::Memory(n) => {
                    let wanted = bufs[..n].iter().map(|b| b.len()).sum::<usize>();
                    (self.write(&bufs[..n]), wanted)
                }
                Head::File {
                    fd,
                    offset,
                    remaining,
                } => match sys::sendfile(self.fd, fd, offset, remaining) {
                    Ok(0) => (Err(sys::ENODATA), remaining),
                    other => (other, remaining),
                },
            };
            match result {
                Ok(n) => {
                    self.out.consume(n);
                    written += n;
                    if n < wanted {
                        break;
                    }
                }
                Err(sys::EAGAIN) => break,
                Err(errno) => {
                    self.write_failed(errno);
                    break;
                }
            }
        }
        if written > 0 {
            self.touch();
            self.flushed_since_deadline = true;
        }
        written
    }

    /// The queue grew: above the high-water mark, on_writable becomes due, and with
    /// EP_AUTO_PAUSE reading stops until the queue drains to the low one. Returns whether the
    /// queue is above the high-water mark.
    #[inline]
    pub fn queued_more(&mut self) -> bool {
        let above = self.out.len() > self.flow.high();
        if above {
            self.above_high = true;
            self.throttled |= self.opts.auto_pause;
        }
        above
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
