//! One step of the loop: wait, dispatch each event to its registration's pass (`passes.rs`,
//! `listener.rs`, `close.rs`), run deferred work, expire deadlines, deliver the closes decided
//! during the step.

use std::collections::VecDeque;
use std::time::Instant;

use super::passes::ReadSetup;
use super::timers::wait_timeout_of;
use super::{
    Closed, Entry, Error, Handler, Id, Loop, RunState, State, Trace, SIGNAL_TOKEN, WAKE_TOKEN,
};
use crate::sys::{self, ev};

const MAX_EVENTS: usize = 4096;

/// Decrements the callback depth even if a handler unwinds.
struct DepthGuard<'a>(&'a std::cell::Cell<u32>);

impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

enum Kind<H> {
    Listener,
    /// A stream, with what its read pass needs (read in the same lookup).
    Stream(ReadSetup<H>),
    Connecting,
    Lingering,
    Datagram,
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
    /// The steady state reads the loop's state once before the wait and once after the dispatch.
    pub fn run_once(&self, timeout_ms: i32) -> Result<RunState, Error> {
        if self.in_callback() || self.freeing.get() {
            return Err(Error::Busy);
        }
        if self.remote.take_stop() {
            return Ok(RunState::Stopped);
        }
        let timeout = {
            let mut st = self.state.borrow_mut();
            if !self.has_work_in(&st) {
                return Ok(RunState::Empty);
            }
            // Peer EOFs held back last step (Handler::delivers_later) are read in this one.
            if !st.next_step.is_empty() {
                for id in std::mem::take(&mut st.next_step) {
                    st.schedule(id);
                }
            }
            st.prune_timers();
            wait_timeout_of(&st, timeout_ms)
        };
        self.step.set(self.step.get() + 1);
        self.step_read.set(0);
        let mut events = self.events.borrow_mut();
        let n = sys::epoll_wait(self.epfd, &mut events, timeout).map_err(Error::Os)?;
        for i in 0..n {
            let (bits, token) = events.get(i);
            if token == WAKE_TOKEN {
                self.remote.wake_fd.drain();
                self.run_posted();
                self.run_resolved();
            } else if token == SIGNAL_TOKEN {
                self.signal_pass();
            } else {
                self.dispatch(token, bits);
            }
        }
        if self.capped.replace(false) {
            // Reads were left to the next step: take fewer events in it, rather than dispatch
            // events only to leave their reads again (epoll keeps the rest, in turn).
            events.limit_to(n / 2);
        } else if n == events.capacity() && n < MAX_EVENTS {
            events.grow(n * 2);
        }
        drop(events);
        // What the step left to do, read with one borrow: most steps have none of it.
        let (service, timers) = {
            let mut st = self.state.borrow_mut();
            let (service, timers) = (!st.service.is_empty(), !st.timers.is_empty());
            if !service && !timers && st.closes.is_empty() && st.released.is_empty() {
                return Ok(self.step_end(&mut st));
            }
            (service, timers)
        };
        if service {
            self.run_service();
        }
        if timers {
            self.run_timers(Instant::now());
        }
        self.deliver_closes();
        Ok(self.step_end(&mut self.state.borrow_mut()))
    }

    /// The end of a step, under the state borrow: memory back after a crowd left, and what next.
    #[inline(always)]
    fn step_end(&self, st: &mut State<H>) -> RunState {
        st.entries.compact();
        if self.remote.take_stop() {
            RunState::Stopped
        } else if self.has_work_in(st) {
            RunState::More
        } else {
            RunState::Empty
        }
    }

    /// Something keeps the loop running: a registration, a pending close, a post, a signal.
    #[inline(always)]
    fn has_work_in(&self, st: &State<H>) -> bool {
        st.live - st.unref_count + st.lingering > 0
            || !st.closes.is_empty()
            || !st.released.is_empty()
            || self.remote.has_posted()
            || self.signals.borrow().keep_alive()
    }

    fn kind(&self, id: Id, bits: u32) -> Option<Kind<H>> {
        match self.state.borrow().entries.get(id)? {
            Entry::Listener(_) => Some(Kind::Listener),
            Entry::Stream(s) if s.connecting() => Some(Kind::Connecting),
            Entry::Stream(s) => Some(Kind::Stream(ReadSetup::of(s, bits))),
            Entry::Datagram(_) => Some(Kind::Datagram),
            Entry::Lingering(_) => Some(Kind::Lingering),
            Entry::Closed(Closed {
                lingering: Some(_), ..
            }) => Some(Kind::Lingering),
            Entry::Timer(_) | Entry::Signal(_) | Entry::Closed(_) => None,
        }
    }

    /// One dispatch step: the event's pass, then the closes it decided.
    fn dispatch(&self, id: Id, bits: u32) {
        self.trace(id, || Trace::Epoll { bits });
        match self.kind(id, bits) {
            // A stale event: its registration ended earlier in this batch (maybe its fd was reused).
            None => self.state.borrow_mut().stats.stale_events += 1,
            Some(Kind::Listener) => self.accept_pass(id),
            Some(Kind::Stream(setup)) => self.stream_pass(id, bits, setup),
            Some(Kind::Connecting) => self.connect_pass(id, bits),
            Some(Kind::Lingering) => self.linger_pass(id),
            Some(Kind::Datagram) => self.datagram_pass(id, bits),
        }
        self.deliver_closes();
    }

    #[inline(never)]
    fn run_service(&self) {
        let pending: VecDeque<Id> = std::mem::take(&mut self.state.borrow_mut().service);
        for id in pending {
            match self.state.borrow_mut().entries.get_mut(id) {
                Some(Entry::Stream(s)) => s.in_service = false,
                Some(Entry::Datagram(d)) => d.in_service = false,
                _ => {}
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
    /// Before each close, the borrowed output segments done with are released: their release
    /// callbacks run here, like any other callback, with no borrow of the state held.
    #[inline(always)]
    pub(super) fn deliver_closes(&self) {
        let st = self.state.borrow();
        if !st.closes.is_empty() || !st.released.is_empty() {
            drop(st);
            self.deliver_pending_closes();
        }
    }

    #[inline(never)]
    fn deliver_pending_closes(&self) {
        loop {
            let released = std::mem::take(&mut self.state.borrow_mut().released);
            if !released.is_empty() {
                self.call(|| drop(released));
            }
            let (id, closed) = {
                let mut st = self.state.borrow_mut();
                if !st.released.is_empty() {
                    continue;
                }
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
}
