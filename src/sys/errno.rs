//! Errno values: the error half of every wrapper, and their descriptions.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

/// A positive errno value.
pub type Errno = i32;
/// Result of a system call wrapper.
pub type SysResult<T> = Result<T, Errno>;

pub use libc::{
    EACCES, EAFNOSUPPORT, EAGAIN, EBADF, ECONNABORTED, ECONNREFUSED, ECONNRESET, EDESTADDRREQ,
    EHOSTDOWN, EHOSTUNREACH, EINTR, EINVAL, EIO, EMFILE, EMSGSIZE, ENETDOWN, ENETUNREACH, ENFILE,
    ENOBUFS, ENOMEM, ENOTCONN, ENOTSOCK, EPERM, EPIPE, EPROTO, ESHUTDOWN, ETIMEDOUT,
};

/// The calling thread's errno, as left by the last failed call.
pub(super) fn last_errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(EIO)
}

/// A static, human-readable description of an errno value, or None if unknown.
pub fn errno_description(errno: Errno) -> Option<&'static CStr> {
    extern "C" {
        // glibc >= 2.32: returns a pointer to an immutable static string, or NULL.
        fn strerrordesc_np(errnum: c_int) -> *const c_char;
    }
    // SAFETY: strerrordesc_np is thread-safe and accepts any int.
    let ptr = unsafe { strerrordesc_np(errno) };
    if ptr.is_null() {
        None
    } else {
        // SAFETY: a non-NULL result is a NUL-terminated string with static lifetime.
        Some(unsafe { CStr::from_ptr(ptr) })
    }
}
