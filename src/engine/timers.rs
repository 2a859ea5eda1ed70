//! Timers and deadlines: the user's timers, and the loop's own deadlines (connect and flush
//! deadlines, idle checks, lingering sockets, accept back-off, the drain deadline), together.

use std::time::{Duration, Instant};

use super::slab::Slab;
use super::{insert, CloseReason, Entry, Error, FdFate, Handler, Id, Loop, State, DRAIN_TOKEN};
use crate::sys::{self, Fd};

pub(super) struct Timer<H> {
    pub handler: H,
    pub deadline: Instant,
    /// Arming order: equal deadlines fire in the order they were armed.
    pub seq: u64,
    pub repeat: Option<Duration>,
}

/// The number of deadlines from which dead ones are dropped all at once (see
/// [`State::prune_timers`]).
pub(super) const PRUNE_MIN: usize = 1024;

/// A deadline nobody will act on: its registration is gone (a cancelled or fired timer, a closed
/// connection), or it is a timer's superseded arming. The drain deadline (id 0) is never dead.
fn is_dead<H>(entries: &Slab<Entry<H>>, seq: u64, id: Id) -> bool {
    match entries.get(id) {
        _ if id == DRAIN_TOKEN => false,
        None => true,
        Some(Entry::Timer(t)) => t.seq != seq,
        Some(_) => false,
    }
}

impl<H> State<H> {
    /// Drops the dead deadlines at the head, so that a cancelled timer's deadline neither cuts a
    /// wait short nor shows in ep_next_timeout(); and, once their number has doubled since they
    /// were last pruned, every dead one (a server that starts and cancels a long timeout
    /// per request would otherwise keep an entry per cancel until its deadline). Amortized O(1)
    /// per deadline armed; a step without timers pays one comparison.
    #[inline(always)]
    pub(super) fn prune_timers(&mut self) {
        if !self.timers.is_empty() {
            self.prune_dead_timers();
        }
    }

    #[inline(never)]
    fn prune_dead_timers(&mut self) {
        while let Some((_, seq, id)) = self.timers.peek() {
            if !is_dead(&self.entries, *seq, *id) {
                break;
            }
            self.timers.pop();
        }
        if self.timers.len() >= self.timers_prune_at {
            let entries = &self.entries;
            self.timers
                .retain(|(_, seq, id)| !is_dead(entries, *seq, *id));
            self.timers_prune_at = PRUNE_MIN.max(2 * self.timers.len());
        }
    }

    /// Arms a stream's idle check, superseding any earlier one.
    pub(super) fn arm_idle(&mut self, id: Id, due: Instant) {
        let seq = self.timers.arm(due, id);
        if let Some(Entry::Stream(s)) = self.entries.get_mut(id) {
            s.idle_seq = seq as u32;
        }
    }

    /// Sets a stream's phase deadline (connect or graceful-close flush).
    pub(super) fn arm_deadline(&mut self, id: Id, deadline: Instant) {
        if let Some(Entry::Stream(s)) = self.entries.get_mut(id) {
            s.deadline = Some(deadline);
            s.flushed_since_deadline = false;
        }
        self.timers.arm(deadline, id);
    }
}

impl<H: Handler> Loop<H> {
    /// Starts a timer firing after `after`, then every `repeat` if given. Equal deadlines fire in
    /// the order the timers were armed. A pending timer keeps ep_run running.
    pub fn timer_start(
        &self,
        after: Duration,
        repeat: Option<Duration>,
        handler: H,
    ) -> Result<Id, Error> {
        self.check_open()?;
        let mut st = self.state.borrow_mut();
        let deadline = Instant::now() + after;
        let id = insert(
            &mut st.entries,
            Entry::Timer(Timer {
                handler,
                deadline,
                seq: 0,
                repeat,
            }),
        )?;
        let seq = st.timers.arm(deadline, id);
        if let Some(Entry::Timer(t)) = st.entries.get_mut(id) {
            t.seq = seq;
        }
        st.live += 1;
        st.timer_count += 1;
        Ok(id)
    }

    /// Cancels a pending timer (also from its own callback). A fired one-shot timer is stale.
    pub fn timer_cancel(&self, id: Id) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        match st.entries.get(id) {
            Some(Entry::Timer(_)) => {}
            Some(Entry::Lingering(_) | Entry::Closed(_)) | None => return Err(Error::Stale),
            Some(_) => return Err(Error::Kind),
        }
        st.entries.remove(id);
        st.live -= 1;
        st.timer_count -= 1;
        Ok(())
    }

    /// How long the next wait may last: until the nearest deadline (rounded up), at most
    /// `timeout_ms` (-1: no bound), 0 when work is already pending.
    pub(super) fn wait_timeout(&self, timeout_ms: i32) -> i32 {
        wait_timeout_of(&self.state.borrow(), timeout_ms)
    }

    /// For a host loop driving this one (see ep_next_timeout): 0 when a step has work without a
    /// new descriptor event, else the milliseconds to the nearest deadline, -1 for none.
    pub fn next_timeout(&self) -> i32 {
        let held = {
            let mut st = self.state.borrow_mut();
            st.prune_timers();
            !st.next_step.is_empty()
        };
        if held || self.remote.has_posted() {
            return 0;
        }
        self.wait_timeout(-1)
    }

    /// The epoll descriptor: readable whenever a step has descriptor events to dispatch.
    pub fn poll_fd(&self) -> Fd {
        self.epfd
    }

    #[inline(never)]
    pub(super) fn run_timers(&self, now: Instant) {
        loop {
            let (seq, id) = {
                let mut st = self.state.borrow_mut();
                match st.timers.peek() {
                    Some((deadline, _, _)) if *deadline <= now => {}
                    _ => return,
                }
                let Some((_, seq, id)) = st.timers.pop() else {
                    return;
                };
                (seq, id)
            };
            self.expire(id, seq, now);
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
                        let seq = st.timers.arm(next, id);
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
            Some(Entry::Stream(s)) if s.idle_seq == seq as u32 && !s.ending() => {
                let Some(idle) = s.idle() else { return };
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
                self.end_linger(id, false);
            }
            Some(Entry::Datagram(d)) if d.closing() => {
                drop(st);
                self.expire_datagram_close(id, now);
            }
            Some(Entry::Listener(l)) if l.backoff_until.is_some_and(|d| d <= now) => {
                l.backoff_until = None;
                l.update_interest(self.epfd, id);
                st.schedule(id);
            }
            _ => {}
        }
    }
}

/// [`Loop::wait_timeout`] under a borrow the caller holds.
#[inline(always)]
pub(super) fn wait_timeout_of<H>(st: &State<H>, timeout_ms: i32) -> i32 {
    if !st.service.is_empty() || !st.closes.is_empty() || !st.released.is_empty() {
        return 0;
    }
    if st.timers.is_empty() {
        return timeout_ms;
    }
    timeout_to_deadline(st, timeout_ms)
}

#[inline(never)]
fn timeout_to_deadline<H>(st: &State<H>, timeout_ms: i32) -> i32 {
    match st.timers.peek() {
        Some((deadline, _, _)) => {
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

#[cfg(test)]
#[path = "timer_tests.rs"]
mod tests;
