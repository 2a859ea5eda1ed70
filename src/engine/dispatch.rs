//! One step of the loop: wait, dispatch each event to its registration's pass, carry out the
//! decisions of the stream state machine (`stream.rs`), run deferred work, expire deadlines,
//! deliver the closes decided during the step. `terminate()` is the one close path.

use std::collections::VecDeque;
use std::time::Instant;

use super::stream::Decision;
use super::{
    CloseReason, Closed, Ender, Entry, Error, FdFate, Handler, Id, Lingering, Loop, RunState,
    READ_BUDGET, WAKE_TOKEN,
};
use crate::sys::{self, ev, Errno};

const MAX_EVENTS: usize = 4096;

/// Decrements the callback depth even if a handler unwinds.
struct DepthGuard<'a>(&'a std::cell::Cell<u32>);

impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

enum Kind {
    Listener,
    Stream,
    Lingering,
}

impl<H: Handler> Loop<H> {
    /// Runs a handler with no borrow of the loop's state held.
    pub(super) fn call(&self, f: impl FnOnce()) {
        self.depth.set(self.depth.get() + 1);
        let _guard = DepthGuard(&self.depth);
        f();
    }

    /// Runs until ep_stop or until nothing is registered.
    pub fn run(&self) -> Result<RunState, Error> {
        loop {
            match self.run_once(-1) {
                Ok(RunState::More) | Err(Error::Os(sys::EINTR)) => continue,
                other => return other,
            }
        }
    }

    /// One wait (timeout in ms, -1 = until something happens) and the dispatch of what it returned.
    pub fn run_once(&self, timeout_ms: i32) -> Result<RunState, Error> {
        if self.in_callback() || self.freeing.get() {
            return Err(Error::Busy);
        }
        if self.remote.take_stop() {
            return Ok(RunState::Stopped);
        }
        if !self.has_work() {
            return Ok(RunState::Empty);
        }
        self.step.set(self.step.get() + 1);
        {
            // Peer EOFs held back last step (Handler::delivers_later) are read in this one.
            let mut st = self.state.borrow_mut();
            for id in std::mem::take(&mut st.next_step) {
                st.schedule(id);
            }
        }
        let timeout = self.wait_timeout(timeout_ms);
        let mut events = self.events.borrow_mut();
        let n = sys::epoll_wait(self.epfd, &mut events, timeout).map_err(Error::Os)?;
        for i in 0..n {
            let (bits, token) = events.get(i);
            if token == WAKE_TOKEN {
                sys::eventfd_drain(self.remote.wake_fd);
                self.run_posted();
            } else {
                self.dispatch(token, bits);
            }
        }
        if n == events.capacity() && n < MAX_EVENTS {
            events.grow(n * 2);
        }
        drop(events);
        self.run_service();
        self.run_timers(Instant::now());
        self.deliver_closes();
        self.state.borrow_mut().entries.compact();
        if self.remote.take_stop() {
            Ok(RunState::Stopped)
        } else if self.has_work() {
            Ok(RunState::More)
        } else {
            Ok(RunState::Empty)
        }
    }

    fn has_work(&self) -> bool {
        let st = self.state.borrow();
        st.live - st.unref_count + st.lingering > 0
            || !st.closes.is_empty()
            || self.remote.has_posted()
    }

    fn kind(&self, id: Id) -> Option<Kind> {
        match self.state.borrow().entries.get(id)? {
            Entry::Listener(_) => Some(Kind::Listener),
            Entry::Stream(_) => Some(Kind::Stream),
            Entry::Lingering(_) => Some(Kind::Lingering),
            Entry::Closed(Closed {
                lingering: Some(_), ..
            }) => Some(Kind::Lingering),
            Entry::Timer(_) | Entry::Closed(_) => None,
        }
    }

    /// One dispatch step: the event's pass, then the closes it decided.
    fn dispatch(&self, id: Id, bits: u32) {
        match self.kind(id) {
            // A stale event: its registration ended earlier in this batch (maybe its fd was reused).
            None => self.state.borrow_mut().stats.stale_events += 1,
            Some(Kind::Listener) => self.accept_pass(id),
            Some(Kind::Stream) => self.stream_pass(id, bits),
            Some(Kind::Lingering) => self.linger_pass(id),
        }
        self.deliver_closes();
    }

    fn run_service(&self) {
        let pending: VecDeque<Id> = std::mem::take(&mut self.state.borrow_mut().service);
        for id in pending {
            if let Some(Entry::Stream(s)) = self.state.borrow_mut().entries.get_mut(id) {
                s.in_service = false;
            }
            // No short read proves the socket drained here (the FIN may already have been
            // reported by an earlier edge), so read like after RDHUP: to EAGAIN or EOF.
            self.dispatch(id, ev::IN | ev::RDHUP);
        }
    }

    /// Runs what other threads posted, each exactly once, in posting order.
    pub(super) fn run_posted(&self) {
        for posted in self.remote.take_posted(false) {
            self.call(|| H::run_posted(self, posted));
            self.deliver_closes();
        }
    }

    /// Delivers every close decided so far; closes decided by these callbacks are delivered too.
    pub(super) fn deliver_closes(&self) {
        loop {
            let (id, closed) = {
                let mut st = self.state.borrow_mut();
                let Some(id) = st.closes.pop_front() else {
                    return;
                };
                // From here on the id is stale, inside on_close too; a lingering socket stays
                // in the slot (stale for the user) until the loop is done with it.
                let Some(slot) = st.entries.get_mut(id) else {
                    unreachable!("a pending close keeps its Closed entry")
                };
                let entry = match slot {
                    Entry::Closed(closed) => match closed.lingering.take() {
                        Some(lingering) => std::mem::replace(slot, Entry::Lingering(lingering)),
                        None => st.entries.remove(id).expect("the slot was just read"),
                    },
                    _ => unreachable!("a pending close keeps its Closed entry"),
                };
                let Entry::Closed(closed) = entry else {
                    unreachable!("matched above")
                };
                (id, closed)
            };
            self.call(|| closed.handler.on_close(self, id, closed.reason, closed.err));
        }
    }

    // -----------------------------------------------------------------------------------------
    // streams: each pass reads or writes, feeds the outcome to the state machine, and carries
    // out its decision

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
                let next = match sys::shutdown_write(s.fd) {
                    Ok(()) => s.fin_sent(),
                    Err(errno) => Decision::Terminate {
                        reason: CloseReason::from_errno(errno),
                        err: errno,
                        fate: FdFate::Close,
                    },
                };
                drop(st);
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
    fn transition(&self, id: Id, event: impl FnOnce(&mut super::stream::Stream<H>) -> Decision) {
        let decision = match self.state.borrow_mut().entries.get_mut(id) {
            Some(Entry::Stream(s)) => event(s),
            _ => return,
        };
        self.carry_out(id, decision);
    }

    fn stream_pass(&self, id: Id, bits: u32) {
        if matches!(self.state.borrow().entries.get(id), Some(Entry::Stream(s)) if s.connecting()) {
            return self.connect_pass(id, bits);
        }
        let hangup = bits & (ev::HUP | ev::ERR) != 0;
        let drained = if bits & (ev::IN | ev::RDHUP) != 0 || hangup {
            self.read_pass(id, bits)
        } else {
            true
        };
        let writable_due = if bits & ev::OUT != 0 || hangup {
            self.flush(id)
        } else {
            false
        };
        // A hangup or failure ends the stream only once everything readable was delivered.
        // A recorded send failure names the cause better than SO_ERROR, which that send cleared.
        if drained {
            self.transition(id, |s| s.input_drained());
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
    fn connect_pass(&self, id: Id, bits: u32) {
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
        self.stream_pass(id, ev::OUT);
    }

    /// Reads and delivers up to the budget. Data keeps flowing after RDHUP/HUP/ERR until the
    /// kernel reports EOF or the error itself: those bits mean "read now", never "close now".
    /// Returns false when input may remain (budget spent, or an EOF held for the next step), so
    /// a hangup must not be settled yet.
    fn read_pass(&self, id: Id, bits: u32) -> bool {
        // A short read proves nothing once the peer may have closed: read to EOF or EAGAIN.
        let must_drain = bits & (ev::RDHUP | ev::HUP | ev::ERR) != 0;
        let hangup = bits & (ev::HUP | ev::ERR) != 0;
        for _ in 0..READ_BUDGET {
            let (fd, is_socket, discard, handler) = {
                let st = self.state.borrow();
                let Some(Entry::Stream(s)) = st.entries.get(id) else {
                    return true;
                };
                if !s.may_read(hangup) {
                    return true;
                }
                (s.fd, s.access.is_socket, s.discard_input, s.handler.clone())
            };
            let mut buf = self.read_buf.borrow_mut();
            let result = if is_socket {
                sys::recv(fd, &mut buf)
            } else {
                sys::read(fd, &mut buf)
            };
            match result {
                Ok(0) => {
                    drop(buf);
                    let mut st = self.state.borrow_mut();
                    let held = matches!(st.entries.get(id), Some(Entry::Stream(s))
                        if s.data_step == self.step.get() && s.handler.delivers_later());
                    if held {
                        // The handler has not seen this step's data yet: let its reaction (the
                        // reply to the last request) be applied before the EOF ends the stream.
                        st.next_step.push(id);
                        return false;
                    }
                    drop(st);
                    self.transition(id, |s| s.peer_eof());
                    return true;
                }
                Ok(n) => {
                    let full = n == buf.len();
                    drop(buf);
                    {
                        let mut st = self.state.borrow_mut();
                        st.stats.bytes_in += n as u64;
                        if let Some(Entry::Stream(s)) = st.entries.get_mut(id) {
                            s.touch();
                            s.data_step = self.step.get();
                        }
                    }
                    if !discard {
                        let buf = self.read_buf.borrow();
                        self.call(|| handler.on_data(self, id, &buf[..n]));
                    }
                    if !full && !must_drain {
                        return true;
                    }
                }
                Err(sys::EAGAIN) => return true,
                Err(errno) => {
                    drop(buf);
                    self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Close);
                    return true;
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
        false
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
        st.stats.bytes_out += s.write_queue() as u64;
        let writable_due = s.above_high && s.out.len() <= s.flow.low;
        if writable_due {
            s.above_high = false;
        }
        if s.out.is_empty() {
            // A connection owns memory only while it has queued output.
            s.out = std::collections::VecDeque::new();
            s.update_interest(self.epfd, id);
            // A failed write is settled once the input is drained (input_drained), not here.
            let decision = if s.failure().is_some() {
                Decision::Nothing
            } else {
                s.drained()
            };
            drop(guard);
            self.carry_out(id, decision);
        } else {
            s.update_interest(self.epfd, id);
        }
        writable_due
    }

    // -----------------------------------------------------------------------------------------
    // the one close path

    /// Ends a registration for the user: releases or hands its fd to lingering, and queues its
    /// single on_close. Every way a registration ends comes through here.
    pub(super) fn terminate(&self, id: Id, reason: CloseReason, err: Errno, fate: FdFate) {
        let mut st = self.state.borrow_mut();
        if !matches!(
            st.entries.get(id),
            Some(Entry::Stream(_) | Entry::Listener(_))
        ) {
            return;
        }
        // The id stays resolvable (its user pointer too) until its on_close is delivered. The
        // Closed entry is made with a placeholder handler: the real one moves in below.
        let entry = match st.entries.get_mut(id) {
            Some(slot @ (Entry::Stream(_) | Entry::Listener(_))) => {
                let handler = match &*slot {
                    Entry::Stream(s) => s.handler.clone(),
                    Entry::Listener(l) => l.handler.clone(),
                    _ => unreachable!("matched above"),
                };
                let placeholder = Entry::Closed(Closed {
                    handler,
                    ender: Ender::Loop,
                    listener: false,
                    reason,
                    err,
                    lingering: None,
                });
                std::mem::replace(slot, placeholder)
            }
            _ => return,
        };
        let unref = match &entry {
            Entry::Stream(s) => s.opts.unref,
            Entry::Listener(l) => l.opts.unref,
            _ => false,
        };
        let (ender, listener) = match &entry {
            Entry::Stream(s) if s.closed_by_caller => (Ender::CallerClose, false),
            Entry::Listener(_) => (Ender::Loop, true),
            _ => (Ender::Loop, false),
        };
        if let Some(Entry::Closed(closed)) = st.entries.get_mut(id) {
            closed.ender = ender;
            closed.listener = listener;
        }
        match entry {
            Entry::Stream(s) => {
                if fate == FdFate::Linger {
                    let deadline = Instant::now() + st.linger;
                    // Level-triggered from here on (usually already so: no system call).
                    let level = ev::IN | ev::RDHUP;
                    if s.interest == level || sys::epoll_modify(self.epfd, s.fd, level, id).is_ok()
                    {
                        st.lingering += 1;
                        st.arm(deadline, id);
                        if let Some(Entry::Closed(closed)) = st.entries.get_mut(id) {
                            closed.lingering = Some(Lingering { fd: s.fd, deadline });
                        }
                    } else {
                        self.release(s.fd, false, None, false);
                    }
                } else {
                    self.release(
                        s.fd,
                        s.opts.borrow,
                        s.adopted_status,
                        fate == FdFate::Reset && s.access.is_socket,
                    );
                }
            }
            Entry::Listener(l) => {
                self.release(l.fd, l.opts.borrow, l.adopted_status, false);
            }
            _ => unreachable!("checked above: a stream or a listener"),
        }
        st.live -= 1;
        st.unref_count -= usize::from(unref);
        st.stats.closes[reason as usize] += 1;
        st.closes.push_back(id);
    }

    fn linger_pass(&self, id: Id) {
        let Some(fd) = self
            .state
            .borrow()
            .entries
            .get(id)
            .and_then(Entry::lingering)
            .map(|l| l.fd)
        else {
            return;
        };
        let mut buf = self.read_buf.borrow_mut();
        for _ in 0..READ_BUDGET {
            match sys::recv(fd, &mut buf) {
                Ok(n) if n > 0 => continue,
                // Drained for now; level-triggered, so leftover input is reported again.
                Err(sys::EAGAIN) => return,
                // EOF or an error: the peer is done, the socket can go.
                _ => {
                    drop(buf);
                    return self.end_linger(id, false);
                }
            }
        }
    }

    /// Lets go of a lingering socket (with an RST when `reset`).
    pub(super) fn end_linger(&self, id: Id, reset: bool) {
        let mut st = self.state.borrow_mut();
        let lingering = match st.entries.get_mut(id) {
            // on_close not delivered yet: the Closed entry stays for it.
            Some(Entry::Closed(closed)) => closed.lingering.take(),
            Some(Entry::Lingering(_)) => match st.entries.remove(id) {
                Some(Entry::Lingering(l)) => Some(l),
                _ => None,
            },
            _ => None,
        };
        if let Some(l) = lingering {
            self.release(l.fd, false, None, reset);
            st.lingering -= 1;
        }
    }

    /// Lets go of a descriptor: out of epoll, then closed (owned) or given back as it came
    /// (borrowed). In a child after fork() only the child's copy is closed: the epoll set, the
    /// socket's options and its blocking mode are shared with the parent and stay as they are.
    fn release(&self, fd: sys::Fd, borrowed: bool, adopted_status: Option<i32>, reset: bool) {
        if self.forked.get() {
            if !borrowed {
                sys::close(fd);
            }
            return;
        }
        let _ = sys::epoll_delete(self.epfd, fd);
        if reset {
            let _ = sys::set_linger_zero(fd);
        }
        if let Some(status) = adopted_status {
            if status & libc::O_NONBLOCK == 0 {
                let _ = sys::set_status_flags(fd, status);
            }
        }
        if !borrowed {
            sys::close(fd);
        }
    }
}
