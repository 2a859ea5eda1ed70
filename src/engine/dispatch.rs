//! One step of the loop: wait, dispatch each event to its registration's pass, run deferred work,
//! expire deadlines, deliver the closes decided during the step.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{
    CloseReason, Closed, Entry, Error, FdFate, Handler, Id, Lingering, Loop, PendingClose,
    RunState, ACCEPT_BACKOFF, ACCEPT_BUDGET, DRAIN_TOKEN, READ_BUDGET, WAKE_TOKEN,
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
        if self.remote.stop.swap(false, Ordering::SeqCst) {
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
                self.remote.wake_fd.drain();
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
        if self.remote.stop.swap(false, Ordering::SeqCst) {
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

    fn wait_timeout(&self, timeout_ms: i32) -> i32 {
        let st = self.state.borrow();
        if !st.service.is_empty() || !st.closes.is_empty() {
            return 0;
        }
        match st.timers.peek() {
            Some(Reverse((deadline, _, _))) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Round up, so a deadline 0.5 ms away never turns into a busy spin.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                if timeout_ms < 0 {
                    ms
                } else {
                    ms.min(timeout_ms)
                }
            }
            None => timeout_ms,
        }
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

    fn run_timers(&self, now: Instant) {
        loop {
            let id = {
                let mut st = self.state.borrow_mut();
                match st.timers.peek() {
                    Some(Reverse((deadline, _, _))) if *deadline <= now => {}
                    _ => return,
                }
                let Some(Reverse((_, seq, id))) = st.timers.pop() else {
                    return;
                };
                (seq, id)
            };
            self.expire(id.1, id.0, now);
            self.deliver_closes();
        }
    }

    /// A deadline of `id` may have passed; timers are not cancelled, so check the state's own.
    fn expire(&self, id: Id, seq: u64, now: Instant) {
        let mut st = self.state.borrow_mut();
        if id == DRAIN_TOKEN {
            if st.drain_at.is_some_and(|at| at <= now) {
                st.drain_at = None;
                drop(st);
                self.close_remaining();
            }
            return;
        }
        match st.entries.get_mut(id) {
            Some(Entry::Timer(t)) if t.seq == seq => {
                let handler = t.handler.clone();
                match t.repeat {
                    Some(every) if !every.is_zero() => {
                        // Fixed rate without catch-up bursts: the next period boundary after now.
                        let mut next = t.deadline + every;
                        while next <= now {
                            next += every;
                        }
                        t.deadline = next;
                        let seq = st.arm(next, id);
                        if let Some(Entry::Timer(t)) = st.entries.get_mut(id) {
                            t.seq = seq;
                        }
                    }
                    _ => {
                        st.entries.remove(id);
                        st.live -= 1;
                        st.timer_count -= 1;
                    }
                }
                drop(st);
                self.call(|| handler.on_timer(self, id));
            }
            Some(Entry::Stream(s)) if s.deadline.is_some_and(|d| d <= now) => {
                // A flush that is still making progress gets another linger period.
                if std::mem::take(&mut s.flushed_since_deadline) {
                    let next = now + st.linger;
                    st.arm_deadline(id, next);
                    return;
                }
                drop(st);
                self.terminate(id, CloseReason::Timeout, sys::ETIMEDOUT, FdFate::Reset);
            }
            Some(Entry::Stream(s)) if s.idle_seq == seq && s.closing.is_none() => {
                let Some(idle) = s.idle else { return };
                let due = s.last_active + idle;
                if due <= now {
                    drop(st);
                    self.terminate(id, CloseReason::Timeout, sys::ETIMEDOUT, FdFate::Close);
                } else {
                    st.arm_idle(id, due);
                }
            }
            Some(entry) if entry.lingering().is_some_and(|l| l.deadline <= now) => {
                drop(st);
                self.end_linger(id);
            }
            Some(Entry::Listener(l)) if l.backoff_until.is_some_and(|d| d <= now) => {
                l.backoff_until = None;
                l.update_interest(self.epfd, id);
                st.schedule(id);
            }
            _ => {}
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
            let (pending, closed) = {
                let mut st = self.state.borrow_mut();
                let Some(pending) = st.closes.pop_front() else {
                    return;
                };
                // From here on the id is stale, inside on_close too; a lingering socket stays
                // in the slot (stale for the user) until the loop is done with it.
                let Some(Entry::Closed(closed)) = st.entries.get_mut(pending.id) else {
                    unreachable!("a pending close keeps its Closed entry")
                };
                let (reason, err) = (closed.reason, closed.err);
                match closed.lingering.take() {
                    Some(lingering) => {
                        if let Some(slot) = st.entries.get_mut(pending.id) {
                            *slot = Entry::Lingering(lingering);
                        }
                    }
                    None => {
                        st.entries.remove(pending.id);
                    }
                }
                (pending, (reason, err))
            };
            let (reason, err) = closed;
            self.call(|| pending.handler.on_close(self, pending.id, reason, err));
        }
    }

    // -----------------------------------------------------------------------------------------
    // listeners

    fn accept_pass(&self, id: Id) {
        for _ in 0..ACCEPT_BUDGET {
            let (fd, handler, opts, flow, idle) = {
                let st = self.state.borrow();
                match st.entries.get(id) {
                    Some(Entry::Listener(l)) if !l.paused && l.backoff_until.is_none() => (
                        l.fd,
                        l.handler.clone(),
                        l.opts,
                        (l.flow.low, l.flow.high),
                        l.idle,
                    ),
                    _ => return,
                }
            };
            match sys::accept(fd) {
                Ok(conn_fd) => {
                    let conn_fd = conn_fd.into_raw_fd();
                    let mut stream = super::Stream::new(
                        conn_fd,
                        handler.clone(),
                        super::Options {
                            borrow: false,
                            ..opts
                        },
                        true,
                        true,
                        true,
                        super::Flow {
                            low: flow.0,
                            high: flow.1,
                        },
                        None,
                    );
                    stream.idle = idle;
                    match self.add_stream(stream) {
                        Ok(conn) => {
                            self.state.borrow_mut().stats.accepted += 1;
                            self.call(|| handler.on_accept(self, id, conn));
                        }
                        Err(_) => sys::close(conn_fd),
                    }
                }
                Err(sys::EAGAIN) => return,
                Err(sys::EMFILE | sys::ENFILE) => return self.shed_load(id, fd),
                Err(sys::ENOBUFS | sys::ENOMEM) => return self.back_off(id),
                // The connection died in the backlog, or a firewall refused it: next one.
                Err(sys::ECONNABORTED | libc::EPROTO | libc::EPERM) => continue,
                Err(errno) => {
                    return self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Close)
                }
            }
        }
        // Budget spent: in edge-triggered mode no new edge comes for the rest of the backlog.
        if matches!(self.state.borrow().entries.get(id), Some(Entry::Listener(l)) if l.opts.edge) {
            self.state.borrow_mut().schedule(id);
        }
    }

    /// Out of descriptors: release the reserve, accept and reset every waiting connection so the
    /// clients learn at once and the level-triggered listener does not spin, take the reserve back.
    fn shed_load(&self, id: Id, fd: sys::Fd) {
        let reserve = self.state.borrow_mut().reserve_fd.take();
        let Some(reserve) = reserve else {
            return self.back_off(id);
        };
        drop(reserve);
        let mut shed = 0;
        while let Ok(conn) = sys::accept(fd) {
            let _ = sys::set_linger_zero(conn.as_raw_fd());
            drop(conn);
            shed += 1;
        }
        self.state.borrow_mut().stats.accept_overloads += shed;
        match sys::open_devnull() {
            Ok(reserve) => self.state.borrow_mut().reserve_fd = Some(reserve),
            Err(_) => self.back_off(id),
        }
    }

    /// Stops accepting for a moment; a timer resumes it.
    fn back_off(&self, id: Id) {
        let mut st = self.state.borrow_mut();
        st.stats.accept_overloads += 1;
        let until = Instant::now() + ACCEPT_BACKOFF;
        if let Some(Entry::Listener(l)) = st.entries.get_mut(id) {
            l.backoff_until = Some(until);
            l.update_interest(self.epfd, id);
            st.arm(until, id);
        }
    }

    // -----------------------------------------------------------------------------------------
    // streams

    fn stream_pass(&self, id: Id, bits: u32) {
        if matches!(self.state.borrow().entries.get(id), Some(Entry::Stream(s)) if s.connecting) {
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
            self.settle_failure(id);
            if hangup {
                self.settle_hangup(id, bits);
            }
        }
        if writable_due {
            let handler = match self.state.borrow().entries.get(id) {
                Some(Entry::Stream(s)) if s.closing.is_none() && s.failed.is_none() => {
                    Some(s.handler.clone())
                }
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
        if errno != 0 {
            drop(st);
            return self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Close);
        }
        s.connecting = false;
        s.deadline = None;
        s.touch();
        s.update_interest(self.epfd, id);
        let handler = (!s.user_closed).then(|| s.handler.clone());
        drop(st);
        // Closed while connecting with bytes queued: no on_accept, just the graceful close.
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
                // Pause is honoured until the connection cannot live on (hangup or failed send).
                let forced = hangup || s.failed.is_some();
                if !s.readable || s.read_eof || (s.paused && !s.user_closed && !forced) {
                    return true;
                }
                (s.fd, s.is_socket, s.user_closed, s.handler.clone())
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
                    self.on_eof(id);
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
        if matches!(st.entries.get(id), Some(Entry::Stream(s)) if s.opts.edge || s.failed.is_some())
        {
            st.schedule(id);
        }
        false
    }

    fn on_eof(&self, id: Id) {
        let mut st = self.state.borrow_mut();
        let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
            return;
        };
        s.read_eof = true;
        if s.opts.half_close && !s.user_closed && s.failed.is_none() {
            let handler = s.handler.clone();
            let done = s.fin_sent;
            if !done {
                s.update_interest(self.epfd, id);
            }
            drop(st);
            if done {
                return self.terminate(id, CloseReason::Local, 0, FdFate::Close);
            }
            return self.call(|| handler.on_data(self, id, &[]));
        }
        if s.closing.is_none() {
            s.closing = Some(s.eof_reason());
        }
        if s.out.is_empty() || s.failed.is_some() {
            // Ends now: no epoll_ctl for a descriptor about to be released.
            drop(st);
            self.after_flush(id);
        } else {
            s.update_interest(self.epfd, id);
            if s.deadline.is_none() {
                let deadline = Instant::now() + st.linger;
                st.arm_deadline(id, deadline);
            }
        }
    }

    /// HUP or ERR after the read pass: if the stream is still here and nothing more can come,
    /// end it now (level-triggered HUP/ERR would otherwise be reported forever).
    fn settle_hangup(&self, id: Id, bits: u32) {
        let (fd, read_eof, idle, readable, eof_reason) = {
            let st = self.state.borrow();
            let Some(Entry::Stream(s)) = st.entries.get(id) else {
                return;
            };
            (
                s.fd,
                s.read_eof,
                s.out.is_empty(),
                s.readable,
                s.eof_reason(),
            )
        };
        if bits & ev::ERR != 0 {
            let errno = match sys::take_socket_error(fd) {
                Ok(0) | Err(_) => {
                    if readable {
                        sys::EIO
                    } else {
                        sys::EPIPE
                    }
                }
                Ok(errno) => errno,
            };
            self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Close);
        } else if (read_eof || !readable) && idle {
            self.terminate(id, eof_reason, 0, FdFate::Close);
        }
    }

    /// A failed send recorded earlier: once the reads are exhausted, end the connection.
    fn settle_failure(&self, id: Id) {
        let failed = match self.state.borrow().entries.get(id) {
            Some(Entry::Stream(s)) => s.failed,
            _ => None,
        };
        if let Some(errno) = failed {
            self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Close);
        }
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
            s.out = VecDeque::new();
            s.update_interest(self.epfd, id);
            // A failed write is settled once the input is drained (settle_failure), not here.
            let failed = s.failed.is_some();
            drop(guard);
            if !failed {
                self.after_flush(id);
            }
        } else {
            s.update_interest(self.epfd, id);
        }
        writable_due
    }

    /// The queue is empty: send a wanted FIN, complete a wanted close.
    pub(super) fn after_flush(&self, id: Id) {
        let mut st = self.state.borrow_mut();
        let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
            return;
        };
        if let Some(errno) = s.failed {
            drop(st);
            return self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Close);
        }
        let fin_wanted = s.is_socket
            && !s.fin_sent
            && (s.shutdown_wanted || s.closing == Some(CloseReason::Local));
        if fin_wanted {
            if let Err(errno) = sys::shutdown_write(s.fd) {
                drop(st);
                return self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Close);
            }
            s.fin_sent = true;
        }
        let reason = match s.closing {
            Some(reason) => reason,
            // ep_shutdown done and the peer's EOF already seen: both directions are finished.
            None if s.fin_sent && s.read_eof => CloseReason::Local,
            None => return,
        };
        let fate = if s.fin_sent && !s.read_eof && !s.opts.borrow {
            FdFate::Linger
        } else {
            FdFate::Close
        };
        drop(st);
        self.terminate(id, reason, 0, fate);
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
        // The id stays resolvable (as "closing") until its on_close is delivered.
        let closed = Entry::Closed(Closed {
            reason,
            err,
            lingering: None,
        });
        let entry = match st.entries.get_mut(id) {
            Some(slot) => std::mem::replace(slot, closed),
            None => return,
        };
        let unref = match &entry {
            Entry::Stream(s) => s.opts.unref,
            Entry::Listener(l) => l.opts.unref,
            _ => false,
        };
        let handler = match entry {
            Entry::Stream(s) => {
                let handler = s.handler;
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
                        release(self.epfd, s.fd, false, None, false);
                    }
                } else {
                    release(
                        self.epfd,
                        s.fd,
                        s.opts.borrow,
                        s.adopted_status,
                        fate == FdFate::Reset && s.is_socket,
                    );
                }
                handler
            }
            Entry::Listener(l) => {
                release(self.epfd, l.fd, l.opts.borrow, l.adopted_status, false);
                l.handler
            }
            _ => unreachable!("checked above: a stream or a listener"),
        };
        st.live -= 1;
        st.unref_count -= usize::from(unref);
        st.stats.closes[reason as usize] += 1;
        st.closes.push_back(PendingClose { id, handler });
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
                    return self.end_linger(id);
                }
            }
        }
    }

    pub(super) fn end_linger(&self, id: Id) {
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
            release(self.epfd, l.fd, false, None, false);
            st.lingering -= 1;
        }
    }
}

/// Lets go of a descriptor: out of epoll, then closed (owned) or given back as it came (borrowed).
fn release(epfd: sys::Fd, fd: sys::Fd, borrowed: bool, adopted_status: Option<i32>, reset: bool) {
    let _ = sys::epoll_delete(epfd, fd);
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
