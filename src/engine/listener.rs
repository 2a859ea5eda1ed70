//! Listeners and the accept policy: a budget per wakeup, shedding load when the process is out
//! of descriptors (a reserve fd, accept-and-reset), and backing off when memory runs out.

use std::os::fd::{AsRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use super::stream::{Access, Stream};
use super::{CloseReason, Entry, FdFate, Flow, Handler, Id, Loop, Options};
use crate::sys::{self, ev, Fd};

/// Accepts per listener per wakeup.
const ACCEPT_BUDGET: usize = 64;
/// How long accepting pauses when the process is out of descriptors and memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub(super) struct Listener<H> {
    pub fd: Fd,
    pub handler: H,
    pub opts: Options,
    pub adopted_status: Option<i32>,
    pub flow: Flow,
    /// Its connections' idle timeout in ms (0: none).
    pub idle_ms: u32,
    pub paused: bool,
    /// Accepting stopped until this instant (out of descriptors and of the reserve).
    pub backoff_until: Option<Instant>,
    pub interest: u32,
    /// Accepted connections get TCP_NODELAY (a TCP listener without EP_NAGLE).
    pub nodelay: bool,
}

impl<H> Listener<H> {
    pub fn update_interest(&mut self, epfd: Fd, id: Id) {
        let accepting = !self.paused && self.backoff_until.is_none();
        let wanted = if accepting { ev::IN } else { 0 } | if self.opts.edge { ev::ET } else { 0 };
        if wanted != self.interest && sys::epoll_modify(epfd, self.fd, wanted, id).is_ok() {
            self.interest = wanted;
        }
    }
}

impl<H: Handler> Loop<H> {
    pub(super) fn accept_pass(&self, id: Id) {
        for _ in 0..ACCEPT_BUDGET {
            let (fd, handler, opts, flow, idle_ms, nodelay) = {
                let st = self.state.borrow();
                match st.entries.get(id) {
                    Some(Entry::Listener(l)) if !l.paused && l.backoff_until.is_none() => (
                        l.fd,
                        l.handler.clone(),
                        l.opts,
                        l.flow,
                        l.idle_ms,
                        l.nodelay,
                    ),
                    _ => return,
                }
            };
            match sys::accept(fd) {
                Ok(conn_fd) => {
                    let conn_fd = conn_fd.into_raw_fd();
                    if nodelay {
                        // Best effort, as asyncio does: a failure only costs latency.
                        let _ = sys::set_nodelay(conn_fd);
                    }
                    let opts = Options {
                        borrow: false,
                        ..opts
                    };
                    let mut stream =
                        Stream::new(conn_fd, handler.clone(), opts, Access::socket(), flow);
                    stream.idle_ms = idle_ms;
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
    fn shed_load(&self, id: Id, fd: Fd) {
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
            st.timers.arm(until, id);
        }
    }
}
