//! Thin, policy-free wrappers over the Linux system calls eploop uses.
//!
//! Every `unsafe` libc call of the crate (outside the C ABI layer) lives here. Each wrapper
//! returns `Result<T, Errno>` where the error is the positive errno value, so the engine above
//! can decide policy in safe Rust and the FFI layer can hand `-errno` to C unchanged.

use std::net::SocketAddr;
use std::os::raw::c_int;

/// A raw file descriptor.
pub type Fd = c_int;
/// A positive errno value.
pub type Errno = i32;
/// Result of a system call wrapper.
pub type SysResult<T> = Result<T, Errno>;

pub use libc::{
    EAGAIN, EBADF, ECONNABORTED, ECONNRESET, EINTR, EINVAL, EIO, EMFILE, ENFILE, ENOBUFS, ENOMEM,
    ENOTSOCK, EPIPE, ESHUTDOWN, ETIMEDOUT,
};

/// epoll event bits, as `u32` for the engine's bit arithmetic.
pub mod ev {
    pub const IN: u32 = libc::EPOLLIN as u32;
    pub const OUT: u32 = libc::EPOLLOUT as u32;
    pub const RDHUP: u32 = libc::EPOLLRDHUP as u32;
    pub const HUP: u32 = libc::EPOLLHUP as u32;
    pub const ERR: u32 = libc::EPOLLERR as u32;
    pub const ET: u32 = libc::EPOLLET as u32;
}

fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Calls a libc function that reports failure as -1 and errno.
macro_rules! syscall {
    ($name:ident($($arg:expr),* $(,)?)) => {{
        // SAFETY: every call site passes valid descriptors or pointers to live, correctly sized
        // memory, as documented at the call site; the function reports failure through errno.
        let ret = unsafe { libc::$name($($arg),*) };
        if ret == -1 {
            Err(errno())
        } else {
            Ok(ret)
        }
    }};
}

/// Retries a call while it fails with EINTR.
fn retry<T>(mut call: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    loop {
        match call() {
            Err(EINTR) => continue,
            other => return other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// epoll

/// The kernel's event buffer for `epoll_wait`, readable as (events, token) pairs.
pub struct EventBuf {
    raw: Vec<libc::epoll_event>,
}

impl EventBuf {
    pub fn with_capacity(capacity: usize) -> Self {
        EventBuf {
            raw: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        }
    }
    pub fn capacity(&self) -> usize {
        self.raw.len()
    }
    /// Grows the buffer (used when a wait filled it completely: load is high).
    pub fn grow(&mut self, capacity: usize) {
        if capacity > self.raw.len() {
            self.raw
                .resize(capacity, libc::epoll_event { events: 0, u64: 0 });
        }
    }
    /// The i-th ready event as (event bits, token).
    pub fn get(&self, i: usize) -> (u32, u64) {
        let e = self.raw[i];
        (e.events, e.u64)
    }
}

pub fn epoll_create() -> SysResult<Fd> {
    syscall!(epoll_create1(libc::EPOLL_CLOEXEC))
}

fn epoll_ctl(epfd: Fd, op: c_int, fd: Fd, events: u32, token: u64) -> SysResult<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // `event` lives across the call; the kernel copies it.
    syscall!(epoll_ctl(epfd, op, fd, &mut event)).map(drop)
}

pub fn epoll_add(epfd: Fd, fd: Fd, events: u32, token: u64) -> SysResult<()> {
    epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, events, token)
}

pub fn epoll_modify(epfd: Fd, fd: Fd, events: u32, token: u64) -> SysResult<()> {
    epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, events, token)
}

pub fn epoll_delete(epfd: Fd, fd: Fd) -> SysResult<()> {
    epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0)
}

/// Waits for events; EINTR is returned to the caller (a signal may mean "stop").
pub fn epoll_wait(epfd: Fd, buf: &mut EventBuf, timeout_ms: c_int) -> SysResult<usize> {
    let max = c_int::try_from(buf.raw.len()).unwrap_or(c_int::MAX);
    // The pointer and `max` describe buf.raw, which outlives the call.
    syscall!(epoll_wait(epfd, buf.raw.as_mut_ptr(), max, timeout_ms)).map(|n| n as usize)
}

// ---------------------------------------------------------------------------------------------
// eventfd (the loop's wakeup)

pub fn eventfd() -> SysResult<Fd> {
    syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
}

/// Adds one to an eventfd. Async-signal-safe: one write(2), no allocation, no locks.
pub fn eventfd_signal(fd: Fd) -> SysResult<()> {
    let one: u64 = 1;
    // `one` is 8 readable bytes, the size an eventfd write requires.
    match syscall!(write(fd, (&one as *const u64).cast(), 8)) {
        // A saturated counter already means "wake up".
        Ok(_) | Err(EAGAIN) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resets an eventfd to zero.
pub fn eventfd_drain(fd: Fd) {
    let mut value: u64 = 0;
    // `value` is 8 writable bytes, the size an eventfd read requires. EAGAIN (already zero) is fine.
    let _ = syscall!(read(fd, (&mut value as *mut u64).cast(), 8));
}

// ---------------------------------------------------------------------------------------------
// descriptors

pub fn close(fd: Fd) {
    // close(2) must not be retried on EINTR on Linux: the descriptor is released either way.
    let _ = syscall!(close(fd));
}

/// The file status flags (O_NONBLOCK, O_ACCMODE...). EBADF tells a closed descriptor.
pub fn status_flags(fd: Fd) -> SysResult<c_int> {
    syscall!(fcntl(fd, libc::F_GETFL))
}

pub fn set_status_flags(fd: Fd, flags: c_int) -> SysResult<()> {
    syscall!(fcntl(fd, libc::F_SETFL, flags)).map(drop)
}

pub fn set_cloexec(fd: Fd) -> SysResult<()> {
    let flags = syscall!(fcntl(fd, libc::F_GETFD))?;
    syscall!(fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC)).map(drop)
}

pub fn open_devnull() -> SysResult<Fd> {
    // The path is a NUL-terminated static string.
    syscall!(open(
        c"/dev/null".as_ptr(),
        libc::O_RDONLY | libc::O_CLOEXEC
    ))
}

/// Reads into `buf`; Ok(0) is end of file.
pub fn read(fd: Fd, buf: &mut [u8]) -> SysResult<usize> {
    // The pointer and length describe `buf`, writable for the duration of the call.
    retry(|| syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len())).map(|n| n as usize))
}

/// Receives from a socket into `buf`; Ok(0) is the peer's EOF.
pub fn recv(fd: Fd, buf: &mut [u8]) -> SysResult<usize> {
    // The pointer and length describe `buf`, writable for the duration of the call.
    retry(|| syscall!(recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)).map(|n| n as usize))
}

fn iovecs<'a>(bufs: &'a [&'a [u8]]) -> Vec<libc::iovec> {
    bufs.iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        })
        .collect()
}

/// Sends up to two buffers on a socket, in order, never raising SIGPIPE.
pub fn send_vectored(fd: Fd, bufs: &[&[u8]]) -> SysResult<usize> {
    if let [only] = bufs {
        // The pointer and length describe `only`, readable for the duration of the call.
        return retry(|| {
            syscall!(send(
                fd,
                only.as_ptr().cast(),
                only.len(),
                libc::MSG_NOSIGNAL
            ))
            .map(|n| n as usize)
        });
    }
    let mut iov = iovecs(bufs);
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    // msg points at `iov`, which points at buffers borrowed for the duration of the call.
    retry(|| syscall!(sendmsg(fd, &msg, libc::MSG_NOSIGNAL)).map(|n| n as usize))
}

/// Writes up to two buffers to a non-socket descriptor (pipe, tty) without ever letting SIGPIPE
/// reach the process: SIGPIPE is blocked for the call, and one raised by this write is consumed.
pub fn write_vectored(fd: Fd, bufs: &[&[u8]]) -> SysResult<usize> {
    let iov = iovecs(bufs);
    let iovcnt = iov.len() as c_int;
    let guard = SigpipeGuard::block();
    // `iov` describes buffers borrowed for the duration of the call.
    let result = retry(|| syscall!(writev(fd, iov.as_ptr(), iovcnt)).map(|n| n as usize));
    if result == Err(EPIPE) {
        guard.consume_pending();
    }
    result
}

/// Blocks SIGPIPE in the calling thread until dropped (then restores the old mask).
struct SigpipeGuard {
    old_mask: libc::sigset_t,
    was_pending: bool,
    pipe_set: libc::sigset_t,
}

impl SigpipeGuard {
    fn block() -> Self {
        // SAFETY: sigset_t is plain old data; the sig* calls below initialise it before use.
        let mut pipe_set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: all three sets are valid, writable sigset_t values owned by this frame.
        let was_pending = unsafe {
            libc::sigemptyset(&mut pipe_set);
            libc::sigaddset(&mut pipe_set, libc::SIGPIPE);
            libc::sigpending(&mut pending);
            let was = libc::sigismember(&pending, libc::SIGPIPE) == 1;
            libc::pthread_sigmask(libc::SIG_BLOCK, &pipe_set, &mut old_mask);
            was
        };
        SigpipeGuard {
            old_mask,
            was_pending,
            pipe_set,
        }
    }

    /// Swallows the SIGPIPE this thread's failed write raised, unless one was already pending.
    fn consume_pending(&self) {
        if self.was_pending {
            return;
        }
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: pipe_set is initialised; a zero timeout makes sigtimedwait poll, not block.
        unsafe {
            libc::sigtimedwait(&self.pipe_set, std::ptr::null_mut(), &zero);
        }
    }
}

impl Drop for SigpipeGuard {
    fn drop(&mut self) {
        // SAFETY: old_mask was filled by pthread_sigmask in block().
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sockets

fn getsockopt_int(fd: Fd, level: c_int, name: c_int) -> SysResult<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // value/len describe an int-sized writable buffer.
    syscall!(getsockopt(
        fd,
        level,
        name,
        (&mut value as *mut c_int).cast(),
        &mut len
    ))?;
    Ok(value)
}

fn setsockopt_int(fd: Fd, level: c_int, name: c_int, value: c_int) -> SysResult<()> {
    let len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // value is an int-sized readable buffer.
    syscall!(setsockopt(
        fd,
        level,
        name,
        (&value as *const c_int).cast(),
        len
    ))
    .map(drop)
}

/// What kind of descriptor `ep_register` was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    Listener,
    Socket,
    Other,
}

pub fn fd_kind(fd: Fd) -> SysResult<FdKind> {
    match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) {
        Ok(0) => Ok(FdKind::Socket),
        Ok(_) => Ok(FdKind::Listener),
        Err(ENOTSOCK) => Ok(FdKind::Other),
        Err(e) => Err(e),
    }
}

/// The pending socket error (SO_ERROR), cleared by reading it.
pub fn take_socket_error(fd: Fd) -> SysResult<i32> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)
}

pub fn shutdown_write(fd: Fd) -> SysResult<()> {
    syscall!(shutdown(fd, libc::SHUT_WR)).map(drop)
}

/// Makes the next close(2) send RST instead of FIN and drop unsent data.
pub fn set_linger_zero(fd: Fd) -> SysResult<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // `linger` is a readable struct linger.
    syscall!(setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        (&linger as *const libc::linger).cast(),
        len
    ))
    .map(drop)
}

/// Accepts one connection, non-blocking and close-on-exec from birth.
pub fn accept(fd: Fd) -> SysResult<Fd> {
    retry(|| {
        // NULL address arguments are allowed: the peer address is not wanted here.
        syscall!(accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        ))
    })
}

fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A socket address of any family eploop speaks: IPv4, IPv6, or a Unix path.
pub enum Addr {
    Ip(SocketAddr),
    /// A filesystem path, or an abstract name when it starts with '@'.
    Unix(Vec<u8>),
}

fn sockaddr_un_of(path: &[u8]) -> SysResult<(libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // One byte stays NUL for a path; an abstract name uses the leading NUL instead of '@'.
    if path.is_empty() || path.len() >= sun.sun_path.len() || path.contains(&0) {
        return Err(if path.is_empty() || path.contains(&0) {
            EINVAL
        } else {
            libc::ENAMETOOLONG
        });
    }
    for (dst, src) in sun.sun_path.iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    let abstract_name = path[0] == b'@';
    if abstract_name {
        sun.sun_path[0] = 0;
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    let len = if abstract_name {
        base + path.len()
    } else {
        base + path.len() + 1
    };
    // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_un.
    unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sun) };
    Ok((storage, len as libc::socklen_t))
}

fn socket_for(addr: &Addr) -> SysResult<(Fd, libc::sockaddr_storage, libc::socklen_t)> {
    let (domain, (storage, len)) = match addr {
        Addr::Ip(ip) => (
            if ip.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            },
            sockaddr_of(ip),
        ),
        Addr::Unix(path) => (libc::AF_UNIX, sockaddr_un_of(path)?),
    };
    let fd = syscall!(socket(
        domain,
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        0
    ))?;
    Ok((fd, storage, len))
}

/// Creates a non-blocking, close-on-exec listening socket (SO_REUSEADDR for IP, and SO_REUSEPORT
/// when asked). A stale Unix socket file at the path is replaced; any other file is an error.
pub fn listen(addr: &Addr, backlog: c_int, reuse_port: bool) -> SysResult<Fd> {
    let (fd, storage, len) = socket_for(addr)?;
    let mut setup = Ok(());
    if let Addr::Ip(_) = addr {
        setup = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        if reuse_port {
            setup =
                setup.and_then(|()| setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1));
        }
    }
    if let Addr::Unix(path) = addr {
        remove_stale_unix_socket(path);
    }
    let setup = setup
        // storage/len describe a valid socket address of the socket's family.
        .and_then(|()| {
            syscall!(bind(
                fd,
                (&storage as *const libc::sockaddr_storage).cast(),
                len
            ))
        })
        .and_then(|_| syscall!(listen(fd, backlog)));
    match setup {
        Ok(_) => Ok(fd),
        Err(e) => {
            close(fd);
            Err(e)
        }
    }
}

fn remove_stale_unix_socket(path: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    if path.first() == Some(&b'@') {
        return;
    }
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Starts a non-blocking connect. Ok(fd) means connected or in progress (EINPROGRESS); the
/// outcome is then reported by writability and SO_ERROR. Err((fd, errno)) is an immediate
/// failure of the connect itself, with the socket still open (the caller reports and closes it).
pub fn connect(addr: &Addr) -> Result<Fd, (Option<Fd>, Errno)> {
    let (fd, storage, len) = socket_for(addr).map_err(|e| (None, e))?;
    // storage/len describe a valid socket address of the socket's family.
    match syscall!(connect(
        fd,
        (&storage as *const libc::sockaddr_storage).cast(),
        len
    )) {
        Ok(_) | Err(libc::EINPROGRESS) => Ok(fd),
        // A Unix socket whose listener's backlog is full.
        Err(EAGAIN) => Err((Some(fd), EAGAIN)),
        Err(e) => Err((Some(fd), e)),
    }
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
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // storage/len describe a writable buffer large enough for any address.
    syscall!(getsockname(
        fd,
        (&mut storage as *mut libc::sockaddr_storage).cast(),
        &mut len
    ))?;
    match c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in, as ss_family says.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            Ok(u16::from_be(sin.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6, as ss_family says.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            Ok(u16::from_be(sin6.sin6_port))
        }
        _ => Err(libc::EAFNOSUPPORT),
    }
}

/// A static, human-readable description of an errno value, or None if unknown.
pub fn errno_description(errno: i32) -> Option<&'static std::ffi::CStr> {
    extern "C" {
        // glibc >= 2.32: returns a pointer to an immutable static string, or NULL.
        fn strerrordesc_np(errnum: c_int) -> *const std::os::raw::c_char;
    }
    // SAFETY: strerrordesc_np is thread-safe and takes any int.
    let ptr = unsafe { strerrordesc_np(errno) };
    if ptr.is_null() {
        None
    } else {
        // SAFETY: a non-NULL result is a NUL-terminated string with static lifetime.
        Some(unsafe { std::ffi::CStr::from_ptr(ptr) })
    }
}

/// Sets the calling thread's errno (for C functions that report failure through it).
pub fn set_errno(errno: Errno) {
    // SAFETY: __errno_location returns the calling thread's errno slot, valid for the thread's life.
    unsafe { *libc::__errno_location() = errno };
}

/// Runs `child` in the child process right after every fork() from now on (pthread_atfork). The
/// handler must be async-signal-safe.
pub fn on_fork_in_child(child: extern "C" fn()) {
    // SAFETY: registers a plain function pointer with no prepare/parent handlers; it can fail only
    // with ENOMEM, in which case forks simply go unnoticed (reported by nothing: best effort).
    let _ = unsafe { libc::pthread_atfork(None, None, Some(child)) };
}

mod resolve;
mod signals;
pub use resolve::*;
pub use signals::*;
