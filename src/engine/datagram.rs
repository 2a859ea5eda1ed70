//! UDP endpoints. A datagram socket has no peer that can leave: its one `on_close` comes only
//! from the local side (close, abort, loop free) or a fatal error of the socket itself. What the
//! network says about one datagram — an ICMP error on a connected endpoint (ECONNREFUSED), an
//! unreachable network — is reported through `on_datagram_error` and the endpoint lives on.
//!
//! Sending never blocks: a datagram the kernel cannot take now (EAGAIN) is queued whole and sent
//! when the socket is writable, in order, bounded by the watermarks like a stream's output
//! (`send_to` returns true above the high-water mark; `on_writable` follows at the low one).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::IntoRawFd;
use std::time::Instant;

use super::registry::parse_host;
use super::{
    insert, CloseReason, Entry, Error, FdFate, Flow, Handler, Id, Loop, Options, MAX_QUEUE,
};
use crate::sys::{self, ev, Errno, Fd, RawAddr};

/// Datagrams received per endpoint per wakeup, so one flooding sender cannot starve the others.
const DATAGRAM_BUDGET: usize = 32;

pub(super) struct Datagram<H> {
    pub fd: Fd,
    pub handler: H,
    pub opts: Options,
    pub flow: Flow,
    out: VecDeque<Outgoing>,
    /// Bytes in `out`.
    queued: usize,
    /// send_to() said "stop producing": on_writable is owed once the queue drains to `flow.low`.
    above_high: bool,
    pub paused: bool,
    interest: u32,
    /// Datagrams longer than this are delivered cut to it, flagged as truncated.
    max_size: usize,
    /// Errors to report through on_datagram_error at the next pass, in the order they happened.
    errors: Vec<Errno>,
    pub in_service: bool,
    /// A graceful close waits for the queue to drain until this deadline (no reading meanwhile).
    closing_until: Option<Instant>,
    /// The queue made progress since the close deadline was armed: it gets another period.
    flushed: bool,
    /// The caller's own ep_close started the close (its later calls are EP_ECLOSING).
    pub closed_by_caller: bool,
}

struct Outgoing {
    data: Box<[u8]>,
    to: Option<RawAddr>,
}

impl<H> Datagram<H> {
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// A graceful close is flushing the queue.
    pub(super) fn closing(&self) -> bool {
        self.closing_until.is_some()
    }

    fn wanted_interest(&self) -> u32 {
        let read = if self.paused || self.closing() {
            0
        } else {
            ev::IN
        };
        let write = if self.out.is_empty() { 0 } else { ev::OUT };
        read | write | if self.opts.edge { ev::ET } else { 0 }
    }

    pub(super) fn update_interest(&mut self, epfd: Fd, id: Id) {
        let wanted = self.wanted_interest();
        if wanted != self.interest && sys::epoll_modify(epfd, self.fd, wanted, id).is_ok() {
            self.interest = wanted;
        }
    }

    pub(super) fn set_flow(&mut self, flow: Flow) {
        self.flow = flow;
    }

    /// Hands queued datagrams to the kernel until it says EAGAIN. Returns the bytes sent and the
    /// errors of datagrams the network refused (each dropped; a datagram is sent whole or not).
    fn write_queue(&mut self) -> (usize, Vec<Errno>) {
        let (mut sent, mut errors) = (0, Vec::new());
        while let Some(next) = self.out.front() {
            match sys::send_to(self.fd, &next.data, next.to.as_ref()) {
                Err(sys::EAGAIN | sys::ENOBUFS) => break,
                Ok(n) => sent += n,
                Err(errno) => errors.push(errno),
            }
            if let Some(done) = self.out.pop_front() {
                self.queued -= done.data.len();
            }
        }
        (sent, errors)
    }
}

/// Errors of sendto(2) that are the caller's mistake (returned as such when they happen at
/// once): a datagram too large, a broadcast without EP_UDP_BROADCAST, an address of the wrong
/// family, no address on an unconnected endpoint. The others (unreachable, refused) are the
/// network's answer: on_datagram_error.
fn callers_mistake(errno: Errno) -> bool {
    matches!(
        errno,
        sys::EMSGSIZE | sys::EACCES | sys::EINVAL | sys::EAFNOSUPPORT | sys::EDESTADDRREQ
    )
}

/// Errors of recvmsg(2) or SO_ERROR that report what the network did to earlier datagrams; any
/// other error is fatal to the endpoint.
fn network_error(errno: Errno) -> bool {
    matches!(
        errno,
        sys::ECONNREFUSED
            | sys::EHOSTUNREACH
            | sys::ENETUNREACH
            | sys::EHOSTDOWN
            | sys::ENETDOWN
            | sys::ECONNRESET
            | sys::EMSGSIZE
            | sys::EPROTO
            | sys::EPERM
            | sys::ENOBUFS
            | sys::ETIMEDOUT
    )
}

impl<H: Handler> Loop<H> {
    /// Binds a UDP endpoint on `host`:`port` (`reuse`: SO_REUSEADDR and SO_REUSEPORT).
    pub fn udp_bind(&self, host: &str, port: u16, opts: Options, handler: H) -> Result<Id, Error> {
        self.check_open()?;
        let addr = sys::Addr::Ip(SocketAddr::new(parse_host(host)?, port));
        let fd = sys::udp_bind(&addr, opts.reuse_port)?.into_raw_fd();
        let mut st = self.state.borrow_mut();
        let endpoint = Datagram {
            fd,
            handler,
            opts: Options {
                borrow: false,
                ..opts
            },
            flow: Flow::default(),
            out: VecDeque::new(),
            queued: 0,
            above_high: false,
            paused: false,
            interest: ev::IN | if opts.edge { ev::ET } else { 0 },
            max_size: sys::MAX_DATAGRAM,
            errors: Vec::new(),
            in_service: false,
            closing_until: None,
            flushed: false,
            closed_by_caller: false,
        };
        let interest = endpoint.interest;
        let id = match insert(&mut st.entries, Entry::Datagram(Box::new(endpoint))) {
            Ok(id) => id,
            Err(e) => {
                sys::close(fd);
                return Err(e);
            }
        };
        if let Err(e) = sys::epoll_add(self.epfd, fd, interest, id) {
            st.entries.remove(id);
            sys::close(fd);
            return Err(Error::Os(e));
        }
        st.live += 1;
        st.unref_count += usize::from(opts.unref);
        Ok(id)
    }

    /// The live endpoint `id`, for a setting; None once its close was decided by the loop.
    fn endpoint_fd(&self, id: Id) -> Result<Option<Fd>, Error> {
        Ok(self.state.borrow_mut().endpoint_mut(id)?.map(|d| d.fd))
    }

    /// Gives the endpoint a default destination (and receives only from it; ICMP errors are
    /// then reported). `host` is numeric.
    pub fn udp_connect(&self, id: Id, host: &str, port: u16) -> Result<(), Error> {
        let addr = sys::Addr::Ip(SocketAddr::new(parse_host(host)?, port));
        match self.endpoint_fd(id)? {
            Some(fd) => sys::udp_connect(fd, &addr).map_err(Error::Os),
            None => Ok(()),
        }
    }

    /// Joins or leaves a multicast group; `iface` is "" (any), an IPv4 interface address, or an
    /// interface name or index for IPv6.
    pub fn udp_membership(
        &self,
        id: Id,
        group: &str,
        iface: &str,
        join: bool,
    ) -> Result<(), Error> {
        let group: IpAddr = group.parse().map_err(|_| Error::Os(sys::EINVAL))?;
        if !group.is_multicast() {
            return Err(Error::Os(sys::EINVAL));
        }
        let (iface_v4, index) = match (iface, group) {
            ("", _) => (None, 0),
            (iface, IpAddr::V4(_)) => match iface.parse() {
                Ok(addr) => (Some(addr), 0),
                Err(_) => (None, interface_index(iface)?),
            },
            (iface, IpAddr::V6(_)) => (None, interface_index(iface)?),
        };
        match self.endpoint_fd(id)? {
            Some(fd) => {
                sys::multicast_membership(fd, group, iface_v4, index, join).map_err(Error::Os)
            }
            None => Ok(()),
        }
    }

    /// Sets a socket option of the endpoint.
    pub fn set_udp_option(&self, id: Id, option: sys::UdpOption, value: i32) -> Result<(), Error> {
        match self.endpoint_fd(id)? {
            Some(fd) => sys::set_udp_option(fd, option, value).map_err(Error::Os),
            None => Ok(()),
        }
    }

    /// Datagrams longer than `size` (1..=65,507) are delivered cut to it and flagged truncated.
    pub fn set_max_datagram(&self, id: Id, size: usize) -> Result<(), Error> {
        if size == 0 || size > sys::MAX_DATAGRAM {
            return Err(Error::Os(sys::EINVAL));
        }
        if let Some(d) = self.state.borrow_mut().endpoint_mut(id)? {
            d.max_size = size;
        }
        Ok(())
    }

    /// Sends one datagram to `to` (None: the connected address). Ok(true): above the high-water
    /// mark, stop producing. A datagram the network refuses is reported by on_datagram_error.
    pub fn send_to(&self, id: Id, data: &[u8], to: Option<&RawAddr>) -> Result<bool, Error> {
        if data.len() > sys::MAX_DATAGRAM {
            return Err(Error::Os(sys::EMSGSIZE));
        }
        let mut st = self.state.borrow_mut();
        let Some(d) = st.endpoint_mut(id)? else {
            return Ok(true); // the loop decided its close: dropped, on_close follows
        };
        if d.out.is_empty() {
            match sys::send_to(d.fd, data, to) {
                Ok(n) => {
                    st.stats.bytes_out += n as u64;
                    return Ok(false);
                }
                Err(sys::EAGAIN | sys::ENOBUFS) => {}
                Err(errno) if callers_mistake(errno) => return Err(Error::Os(errno)),
                Err(errno) => {
                    d.errors.push(errno);
                    st.schedule(id);
                    return Ok(false);
                }
            }
        } else if let Some(to) = to {
            // A bad address is still the caller's mistake when it cannot be checked by sending.
            if !matches!(to.family(), libc_af::INET | libc_af::INET6) {
                return Err(Error::Os(sys::EAFNOSUPPORT));
            }
        }
        if d.queued + data.len() > MAX_QUEUE {
            return Err(Error::Os(sys::ENOBUFS));
        }
        d.out.push_back(Outgoing {
            data: data.into(),
            to: to.cloned(),
        });
        d.queued += data.len();
        d.update_interest(self.epfd, id);
        d.above_high = d.queued > d.flow.high();
        Ok(d.above_high)
    }

    /// An endpoint's event (or service pass): errors to report, queued datagrams to send, and
    /// datagrams to deliver.
    pub(super) fn datagram_pass(&self, id: Id, bits: u32) {
        if bits & ev::ERR != 0 {
            let fd = match self.state.borrow().entries.get(id) {
                Some(Entry::Datagram(d)) => d.fd,
                _ => return,
            };
            match sys::take_socket_error(fd) {
                Ok(0) => {}
                Ok(errno) | Err(errno) => self.datagram_failed(id, errno),
            }
        }
        if bits & ev::OUT != 0 {
            self.datagram_flush(id);
        }
        self.report_datagram_errors(id);
        if bits & ev::IN != 0 {
            self.datagram_read(id);
        }
    }

    /// An error of the socket: the network's answer is reported, anything else ends the endpoint.
    fn datagram_failed(&self, id: Id, errno: Errno) {
        if network_error(errno) {
            if let Some(Entry::Datagram(d)) = self.state.borrow_mut().entries.get_mut(id) {
                d.errors.push(errno);
            }
        } else {
            self.terminate(id, CloseReason::Error, errno, FdFate::Close);
        }
    }

    fn report_datagram_errors(&self, id: Id) {
        loop {
            let (handler, errno) = match self.state.borrow_mut().entries.get_mut(id) {
                Some(Entry::Datagram(d)) if !d.errors.is_empty() => {
                    (d.handler.clone(), d.errors.remove(0))
                }
                _ => return,
            };
            self.call(|| handler.on_datagram_error(self, id, errno));
        }
    }

    fn datagram_flush(&self, id: Id) {
        let writable = {
            let mut st = self.state.borrow_mut();
            let Some(Entry::Datagram(d)) = st.entries.get_mut(id) else {
                return;
            };
            let (sent, errors) = d.write_queue();
            d.errors.extend(errors);
            d.flushed |= sent > 0;
            if d.closing() && d.out.is_empty() {
                drop(st);
                return self.terminate(id, CloseReason::Local, 0, FdFate::Close);
            }
            d.update_interest(self.epfd, id);
            let writable = d.above_high && d.queued <= d.flow.low();
            if writable {
                d.above_high = false;
            }
            let handler = writable.then(|| d.handler.clone());
            st.stats.bytes_out += sent as u64;
            handler
        };
        if let Some(handler) = writable {
            self.call(|| handler.on_writable(self, id));
        }
    }

    fn datagram_read(&self, id: Id) {
        let mut from = RawAddr::empty();
        for _ in 0..DATAGRAM_BUDGET {
            let (fd, max, handler) = match self.state.borrow().entries.get(id) {
                // (a close under way delivers nothing more: only its on_close)
                Some(Entry::Datagram(d)) if !d.paused && !d.closing() => {
                    (d.fd, d.max_size, d.handler.clone())
                }
                _ => return,
            };
            let mut buf = self.read_buf.borrow_mut();
            let result = sys::recv_from(fd, &mut buf[..max], &mut from);
            drop(buf);
            match result {
                Ok((n, truncated)) => {
                    self.state.borrow_mut().stats.bytes_in += n as u64;
                    let buf = self.read_buf.borrow();
                    self.call(|| handler.on_datagram(self, id, &buf[..n], &from, truncated));
                }
                Err(sys::EAGAIN) => return,
                Err(errno) => {
                    self.datagram_failed(id, errno);
                    self.report_datagram_errors(id);
                }
            }
        }
        // Budget spent: level-triggered epoll reports the rest again, edge-triggered does not.
        let mut st = self.state.borrow_mut();
        if matches!(st.entries.get(id), Some(Entry::Datagram(d)) if d.opts.edge) {
            st.schedule(id);
        }
    }

    /// A graceful close of an endpoint (ep_close, or the end of ep_drain's grace): reading stops,
    /// what is queued is sent, then on_close(LOCAL). A queue that makes no progress for the
    /// linger time is dropped: on_close(TIMEOUT, ETIMEDOUT).
    pub(super) fn close_datagram(&self, id: Id, by_caller: bool) {
        let mut st = self.state.borrow_mut();
        let linger = st.linger;
        let Some(Entry::Datagram(d)) = st.entries.get_mut(id) else {
            return;
        };
        d.closed_by_caller |= by_caller;
        if d.closing() {
            return;
        }
        let _ = d.write_queue();
        if d.out.is_empty() {
            drop(st);
            return self.terminate(id, CloseReason::Local, 0, FdFate::Close);
        }
        let deadline = Instant::now() + linger;
        d.closing_until = Some(deadline);
        d.flushed = false;
        d.update_interest(self.epfd, id);
        st.timers.arm(deadline, id);
    }

    /// The close deadline of a flushing endpoint passed: another period if the queue moved,
    /// otherwise the rest is dropped.
    pub(super) fn expire_datagram_close(&self, id: Id, now: Instant) {
        let mut st = self.state.borrow_mut();
        let linger = st.linger;
        let Some(Entry::Datagram(d)) = st.entries.get_mut(id) else {
            return;
        };
        if d.closing_until.is_none_or(|t| t > now) {
            return;
        }
        if std::mem::take(&mut d.flushed) {
            d.closing_until = Some(now + linger);
            st.timers.arm(now + linger, id);
            return;
        }
        drop(st);
        self.terminate(id, CloseReason::Timeout, sys::ETIMEDOUT, FdFate::Close);
    }
}

fn interface_index(name: &str) -> Result<u32, Error> {
    if let Ok(index) = name.parse::<u32>() {
        return Ok(index);
    }
    let name = std::ffi::CString::new(name).map_err(|_| Error::Os(sys::EINVAL))?;
    sys::interface_index(&name).map_err(Error::Os)
}

/// Address families, as plain integers.
mod libc_af {
    pub const INET: i32 = libc::AF_INET;
    pub const INET6: i32 = libc::AF_INET6;
}
