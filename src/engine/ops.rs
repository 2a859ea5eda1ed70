//! What the caller does to a registration: send, shut down, close, abort, pause, and its settings.
//! One channel: once the peer is gone (the id resolves to `Target::Gone`, or the stream failed),
//! these calls succeed and do nothing harmful; the departure is reported by on_close alone.

use std::time::{Duration, Instant};

use super::stream::{Decision, Output, Stream};
use super::trace::{self, Trace};
use super::{
    idle_ms, CloseReason, Ender, Entry, Error, FdFate, Flow, Handler, Id, Loop, Role, State,
    Target, MAX_QUEUE,
};
use crate::sys::{self, Fd};

impl<H: Handler> Loop<H> {
    /// Queues or writes `data`. Ok(true) means "stop producing": the queue is above its
    /// high-water mark, or the peer is gone and the bytes were discarded (its on_close follows).
    pub fn send(&self, id: Id, data: &[u8]) -> Result<bool, Error> {
        let mut write = None;
        let result = self.send_locked(id, data, &mut write);
        if let Some(result) = write {
            self.trace(id, || Trace::Write { result });
        }
        result
    }

    /// `send` under the state borrow; `write` receives the direct write's outcome, if one was
    /// tried, for the trace.
    fn send_locked(&self, id: Id, data: &[u8], write: &mut Option<i64>) -> Result<bool, Error> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(s) = sendable(st, id)? else {
            return Ok(true);
        };
        if data.len() > MAX_QUEUE - s.out.copied_len() {
            return Err(Error::Os(sys::ENOBUFS));
        }
        let mut rest = data;
        let mut written = 0;
        if s.out.is_empty() && !s.connecting() {
            while !rest.is_empty() {
                match s.write_one(rest) {
                    Ok(n) => {
                        rest = &rest[n..];
                        written += n;
                        *write = Some(written as i64);
                    }
                    Err(sys::EAGAIN) => {
                        *write = Some(if written > 0 {
                            written as i64
                        } else {
                            -i64::from(sys::EAGAIN)
                        });
                        break;
                    }
                    Err(errno) => {
                        // The peer's departure: on_close reports it once the input is drained.
                        *write = Some(trace::outcome(Err(errno)));
                        s.write_failed(errno);
                        st.stats.bytes_out += written as u64;
                        st.schedule(id);
                        return Ok(true);
                    }
                }
            }
        }
        if !rest.is_empty() {
            s.out
                .try_reserve(rest.len())
                .map_err(|_| Error::Os(sys::ENOMEM))?;
            s.out.extend(rest);
            s.queued_more();
            s.update_interest(self.epfd, id);
        }
        if written > 0 {
            s.touch();
        }
        let above_high = s.out.len() > s.flow.high();
        st.stats.bytes_out += written as u64;
        Ok(above_high)
    }

    /// FIN once the queue drains; reading goes on until the peer's EOF.
    pub fn shutdown(&self, id: Id) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        let Some(s) = st.stream_mut(id)? else {
            return Ok(());
        };
        if !s.access.is_socket {
            return Err(Error::Os(sys::ENOTSOCK));
        }
        let decision = s.shutdown();
        drop(st);
        self.carry_out(id, decision);
        Ok(())
    }

    /// Graceful close: flush, FIN, then the loop drains and lingers alone.
    pub fn close(&self, id: Id) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        match st.target(id)? {
            Target::Listener(_) => {
                drop(st);
                self.terminate(id, CloseReason::Local, 0, FdFate::Close);
                self.state
                    .borrow_mut()
                    .ended_by_caller(id, Ender::CallerClose);
            }
            Target::Datagram(_) => {
                drop(st);
                self.close_datagram(id, true);
                self.state
                    .borrow_mut()
                    .ended_by_caller(id, Ender::CallerClose);
            }
            Target::Gone { .. } => st.ended_by_caller(id, Ender::CallerClose),
            Target::Stream(s) => {
                s.closed_by_caller = true;
                drop(st);
                self.close_gracefully(id);
            }
        }
        Ok(())
    }

    /// Starts a stream's graceful close (the caller's, or ep_drain's): flush, FIN, linger.
    pub(super) fn close_gracefully(&self, id: Id) {
        let decision = match self.state.borrow_mut().entries.get_mut(id) {
            Some(Entry::Stream(s)) => s.close(),
            _ => return,
        };
        self.carry_out(id, decision);
    }

    /// RST now, queued data dropped. Allowed until on_close, also after the caller's own ep_close
    /// (it then resets a socket still flushing or lingering); a second ep_abort is Error::Closing.
    pub fn abort(&self, id: Id) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        let decision = match st.entries.get_mut(id) {
            Some(Entry::Stream(s)) => s.abort(),
            Some(Entry::Listener(_)) => Decision::Terminate {
                reason: CloseReason::Abort,
                err: 0,
                fate: FdFate::Reset,
            },
            Some(Entry::Datagram(_)) => Decision::Terminate {
                reason: CloseReason::Abort,
                err: 0,
                fate: FdFate::Close,
            },
            Some(Entry::Closed(closed)) => {
                if closed.ender == Ender::CallerAbort {
                    return Err(Error::Closing);
                }
                closed.ender = Ender::CallerAbort;
                drop(st);
                self.end_linger(id, true);
                return Ok(());
            }
            Some(Entry::Timer(_) | Entry::Signal(_)) => return Err(Error::Kind),
            Some(Entry::Lingering(_)) | None => return Err(Error::Stale),
        };
        drop(st);
        self.carry_out(id, decision);
        self.state
            .borrow_mut()
            .ended_by_caller(id, Ender::CallerAbort);
        Ok(())
    }

    pub fn pause_reading(&self, id: Id, paused: bool) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        match st.target(id)? {
            Target::Listener(l) => {
                l.paused = paused;
                l.update_interest(self.epfd, id);
            }
            Target::Stream(s) => {
                s.paused = paused;
                s.update_interest(self.epfd, id);
            }
            Target::Datagram(d) => {
                d.paused = paused;
                d.update_interest(self.epfd, id);
            }
            Target::Gone { .. } => return Ok(()),
        }
        if !paused {
            // In edge-triggered mode no new edge comes for data that arrived while paused.
            st.schedule(id);
        }
        Ok(())
    }

    pub fn set_watermarks(&self, id: Id, low: usize, high: usize) -> Result<(), Error> {
        if low > high {
            return Err(Error::Os(sys::EINVAL));
        }
        let mut st = self.state.borrow_mut();
        match st.target(id)? {
            Target::Listener(l) => l.flow = Flow::new(low, high),
            Target::Stream(s) => {
                s.flow = Flow::new(low, high);
                s.above_high = s.out.len() > high;
                if s.throttled && !s.above_high {
                    s.throttled = false;
                    s.update_interest(self.epfd, id);
                    st.schedule(id);
                }
            }
            Target::Datagram(d) => d.set_flow(Flow::new(low, high)),
            Target::Gone { .. } => {}
        }
        Ok(())
    }

    /// Ends a connection with EP_CLOSE_TIMEOUT after `idle` without a byte read or written
    /// (None disables). On a listener: the default of the connections it accepts from now on.
    pub fn set_idle_timeout(&self, id: Id, idle: Option<Duration>) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        match st.target(id)? {
            Target::Listener(l) => l.idle_ms = idle_ms(idle),
            Target::Stream(s) => {
                s.idle_ms = idle_ms(idle);
                s.last_active = Instant::now();
                if let Some(idle) = idle {
                    st.arm_idle(id, Instant::now() + idle);
                }
            }
            Target::Datagram(_) => return Err(Error::Kind),
            Target::Gone { .. } => {}
        }
        Ok(())
    }

    /// TCP keepalive probes (idle_s 0 disables) on a connection.
    pub fn set_keepalive(
        &self,
        id: Id,
        idle_s: i32,
        interval_s: i32,
        count: i32,
    ) -> Result<(), Error> {
        match self.socket_fd(id)? {
            Some(fd) => sys::set_keepalive(fd, idle_s, interval_s, count).map_err(Error::Os),
            None => Ok(()),
        }
    }

    /// TCP_USER_TIMEOUT on a connection.
    pub fn set_user_timeout(&self, id: Id, ms: i32) -> Result<(), Error> {
        match self.socket_fd(id)? {
            Some(fd) => sys::set_user_timeout(fd, ms).map_err(Error::Os),
            None => Ok(()),
        }
    }

    /// A connection's socket; None once the peer is gone (the option no longer matters).
    fn socket_fd(&self, id: Id) -> Result<Option<Fd>, Error> {
        match self.state.borrow_mut().target(id)? {
            Target::Stream(s) if s.access.is_socket => Ok(Some(s.fd)),
            Target::Stream(_) => Err(Error::Os(sys::ENOTSOCK)),
            Target::Gone { role: Role::Stream } => Ok(None),
            Target::Listener(_) | Target::Datagram(_) | Target::Gone { .. } => Err(Error::Kind),
        }
    }

    pub fn set_linger(&self, linger: Duration) {
        self.state.borrow_mut().linger = linger;
    }

    /// Runs `f` on the handler of a registration whose on_close has not run yet (e.g. to change
    /// its user pointer).
    pub fn with_handler<R>(&self, id: Id, f: impl FnOnce(&mut H) -> R) -> Result<R, Error> {
        let mut st = self.state.borrow_mut();
        match st.entries.get_mut(id) {
            Some(Entry::Listener(l)) => Ok(f(&mut l.handler)),
            Some(Entry::Stream(s)) => Ok(f(&mut s.handler)),
            Some(Entry::Timer(t)) => Ok(f(&mut t.handler)),
            Some(Entry::Signal(s)) => Ok(f(&mut s.handler)),
            Some(Entry::Datagram(d)) => Ok(f(&mut d.handler)),
            // The user pointer stays the caller's until on_close has run.
            Some(Entry::Closed(closed)) => Ok(f(&mut closed.handler)),
            Some(Entry::Lingering(_)) | None => Err(Error::Stale),
        }
    }

    /// The descriptor of a live registration; Error::Closing once its close is decided (the
    /// loop may have released it).
    pub fn fd(&self, id: Id) -> Result<Fd, Error> {
        match self.state.borrow_mut().target(id)? {
            Target::Listener(l) => Ok(l.fd),
            Target::Stream(s) => Ok(s.fd),
            Target::Datagram(d) => Ok(d.fd),
            Target::Gone { .. } => Err(Error::Closing),
        }
    }

    /// The bytes queued for output on a stream (0 for anything else).
    pub fn queued(&self, id: Id) -> usize {
        match self.state.borrow().entries.get(id) {
            Some(Entry::Stream(s)) => s.out.len(),
            Some(Entry::Datagram(d)) => d.queued(),
            _ => 0,
        }
    }

    pub fn local_port(&self, id: Id) -> Result<u16, Error> {
        let fd = self.fd(id)?;
        sys::local_port(fd).map_err(Error::Os)
    }
}

/// The stream a send variant writes to; None when the peer is gone or the loop is closing it on
/// its own (the bytes are then discarded and the caller told to stop producing).
#[inline(always)]
pub(super) fn sendable<H>(st: &mut State<H>, id: Id) -> Result<Option<&mut Stream<H>>, Error> {
    let Some(s) = st.stream_mut(id)? else {
        return Ok(None);
    };
    if s.failure().is_some() || s.discard_input {
        return Ok(None);
    }
    if s.output != Output::Open {
        return Err(Error::Os(sys::ESHUTDOWN));
    }
    if !s.access.writable {
        return Err(Error::Os(sys::EBADF));
    }
    Ok(Some(s))
}
