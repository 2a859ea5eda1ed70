//! The one close path: every way a registration ends comes through `terminate()`, which releases
//! (or hands to lingering) its descriptor and queues its single on_close.

use std::time::Instant;

use super::{
    CloseReason, Closed, Ender, Entry, FdFate, Handler, Id, Lingering, Loop, Role, Trace,
    READ_BUDGET,
};
use crate::sys::{self, ev, Errno};

impl<H: Handler> Loop<H> {
    /// Ends a registration for the user: releases or hands its fd to lingering, and queues its
    /// single on_close. Every way a registration ends comes through here.
    pub(super) fn terminate(&self, id: Id, reason: CloseReason, err: Errno, fate: FdFate) {
        // A connect by name that failed moves on to the name's next address, if any.
        if self.retry_connect(id, reason, err) {
            return;
        }
        let mut st = self.state.borrow_mut();
        if !matches!(
            st.entries.get(id),
            Some(Entry::Stream(_) | Entry::Listener(_) | Entry::Datagram(_))
        ) {
            return;
        }
        // The id stays resolvable (its user pointer too) until its on_close is delivered. The
        // Closed entry is made with a placeholder handler: the real one moves in below.
        let entry = match st.entries.get_mut(id) {
            Some(slot @ (Entry::Stream(_) | Entry::Listener(_) | Entry::Datagram(_))) => {
                let handler = match &*slot {
                    Entry::Stream(s) => s.handler.clone(),
                    Entry::Listener(l) => l.handler.clone(),
                    Entry::Datagram(d) => d.handler.clone(),
                    _ => unreachable!("matched above"),
                };
                let placeholder = Entry::Closed(Closed {
                    handler,
                    ender: Ender::Loop,
                    role: Role::Stream,
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
            Entry::Datagram(d) => d.opts.unref,
            _ => false,
        };
        let (ender, role) = match &entry {
            Entry::Stream(s) if s.closed_by_caller => (Ender::CallerClose, Role::Stream),
            Entry::Listener(_) => (Ender::Loop, Role::Listener),
            Entry::Datagram(d) if d.closed_by_caller => (Ender::CallerClose, Role::Datagram),
            Entry::Datagram(_) => (Ender::Loop, Role::Datagram),
            _ => (Ender::Loop, Role::Stream),
        };
        if let Some(Entry::Closed(closed)) = st.entries.get_mut(id) {
            closed.ender = ender;
            closed.role = role;
        }
        match entry {
            Entry::Stream(mut s) => {
                // Borrowed output is released (outside this borrow) once the connection ends.
                s.out.discard();
                s.out.take_finished(&mut st.released);
                if fate == FdFate::Linger {
                    let deadline = Instant::now() + st.linger;
                    // Level-triggered from here on (usually already so: no system call).
                    let level = ev::IN | ev::RDHUP;
                    if s.interest == level || sys::epoll_modify(self.epfd, s.fd, level, id).is_ok()
                    {
                        st.lingering += 1;
                        st.timers.arm(deadline, id);
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
            Entry::Datagram(d) => self.release(d.fd, false, None, false),
            _ => unreachable!("checked above: a stream, a listener or an endpoint"),
        }
        st.live -= 1;
        st.unref_count -= usize::from(unref);
        st.stats.closes[reason as usize] += 1;
        st.closes.push_back(id);
        drop(st);
        self.trace(id, || Trace::Close { reason, err });
    }

    pub(super) fn linger_pass(&self, id: Id) {
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
