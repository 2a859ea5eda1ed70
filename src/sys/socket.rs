//! Sockets: creation, listen, accept, connect, shutdown and options.

use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::raw::c_int;

use super::addr::{Addr, RawAddr};
use super::errno::{Errno, SysResult};
use super::fd::{owned, Fd};
use super::syscall::retry;

pub(super) fn getsockopt_int(fd: Fd, level: c_int, name: c_int) -> SysResult<c_int> {
    let mut value: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    let ptr = (&mut value as *mut c_int).cast();
    // SAFETY: `ptr` and `len` describe `value`, an int-sized writable buffer.
    syscall!(unsafe { libc::getsockopt(fd, level, name, ptr, &mut len) })?;
    Ok(value)
}

pub(super) fn setsockopt<T>(fd: Fd, level: c_int, name: c_int, value: &T) -> SysResult<()> {
    let len = size_of::<T>() as libc::socklen_t;
    let ptr = (value as *const T).cast();
    // SAFETY: `ptr` and `len` describe `value`, readable for the duration of the call.
    syscall!(unsafe { libc::setsockopt(fd, level, name, ptr, len) }).map(drop)
}

pub(super) fn setsockopt_int(fd: Fd, level: c_int, name: c_int, value: c_int) -> SysResult<()> {
    setsockopt(fd, level, name, &value)
}

/// A non-blocking, close-on-exec stream socket of `addr`'s family, with `addr` in kernel layout.
fn socket_for(addr: &Addr) -> SysResult<(OwnedFd, RawAddr)> {
    let raw = RawAddr::of(addr)?;
    let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket takes only integers.
    let fd = syscall!(unsafe { libc::socket(raw.family(), kind, 0) })?;
    Ok((owned(fd), raw))
}

/// Socket options a listener is created with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenOptions {
    /// SO_REUSEADDR: bind even while connections of an earlier listener linger in TIME_WAIT.
    pub reuse_addr: bool,
    /// SO_REUSEPORT: share the address with other listeners that ask for it too.
    pub reuse_port: bool,
}

/// Creates a non-blocking, close-on-exec socket listening on `addr`.
pub fn listen(addr: &Addr, backlog: c_int, opts: ListenOptions) -> SysResult<OwnedFd> {
    let (fd, raw) = socket_for(addr)?;
    let raw_fd = fd.as_raw_fd();
    if opts.reuse_addr {
        setsockopt_int(raw_fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    }
    if opts.reuse_port {
        setsockopt_int(raw_fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    // SAFETY: `raw` holds a valid address of the socket's family, with its length.
    syscall!(unsafe { libc::bind(raw_fd, raw.as_ptr(), raw.len()) })?;
    // SAFETY: listen takes only integers.
    syscall!(unsafe { libc::listen(raw_fd, backlog) })?;
    Ok(fd)
}

/// Accepts one connection, non-blocking and close-on-exec from birth.
pub fn accept(fd: Fd) -> SysResult<OwnedFd> {
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    let (no_addr, no_len) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: NULL address arguments are allowed: the peer address is not wanted here.
    retry(|| syscall!(unsafe { libc::accept4(fd, no_addr, no_len, flags) })).map(owned)
}

/// Starts a non-blocking connect. Ok(fd) means connected or in progress (EINPROGRESS); the
/// outcome is then reported by writability and SO_ERROR. Err((Some(fd), errno)) is an immediate
/// failure of the connect itself (EAGAIN: a Unix listener's backlog is full), with the socket
/// still open for the caller to report and close; Err((None, errno)) means no socket was made.
pub fn connect(addr: &Addr) -> Result<OwnedFd, (Option<OwnedFd>, Errno)> {
    let (fd, raw) = socket_for(addr).map_err(|e| (None, e))?;
    // SAFETY: `raw` holds a valid address of the socket's family, with its length.
    match syscall!(unsafe { libc::connect(fd.as_raw_fd(), raw.as_ptr(), raw.len()) }) {
        Ok(_) | Err(libc::EINPROGRESS) => Ok(fd),
        Err(e) => Err((Some(fd), e)),
    }
}

/// The pending socket error (SO_ERROR), cleared by reading it.
pub fn take_socket_error(fd: Fd) -> SysResult<i32> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)
}

pub fn shutdown_write(fd: Fd) -> SysResult<()> {
    // SAFETY: shutdown takes only integers.
    syscall!(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map(drop)
}

/// Makes the next close(2) send RST instead of FIN and drop unsent data.
pub fn set_linger_zero(fd: Fd) -> SysResult<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger)
}

/// TCP keepalive: probes after `idle_s` of silence, every `interval_s`, `count` times; idle_s 0 disables.
pub fn set_keepalive(fd: Fd, idle_s: c_int, interval_s: c_int, count: c_int) -> SysResult<()> {
    if idle_s == 0 {
        return setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0);
    }
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_s)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval_s)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
}

/// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the connection fails.
pub fn set_user_timeout(fd: Fd, ms: c_int) -> SysResult<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)
}

/// The local port a socket is bound to.
pub fn local_port(fd: Fd) -> SysResult<u16> {
    let mut raw = RawAddr::empty();
    let (ptr, len) = raw.as_mut_parts();
    // SAFETY: `ptr` and `len` describe `raw`'s storage, writable and large enough for any address.
    syscall!(unsafe { libc::getsockname(fd, ptr, len) })?;
    raw.port()
}

/// True for a TCP socket (SO_PROTOCOL is IPPROTO_TCP); false for Unix sockets and other fds.
pub fn is_tcp(fd: Fd) -> bool {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Ok(libc::IPPROTO_TCP)
}

/// Turns Nagle's algorithm off (TCP_NODELAY): small writes leave at once.
pub fn set_nodelay(fd: Fd) -> SysResult<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}
