//! Descriptors: ownership, status flags, close-on-exec, kind, close.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::raw::c_int;

use super::errno::{SysResult, ENOTSOCK};
use super::socket::getsockopt_int;

/// A raw file descriptor: one the loop adopted from its user (maybe borrowed), or one whose
/// owner keeps it as an integer.
pub type Fd = c_int;

/// Takes ownership of a descriptor a successful system call just created.
pub(super) fn owned(fd: Fd) -> OwnedFd {
    // SAFETY: the kernel has just returned `fd`, open and referenced nowhere else; the OwnedFd
    // is its only owner and closes it once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Closes a raw descriptor. Never retried on EINTR: on Linux it is released either way.
pub fn close(fd: Fd) {
    // SAFETY: close takes any int; the caller owns `fd` and does not use it afterwards.
    let _ = syscall!(unsafe { libc::close(fd) });
}

/// The file status flags (O_NONBLOCK, O_ACCMODE...). EBADF tells a closed descriptor.
pub fn status_flags(fd: Fd) -> SysResult<c_int> {
    // SAFETY: F_GETFL takes no third argument and reads nothing from memory.
    syscall!(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

pub fn set_status_flags(fd: Fd, flags: c_int) -> SysResult<()> {
    // SAFETY: F_SETFL takes an int argument and reads nothing from memory.
    syscall!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

pub fn set_cloexec(fd: Fd) -> SysResult<()> {
    // SAFETY: F_GETFD takes no third argument and reads nothing from memory.
    let flags = syscall!(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: F_SETFD takes an int argument and reads nothing from memory.
    syscall!(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) }).map(drop)
}

/// Opens /dev/null read-only, close-on-exec: a spare descriptor to hold in reserve.
pub fn open_devnull() -> SysResult<OwnedFd> {
    let path = c"/dev/null";
    // SAFETY: `path` is a NUL-terminated static string; O_CREAT is absent, so no mode is read.
    syscall!(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }).map(owned)
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
