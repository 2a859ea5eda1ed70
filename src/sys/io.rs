//! Reading and writing: read/recv into one buffer, send/write from up to [`MAX_IOV`].

use std::os::raw::c_int;

use super::errno::{SysResult, EPIPE};
use super::fd::Fd;
use super::sigpipe::SigpipeGuard;
use super::syscall::retry;

/// Reads into `buf`; Ok(0) is end of file.
#[inline]
pub fn read(fd: Fd, buf: &mut [u8]) -> SysResult<usize> {
    let (ptr, len) = (buf.as_mut_ptr().cast(), buf.len());
    // SAFETY: `ptr` and `len` describe `buf`, writable for the duration of the call.
    retry(|| syscall!(unsafe { libc::read(fd, ptr, len) })).map(|n| n as usize)
}

/// Receives from a socket into `buf`; Ok(0) is the peer's EOF.
#[inline]
pub fn recv(fd: Fd, buf: &mut [u8]) -> SysResult<usize> {
    let (ptr, len) = (buf.as_mut_ptr().cast(), buf.len());
    // SAFETY: `ptr` and `len` describe `buf`, writable for the duration of the call.
    retry(|| syscall!(unsafe { libc::recv(fd, ptr, len, 0) })).map(|n| n as usize)
}

/// At most this many buffers go to one vectored write (no allocation per write); the rest wait
/// for the next one.
pub const MAX_IOV: usize = 64;

/// The non-empty buffers of `bufs` (at most [`MAX_IOV`]) as iovecs, and how many there are;
/// valid as long as `bufs` is borrowed.
fn iovecs<'a>(bufs: &'a [&'a [u8]]) -> ([libc::iovec; MAX_IOV], usize) {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; MAX_IOV];
    let mut n = 0;
    for buf in bufs.iter().filter(|b| !b.is_empty()).take(MAX_IOV) {
        iov[n] = libc::iovec {
            iov_base: buf.as_ptr() as *mut _,
            iov_len: buf.len(),
        };
        n += 1;
    }
    (iov, n)
}

/// Sends `buf` on a socket, never raising SIGPIPE.
#[inline]
pub fn send(fd: Fd, buf: &[u8]) -> SysResult<usize> {
    let (ptr, len) = (buf.as_ptr().cast(), buf.len());
    // SAFETY: `ptr` and `len` describe `buf`, readable for the duration of the call.
    retry(|| syscall!(unsafe { libc::send(fd, ptr, len, libc::MSG_NOSIGNAL) })).map(|n| n as usize)
}

/// Sends up to [`MAX_IOV`] buffers on a socket, in order, never raising SIGPIPE.
pub fn send_vectored(fd: Fd, bufs: &[&[u8]]) -> SysResult<usize> {
    if let [only] = bufs {
        return send(fd, only);
    }
    let (mut iov, n) = iovecs(bufs);
    let iov = &mut iov[..n];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    // SAFETY: `msg` points at `iov`, which points at buffers borrowed for the duration of the call.
    retry(|| syscall!(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) })).map(|n| n as usize)
}

/// Writes up to [`MAX_IOV`] buffers to a non-socket descriptor (pipe, tty) without ever letting SIGPIPE
/// reach the process: SIGPIPE is blocked for the call, and one raised by this write is consumed.
pub fn write_vectored(fd: Fd, bufs: &[&[u8]]) -> SysResult<usize> {
    let (iov, n) = iovecs(bufs);
    let (ptr, count) = (iov.as_ptr(), n as c_int);
    let guard = SigpipeGuard::block();
    // SAFETY: `ptr` and `count` describe `iov`, which describes buffers borrowed for the call.
    let result = retry(|| syscall!(unsafe { libc::writev(fd, ptr, count) })).map(|n| n as usize);
    if result == Err(EPIPE) {
        guard.consume_pending();
    }
    result
}
