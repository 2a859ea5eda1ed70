//! UDP sockets: bind, connect, one datagram in or out per call, multicast membership and the
//! datagram socket options.

use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::raw::c_int;

use super::addr::{Addr, RawAddr};
use super::errno::SysResult;
use super::fd::{owned, Fd};
use super::socket::{getsockopt_int, setsockopt, setsockopt_int};
use super::syscall::retry;

/// Creates a non-blocking, close-on-exec UDP socket bound to `addr` (an IPv6 wildcard also
/// receives IPv4). `reuse` sets SO_REUSEADDR and SO_REUSEPORT: several sockets share the port
/// (each multicast listener, or one loop per thread).
pub fn udp_bind(addr: &Addr, reuse: bool) -> SysResult<OwnedFd> {
    let raw = RawAddr::of(addr)?;
    let kind = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket takes only integers.
    let fd = owned(syscall!(unsafe { libc::socket(raw.family(), kind, 0) })?);
    let raw_fd = fd.as_raw_fd();
    if reuse {
        setsockopt_int(raw_fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        setsockopt_int(raw_fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    // SAFETY: `raw` holds a valid address of the socket's family, with its length.
    syscall!(unsafe { libc::bind(raw_fd, raw.as_ptr(), raw.len()) })?;
    Ok(fd)
}

/// Sets the default destination of a datagram socket and receives only from it (no blocking:
/// a datagram connect only records the address). Linux accepts an IPv4 address on a dual-stack
/// IPv6 socket.
pub fn udp_connect(fd: Fd, addr: &Addr) -> SysResult<()> {
    let raw = RawAddr::of(addr)?;
    // SAFETY: `raw` holds a valid address, with its length.
    syscall!(unsafe { libc::connect(fd, raw.as_ptr(), raw.len()) }).map(drop)
}

/// Receives one datagram into `buf`: its length (at most `buf.len()`), and whether the kernel
/// cut it (MSG_TRUNC: it was longer than `buf`). The sender's address is written to `from`.
#[inline]
pub fn recv_from(fd: Fd, buf: &mut [u8], from: &mut RawAddr) -> SysResult<(usize, bool)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    *from = RawAddr::empty();
    let (name, name_len) = from.as_mut_parts();
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.cast();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: `name_len` points at `from`'s length, valid for the duration of this function.
    msg.msg_namelen = unsafe { *name_len };
    let msg_ptr: *mut libc::msghdr = &mut msg;
    // SAFETY: `msg` describes `buf` (one iovec) and `from`'s storage, both writable for the call.
    let n = retry(|| syscall!(unsafe { libc::recvmsg(fd, msg_ptr, 0) }))? as usize;
    // SAFETY: as above; the kernel wrote the address length it used into `msg`.
    unsafe { *name_len = msg.msg_namelen };
    Ok((n.min(buf.len()), msg.msg_flags & libc::MSG_TRUNC != 0))
}

/// Sends one datagram, to `to` or (None) to the connected address, without blocking and
/// without SIGPIPE (Linux accepts an IPv4 address on a dual-stack IPv6 socket).
#[inline]
pub fn send_to(fd: Fd, data: &[u8], to: Option<&RawAddr>) -> SysResult<usize> {
    let (ptr, len) = (data.as_ptr().cast(), data.len());
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let (name, name_len) = match to {
        Some(to) => (to.as_ptr(), to.len()),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `ptr`/`len` describe `data`; `name`/`name_len` describe `to` or are NULL/0.
    retry(|| syscall!(unsafe { libc::sendto(fd, ptr, len, flags, name, name_len) }))
        .map(|n| n as usize)
}

/// The domain of a socket (AF_INET, AF_INET6).
fn socket_family(fd: Fd) -> SysResult<c_int> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
}

/// Joins (or leaves) the multicast group `group` on the interface `iface`: for IPv4 the
/// interface's address (None: the kernel's choice), for IPv6 its index (0: the kernel's choice).
pub fn multicast_membership(
    fd: Fd,
    group: IpAddr,
    iface_v4: Option<std::net::Ipv4Addr>,
    iface_index: u32,
    join: bool,
) -> SysResult<()> {
    match group {
        IpAddr::V4(group) => {
            let mreq = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(group.octets()),
                },
                imr_address: libc::in_addr {
                    s_addr: u32::from_ne_bytes(iface_v4.map_or([0; 4], |a| a.octets())),
                },
                imr_ifindex: iface_index as c_int,
            };
            let name = if join {
                libc::IP_ADD_MEMBERSHIP
            } else {
                libc::IP_DROP_MEMBERSHIP
            };
            setsockopt(fd, libc::IPPROTO_IP, name, &mreq)
        }
        IpAddr::V6(group) => {
            let mreq = libc::ipv6_mreq {
                ipv6mr_multiaddr: libc::in6_addr {
                    s6_addr: group.octets(),
                },
                ipv6mr_interface: iface_index,
            };
            let name = if join {
                libc::IPV6_ADD_MEMBERSHIP
            } else {
                libc::IPV6_DROP_MEMBERSHIP
            };
            setsockopt(fd, libc::IPPROTO_IPV6, name, &mreq)
        }
    }
}

/// The index of the network interface named `name` (if_nametoindex).
pub fn interface_index(name: &std::ffi::CStr) -> SysResult<u32> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(libc::ENODEV),
        index => Ok(index),
    }
}

/// A datagram socket option eploop sets for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpOption {
    /// SO_BROADCAST: allow sending to broadcast addresses.
    Broadcast,
    /// IP_MULTICAST_LOOP / IPV6_MULTICAST_LOOP: this host's own members receive what it sends.
    MulticastLoop,
    /// IP_MULTICAST_TTL / IPV6_MULTICAST_HOPS: how many routers a multicast datagram crosses.
    MulticastTtl,
    /// IP_MULTICAST_IF / IPV6_MULTICAST_IF: the interface (by index, 0: the routing table's
    /// choice) multicast datagrams leave by.
    MulticastInterface,
}

/// Sets `option` to `value` for the socket's family.
pub fn set_udp_option(fd: Fd, option: UdpOption, value: c_int) -> SysResult<()> {
    let v6 = socket_family(fd)? == libc::AF_INET6;
    if option == UdpOption::MulticastInterface && !v6 {
        let mreq = libc::ip_mreqn {
            imr_multiaddr: libc::in_addr { s_addr: 0 },
            imr_address: libc::in_addr { s_addr: 0 },
            imr_ifindex: value,
        };
        return setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreq);
    }
    let (level, name) = match (option, v6) {
        (UdpOption::Broadcast, _) => (libc::SOL_SOCKET, libc::SO_BROADCAST),
        (UdpOption::MulticastLoop, false) => (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP),
        (UdpOption::MulticastLoop, true) => (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP),
        (UdpOption::MulticastTtl, false) => (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL),
        (UdpOption::MulticastTtl, true) => (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS),
        (UdpOption::MulticastInterface, _) => (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF),
    };
    setsockopt_int(fd, level, name, value)
}

/// The largest UDP payload (65,535 bytes less the IPv4 and UDP headers; IPv6 without jumbograms
/// allows 8 bytes more, which nobody relies on).
pub const MAX_DATAGRAM: usize = 65_507;

const _: () = assert!(size_of::<libc::ip_mreqn>() == 12);
