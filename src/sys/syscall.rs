//! The one way a libc call is turned into a `SysResult`.

use super::errno::{SysResult, EINTR};

/// Evaluates a libc call written `unsafe { libc::name(args) }` and turns its -1 into
/// `Err(errno)`. The `unsafe` block stays at the call site, so each one carries its own
/// `// SAFETY:` line.
macro_rules! syscall {
    ($call:expr) => {{
        let ret = $call;
        if ret == -1 {
            Err($crate::sys::errno::last_errno())
        } else {
            Ok(ret)
        }
    }};
}

/// Retries a call while it fails with EINTR.
pub fn retry<T>(mut call: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    loop {
        match call() {
            Err(EINTR) => continue,
            other => return other,
        }
    }
}
