//! Files queued on a connection: a private duplicate of the caller's descriptor, its size, and
//! sendfile(2) from it.

use std::os::fd::OwnedFd;

use super::errno::{SysResult, EPIPE};
use super::fd::{owned, Fd};
use super::sigpipe::SigpipeGuard;
use super::syscall::retry;

/// The errno a connection fails with when a queued file turned out shorter than the range queued.
pub use libc::ENODATA;

/// What fstat says about a descriptor to send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub regular: bool,
    pub size: u64,
}

pub fn file_info(fd: Fd) -> SysResult<FileInfo> {
    // SAFETY: stat is plain old data; all-zero is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a writable stat buffer for the duration of the call.
    syscall!(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(FileInfo {
        regular: st.st_mode & libc::S_IFMT == libc::S_IFREG,
        size: st.st_size as u64,
    })
}

/// A close-on-exec duplicate of `fd`, owned by the caller (the original stays its owner's).
pub fn dup_cloexec(fd: Fd) -> SysResult<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an int argument and reads nothing from memory.
    syscall!(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) }).map(owned)
}

/// Copies up to `count` bytes of `file` from `offset` to `out` (a socket or a pipe) inside the
/// kernel; Ok(0) means the file ends at `offset`. sendfile has no MSG_NOSIGNAL: SIGPIPE is
/// blocked for the call and one it raised is consumed, so the host never sees it.
pub fn sendfile(out: Fd, file: Fd, offset: u64, count: usize) -> SysResult<usize> {
    let mut off = offset as libc::off_t;
    let count = count.min(0x7fff_f000);
    let guard = SigpipeGuard::block();
    // SAFETY: `off` is a writable off_t for the duration of the call; no other memory is touched.
    let result = retry(|| syscall!(unsafe { libc::sendfile(out, file, &mut off, count) }))
        .map(|n| n as usize);
    if result == Err(EPIPE) {
        guard.consume_pending();
    }
    result
}
