//! The passes over a stream: each reads or writes, feeds the outcome to the state machine
//! (`stream.rs`), and carries out the decision it returns.

use std::time::Instant;

use super::stream::{Decision, Stream};
use super::trace::outcome;
use super::{CloseReason, Entry, FdFate, Handler, Id, Loop, Trace, READ_BUDGET, STEP_READ_CAP};
use crate::sys::{self, ev, Fd};

/// What a read pass needs from its stream, taken in the lookup that dispatched the event.
pub(super) struct ReadSetup<H> {
    fd: Fd,
    is_socket: bool,
    discard: bool,
    handler: H,
    failed: bool,
    may_read: bool,
    edge: bool,
}

impl<H: Clone> ReadSetup<H> {
    #[inline(always)]
    pub(super) fn of(s: &Stream<H>, bits: u32) -> Self {
        ReadSetup {
            fd: s.fd,
            is_socket: s.access.is_socket,
            discard: s.discard_input,
            handler: s.handler.clone(),
            failed: s.failure().is_some(),
            may_read: s.may_read(bits & (ev::HUP | ev::ERR) != 0),
            edge: s.opts.edge,
        }
    }
}

/// How a read pass ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// Nothing more to read now; `failed`: the stream's write side failed (it ends now).
    Drained { failed: bool },
    /// Input may remain (budget spent, or an EOF held for the next step): a hangup must not be
    /// settled yet.
    MayRemain,
    /// The stream ended during the pass.
    Gone,
}

impl<H: Handler> Loop<H> {
    /// Does what a transition of the stream state machine decided.
    pub(super) fn carry_out(&self, id: Id, decision: Decision) {
        match decision {
            Decision::Nothing => {}
            Decision::Flush { rearm } => {
                let mut st = self.state.borrow_mut();
                let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
                    return;
                };
                s.update_interest(self.epfd, id);
                if rearm || s.deadline.is_none() {
                    let deadline = Instant::now() + st.linger;
                    st.arm_deadline(id, deadline);
                }
            }
            Decision::SendFin => {
                let mut st = self.state.borrow_mut();
                let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
                    return;
                };
                let sent = sys::shutdown_write(s.fd);
                let next = match sent {
                    Ok(()) => s.fin_sent(),
                    Err(errno) => {
                        // Like a failed send: the peer is gone (a reset connection answers
                        // ENOTCONN). What is readable is still delivered, then on_close reports
                        // the departure; a read error met on the way is the peer's own reason.
                        let errno = match errno {
                            sys::ENOTCONN => match sys::take_socket_error(s.fd) {
                                Ok(0) | Err(_) => sys::ECONNRESET,
                                Ok(pending) => pending,
                            },
                            other => other,
                        };
                        s.write_failed(errno);
                        st.schedule(id);
                        Decision::Nothing
                    }
                };
                drop(st);
                if sent.is_ok() {
                    self.trace(id, || Trace::FinSent);
                }
                self.carry_out(id, next);
            }
            Decision::DeliverEof => {
                let handler = match self.state.borrow_mut().entries.get_mut(id) {
                    Some(Entry::Stream(s)) => {
                        s.update_interest(self.epfd, id);
                        s.handler.clone()
                    }
                    _ => return,
                };
                self.call(|| handler.on_data(self, id, &[]));
            }
            Decision::Terminate { reason, err, fate } => self.terminate(id, reason, err, fate),
        }
    }

    /// Runs a transition on a live stream and carries out its decision.
    fn transition(&self, id: Id, event: impl FnOnce(&mut Stream<H>) -> Decision) {
        let decision = match self.state.borrow_mut().entries.get_mut(id) {
            Some(Entry::Stream(s)) => event(s),
            _ => return,
        };
        self.carry_out(id, decision);
    }

    #[inline(always)]
    pub(super) fn stream_pass(&self, id: Id, bits: u32, setup: ReadSetup<H>) {
        let hangup = bits & (ev::HUP | ev::ERR) != 0;
        let read_end = if bits & (ev::IN | ev::RDHUP | ev::PRI) != 0 || hangup {
            self.read_pass(id, bits, setup)
        } else {
            ReadEnd::Drained { failed: false }
        };
        let flushing = bits & ev::OUT != 0 || hangup;
        let writable_due = flushing && self.flush(id);
        // A hangup or failure ends the stream only once everything readable was delivered.
        // A recorded send failure names the cause better than SO_ERROR, which that send cleared.
        if let ReadEnd::Drained { failed } = read_end {
            // Only a failed read or flush leaves something to settle: no lookup in the steady
            // state.
            if failed || flushing {
                self.transition(id, |s| s.input_drained());
            }
            if hangup {
                self.settle_hangup(id, bits);
            }
        }
        if writable_due {
            let handler = match self.state.borrow().entries.get(id) {
                Some(Entry::Stream(s)) if !s.ending() => Some(s.handler.clone()),
                _ => None,
            };
            if let Some(handler) = handler {
                self.call(|| handler.on_writable(self, id));
            }
        }
    }

    /// The outcome of an outbound connect: writability or an error. Success is reported as
    /// on_accept with listener 0, failure as the connection's one on_close.
    pub(super) fn connect_pass(&self, id: Id, bits: u32) {
        if bits & (ev::OUT | ev::ERR | ev::HUP) == 0 {
            return;
        }
        let mut st = self.state.borrow_mut();
        let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
            return;
        };
        let errno = match sys::take_socket_error(s.fd) {
            Ok(0) if bits & (ev::ERR | ev::HUP) != 0 => sys::ECONNRESET,
            Ok(errno) | Err(errno) => errno,
        };
        let decision = s.connected(errno);
        if decision != Decision::Nothing {
            drop(st);
            return self.carry_out(id, decision);
        }
        s.touch();
        s.update_interest(self.epfd, id);
        // Closed while connecting with bytes queued: no on_accept, just the graceful close.
        let handler = (!s.discard_input).then(|| s.handler.clone());
        drop(st);
        if let Some(handler) = handler {
            self.call(|| handler.on_accept(self, 0, id));
        }
        // Bytes queued while connecting (and a wanted FIN or close) go out now.
        let setup = match self.state.borrow().entries.get(id) {
            Some(Entry::Stream(s)) => ReadSetup::of(s, ev::OUT),
            _ => return,
        };
        self.stream_pass(id, ev::OUT, setup);
    }

    /// Reads and delivers up to the budget. Data keeps flowing after RDHUP/HUP/ERR until the
    /// kernel reports EOF or the error itself: those bits mean "read now", never "close now".
    /// The state is looked up once before the first read and once after each handler call (which
    /// also prepares the next read): the steady state costs two lookups per message.
    #[inline(always)]
    fn read_pass(&self, id: Id, bits: u32, setup: ReadSetup<H>) -> ReadEnd {
        // A short read proves nothing once the peer may have closed, nor at an urgent mark (the
        // read stops there, bytes after it): read to EOF or EAGAIN.
        let must_drain = bits & (ev::RDHUP | ev::HUP | ev::ERR | ev::PRI) != 0;
        let hangup = bits & (ev::HUP | ev::ERR) != 0;
        let ReadSetup {
            fd,
            is_socket,
            mut discard,
            mut handler,
            mut failed,
            may_read,
            edge,
        } = setup;
        if !may_read {
            return ReadEnd::Drained { failed };
        }
        let mut read = |buf: &mut [u8]| {
            if is_socket {
                sys::recv(fd, buf)
            } else {
                sys::read(fd, buf)
            }
        };
        // (asked once per pass: a callback handler never lends storage)
        let lends = handler.delivers_later();
        for _ in 0..READ_BUDGET {
            // Into the handler's own storage when it lends some (the bytes are then delivered),
            // else into the loop's buffer, for on_data.
            let lent = if lends && !discard {
                // A level-triggered stream leaves what a full step cannot take to the next one
                // (epoll reports it again; an edge-triggered or failed stream might get no event).
                if !edge && !failed && self.step_read.get() >= STEP_READ_CAP {
                    self.capped.set(true);
                    return ReadEnd::MayRemain;
                }
                handler.read_in_place(self, id, &mut read)
            } else {
                None
            };
            let (result, full, delivered) = match lent {
                Some((result, room)) => (result, result == Ok(room), true),
                None => {
                    let mut buf = self.read_buf.borrow_mut();
                    let result = read(&mut buf);
                    (result, result == Ok(buf.len()), false)
                }
            };
            self.trace(id, || Trace::Read {
                result: outcome(result),
            });
            match result {
                Ok(0) => {
                    let mut st = self.state.borrow_mut();
                    let held = matches!(st.entries.get(id), Some(Entry::Stream(s))
                        if s.data_step == self.step.get() as u32 && s.handler.delivers_later());
                    if held {
                        // The handler has not seen this step's data yet: let its reaction (the
                        // reply to the last request) be applied before the EOF ends the stream.
                        st.next_step.push(id);
                        drop(st);
                        self.trace(id, || Trace::EofHeld);
                        return ReadEnd::MayRemain;
                    }
                    drop(st);
                    self.transition(id, |s| s.peer_eof());
                    return ReadEnd::Drained { failed: false };
                }
                Ok(n) => {
                    if lends {
                        self.step_read.set(self.step_read.get() + n);
                    }
                    if !discard && !delivered {
                        let buf = self.read_buf.borrow();
                        self.call(|| handler.on_data(self, id, &buf[..n]));
                    }
                    // After the handler: the bookkeeping, and what it left of the stream.
                    let mut st = self.state.borrow_mut();
                    st.stats.bytes_in += n as u64;
                    let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
                        return ReadEnd::Gone;
                    };
                    s.touch();
                    s.data_step = self.step.get() as u32;
                    failed = s.failure().is_some();
                    if (!full && !must_drain) || !s.may_read(hangup) {
                        return ReadEnd::Drained { failed };
                    }
                    // The handler may have closed the stream or changed its user pointer.
                    discard = s.discard_input;
                    handler = s.handler.clone();
                }
                Err(sys::EAGAIN) => return ReadEnd::Drained { failed },
                Err(errno) => {
                    self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Close);
                    return ReadEnd::Gone;
                }
            }
        }
        // Budget spent with input left. Level-triggered epoll reports it again; edge-triggered
        // needs a service pass, as does a failed stream (no event may come for it).
        let mut st = self.state.borrow_mut();
        if matches!(st.entries.get(id), Some(Entry::Stream(s)) if s.opts.edge || s.failure().is_some())
        {
            st.schedule(id);
        }
        ReadEnd::MayRemain
    }

    /// HUP or ERR after the read pass: if the stream is still here and nothing more can come,
    /// end it now (level-triggered HUP/ERR would otherwise be reported forever).
    fn settle_hangup(&self, id: Id, bits: u32) {
        let fd = match self.state.borrow().entries.get(id) {
            Some(Entry::Stream(s)) => s.fd,
            _ => return,
        };
        // SO_ERROR is read (and cleared) only when the kernel reported an error.
        let err = (bits & ev::ERR != 0).then(|| sys::take_socket_error(fd).unwrap_or(0));
        self.trace(id, || Trace::Hangup {
            err: err.unwrap_or(0),
        });
        self.transition(id, |s| s.hung_up(err));
    }

    /// Writes queued output. Returns true when the queue just drained to the low-water mark after
    /// having been above the high-water mark (on_writable is due).
    pub(super) fn flush(&self, id: Id) -> bool {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
            return false;
        };
        let queued = !s.out.is_empty();
        let was_failed = s.failure().is_some();
        let written = s.write_queue();
        st.stats.bytes_out += written as u64;
        s.out.take_finished(&mut st.released);
        let write = match s.failure() {
            Some(errno) if !was_failed => -i64::from(errno),
            _ if written == 0 => -i64::from(sys::EAGAIN),
            _ => written as i64,
        };
        let writable_due = s.above_high && s.out.len() <= s.flow.low();
        if writable_due {
            s.above_high = false;
            if s.throttled {
                // EP_AUTO_PAUSE: reading resumes (a service pass: in edge-triggered mode no new
                // edge comes for what arrived meanwhile).
                s.throttled = false;
                st.schedule(id);
            }
        }
        let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
            return writable_due;
        };
        let decision = if s.out.is_empty() {
            // A connection owns memory only while it has queued output.
            s.out.shrink();
            s.update_interest(self.epfd, id);
            // A failed write is settled once the input is drained (input_drained), not here.
            if s.failure().is_some() {
                Decision::Nothing
            } else {
                s.drained()
            }
        } else {
            s.update_interest(self.epfd, id);
            Decision::Nothing
        };
        drop(guard);
        if queued {
            self.trace(id, || Trace::Write { result: write });
        }
        self.carry_out(id, decision);
        writable_due
    }
}
