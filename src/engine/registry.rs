//! Making registrations (adopting an fd, listening, connecting), ending them all (drain, loop
//! free), and the loop's counters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::IntoRawFd;
use std::time::{Duration, Instant};

use super::listener::Listener;
use super::stream::{Access, Phase, Stream};
use super::{
    insert, CloseReason, Entry, Error, FdFate, Flow, Handler, Id, Loop, Options, Stats, DRAIN_TOKEN,
};
use crate::sys::{self, ev, Fd, FdKind};

impl<H: Handler> Loop<H> {
    /// Adopts any pollable descriptor. See `ep_register`.
    pub fn register(&self, fd: Fd, opts: Options, handler: H) -> Result<Id, Error> {
        self.check_open()?;
        if fd < 0 {
            return Err(Error::Os(sys::EBADF));
        }
        let status = sys::status_flags(fd)?;
        let kind = sys::fd_kind(fd)?;
        if status & libc_flags::NONBLOCK == 0 {
            sys::set_status_flags(fd, status | libc_flags::NONBLOCK)?;
        }
        let result = match kind {
            FdKind::Listener => self.add_listener(fd, opts, handler, Some(status)),
            FdKind::Socket | FdKind::Other => {
                let mode = status & libc_flags::ACCMODE;
                let access = Access {
                    is_socket: kind == FdKind::Socket,
                    readable: mode != libc_flags::WRONLY,
                    writable: mode != libc_flags::RDONLY,
                };
                let mut stream = Stream::new(fd, handler, opts, access, Flow::default());
                stream.adopted_status = Some(status);
                self.add_stream(stream)
            }
        };
        match result {
            Ok(_) if !opts.borrow => {
                // Best effort: the fd may be shared with a child that needs it; failure is harmless.
                let _ = sys::set_cloexec(fd);
            }
            Ok(_) => {}
            // A refused fd is left exactly as it came.
            Err(_) if status & libc_flags::NONBLOCK == 0 => {
                let _ = sys::set_status_flags(fd, status);
            }
            Err(_) => {}
        }
        result
    }

    /// Binds, listens and registers a TCP listener. `host` is a numeric address or "localhost".
    pub fn listen(
        &self,
        host: &str,
        port: u16,
        backlog: i32,
        opts: Options,
        handler: H,
    ) -> Result<Id, Error> {
        let addr = sys::Addr::Ip(SocketAddr::new(parse_host(host)?, port));
        self.listen_at(&addr, backlog, opts, handler)
    }

    /// Binds, listens and registers a listener on any address (TCP or Unix).
    pub fn listen_at(
        &self,
        addr: &sys::Addr,
        backlog: i32,
        opts: Options,
        handler: H,
    ) -> Result<Id, Error> {
        self.check_open()?;
        let backlog = if backlog <= 0 {
            libc_flags::SOMAXCONN
        } else {
            backlog
        };
        // A restarted server binds at once: past connections in TIME_WAIT or a socket file left
        // by an earlier run do not block the address.
        let ip = matches!(addr, sys::Addr::Ip(_));
        if let sys::Addr::Unix(path) = addr {
            sys::unlink_stale_unix_socket(path);
        }
        let listen_opts = sys::ListenOptions {
            reuse_addr: ip,
            reuse_port: ip && opts.reuse_port,
        };
        let fd = sys::listen(addr, backlog, listen_opts)?.into_raw_fd();
        let opts = Options {
            borrow: false,
            ..opts
        };
        self.add_listener(fd, opts, handler, None)
            .inspect_err(|_| sys::close(fd))
    }

    /// Starts an outbound connection. Its outcome comes through the handler: `on_accept` with
    /// listener 0 once connected, or one `on_close` with the errno (also when the connect fails at
    /// once, or `timeout` passes first: EP_CLOSE_TIMEOUT).
    pub fn connect(
        &self,
        addr: &sys::Addr,
        timeout: Option<Duration>,
        opts: Options,
        handler: H,
    ) -> Result<Id, Error> {
        self.check_open()?;
        let (fd, failure) = match sys::connect(addr) {
            Ok(fd) => (fd, None),
            Err((Some(fd), errno)) => (fd, Some(errno)),
            Err((None, errno)) => return Err(Error::Os(errno)),
        };
        let fd = fd.into_raw_fd();
        if !opts.nagle && matches!(addr, sys::Addr::Ip(_)) {
            // Best effort, as asyncio does: a failure only costs latency.
            let _ = sys::set_nodelay(fd);
        }
        let opts = Options {
            borrow: false,
            ..opts
        };
        let mut stream = Stream::new(fd, handler, opts, Access::socket(), Flow::default());
        stream.phase = Phase::Connecting { then: None };
        let id = self.add_stream(stream).inspect_err(|_| sys::close(fd))?;
        if let Some(errno) = failure {
            self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Close);
        } else if let Some(timeout) = timeout {
            self.state
                .borrow_mut()
                .arm_deadline(id, Instant::now() + timeout);
        }
        Ok(id)
    }

    pub(super) fn add_listener(
        &self,
        fd: Fd,
        opts: Options,
        handler: H,
        adopted_status: Option<i32>,
    ) -> Result<Id, Error> {
        let mut st = self.state.borrow_mut();
        if st.reserve_fd.is_none() {
            st.reserve_fd = sys::open_devnull().ok();
        }
        let interest = ev::IN | if opts.edge { ev::ET } else { 0 };
        let id = insert(
            &mut st.entries,
            Entry::Listener(Listener {
                fd,
                handler,
                opts,
                adopted_status,
                flow: Flow::default(),
                idle_ms: 0,
                paused: false,
                backoff_until: None,
                interest,
                nodelay: !opts.nagle && sys::is_tcp(fd),
            }),
        )?;
        if let Err(e) = sys::epoll_add(self.epfd, fd, interest, id) {
            st.entries.remove(id);
            return Err(Error::Os(e));
        }
        st.live += 1;
        st.unref_count += usize::from(opts.unref);
        Ok(id)
    }

    pub(super) fn add_stream(&self, stream: Stream<H>) -> Result<Id, Error> {
        let mut st = self.state.borrow_mut();
        let fd = stream.fd;
        let idle = stream.idle();
        let unref = stream.opts.unref;
        let id = insert(&mut st.entries, Entry::Stream(stream))?;
        let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
            unreachable!("just inserted")
        };
        let interest = s.wanted_interest();
        s.interest = interest;
        if let Err(e) = sys::epoll_add(self.epfd, fd, interest, id) {
            st.entries.remove(id);
            return Err(Error::Os(e));
        }
        st.live += 1;
        st.unref_count += usize::from(unref);
        if let Some(idle) = idle {
            st.arm_idle(id, Instant::now() + idle);
        }
        Ok(id)
    }

    /// Graceful server shutdown: every listener closes now (EP_CLOSE_LOCAL); connections may finish
    /// on their own for `grace`; then each remaining one (not `unref` ones) is closed gracefully
    /// (ep_close), and what cannot flush within the linger time is reset (EP_CLOSE_TIMEOUT).
    pub fn drain(&self, grace: Duration) -> Result<(), Error> {
        self.check_open()?;
        let ids = self.state.borrow().entries.ids();
        for id in ids {
            if matches!(
                self.state.borrow().entries.get(id),
                Some(Entry::Listener(_))
            ) {
                self.terminate(id, CloseReason::Local, 0, FdFate::Close);
            }
        }
        let mut st = self.state.borrow_mut();
        let at = Instant::now() + grace;
        st.drain_at = Some(at);
        st.timers.arm(at, DRAIN_TOKEN);
        Ok(())
    }

    /// Closes every connection still open (the drain deadline passed).
    pub(super) fn close_remaining(&self) {
        let ids = self.state.borrow().entries.ids();
        for id in ids {
            // Unref'd helpers (a binding's signal pipe) are not the server's connections.
            let (open, endpoint) = match self.state.borrow().entries.get(id) {
                Some(Entry::Stream(s)) => (!s.discard_input && !s.opts.unref, false),
                Some(Entry::Datagram(d)) => (!d.opts.unref, true),
                _ => (false, false),
            };
            match (open, endpoint) {
                (true, false) => self.close_gracefully(id),
                (true, true) => self.close_datagram(id, false),
                _ => {}
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let st = self.state.borrow();
        Stats {
            open: (st.live - st.timer_count - st.unref_count) as u64,
            lingering: st.lingering as u64,
            timers: st.timer_count as u64,
            ..st.stats
        }
    }

    /// Marks this loop as a child's copy after fork(): from now on, letting go of a descriptor
    /// only closes the child's copy (no epoll_ctl, no socket option, no write).
    pub fn forget_parent(&self) {
        self.forked.set(true);
    }

    /// Ends every registration with on_close(LoopFreed), cancels timers, runs what other threads
    /// posted, and releases every descriptor.
    pub fn close_all(&self) {
        if self.freeing.replace(true) {
            return;
        }
        self.deliver_closes();
        let ids = self.state.borrow().entries.ids();
        for id in ids {
            /// What freeing the loop does to an entry.
            enum Ending {
                EndLinger,
                CancelTimer,
                StopSignal,
                Terminate,
            }
            let ending = match self.state.borrow().entries.get(id) {
                Some(Entry::Lingering(_)) => Ending::EndLinger,
                Some(Entry::Timer(_)) => Ending::CancelTimer,
                Some(Entry::Signal(_)) => Ending::StopSignal,
                _ => Ending::Terminate,
            };
            match ending {
                Ending::EndLinger => self.end_linger(id, false),
                Ending::CancelTimer => {
                    let _ = self.timer_cancel(id);
                }
                Ending::StopSignal => {
                    let _ = self.signal_stop(id);
                }
                Ending::Terminate => {
                    // Best effort, without blocking: hand what is queued to the kernel first
                    // (not in a child after fork(): the socket is the parent's too).
                    if !self.forked.get() {
                        if let Some(Entry::Stream(s)) = self.state.borrow_mut().entries.get_mut(id)
                        {
                            s.write_queue();
                        }
                    }
                    self.terminate(id, CloseReason::LoopFreed, 0, FdFate::Close);
                }
            }
        }
        self.deliver_closes();
        // Posting ends here; what was accepted until now runs now, exactly once.
        for posted in self.remote.take_posted(true) {
            self.call(|| H::run_posted(self, posted));
            self.deliver_closes();
        }
    }
}

pub(super) fn parse_host(host: &str) -> Result<IpAddr, Error> {
    match host {
        "localhost" => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "" | "*" => Ok(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => host.parse().map_err(|_| Error::Os(sys::EINVAL)),
    }
}

/// A Unix socket address from a path (a leading '@' names an abstract socket).
pub fn unix_addr(path: &[u8]) -> sys::Addr {
    sys::Addr::Unix(path.to_vec())
}

/// libc constants used by the engine's policy, as plain integers.
mod libc_flags {
    pub const NONBLOCK: i32 = libc::O_NONBLOCK;
    pub const ACCMODE: i32 = libc::O_ACCMODE;
    pub const RDONLY: i32 = libc::O_RDONLY;
    pub const WRONLY: i32 = libc::O_WRONLY;
    pub const SOMAXCONN: i32 = libc::SOMAXCONN;
}
