//! Error codes: the library's own EP_E* codes, the one mapping from engine errors to C codes, and
//! ep_strerror().

use std::ffi::{c_char, c_int, CStr};

use crate::engine::Error;

/// Unknown or stale id: never issued, already past its on_close, or an id of another loop.
pub const EP_ESTALE: c_int = -4001;
/// A required pointer argument was NULL.
pub const EP_ENULL: c_int = -4002;
/// Not allowed now: ep_run()/ep_run_once()/ep_poll() from inside a callback, or a call that
/// creates something while ep_loop_free() is running.
pub const EP_EBUSY: c_int = -4003;
/// The caller already ended this id itself: a call after its own ep_close() or ep_abort()
/// (ep_abort() after ep_close() is still allowed). Not a peer's doing: a peer's departure never
/// makes a call fail.
pub const EP_ECLOSING: c_int = -4004;
/// The operation does not apply to this kind of registration (e.g. ep_send() on a listener,
/// ep_abort() on a timer).
pub const EP_EKIND: c_int = -4005;
/// An internal panic was caught; the loop is poisoned and every further call returns this.
pub const EP_EPANIC: c_int = -4006;
/// Another thread is inside a call on this loop (typically running it): the call was refused and
/// did nothing. A loop is used by one thread at a time; only ep_stop() and ep_post() may be called
/// while another thread uses it.
pub const EP_ETHREAD: c_int = -4007;
/// This process is a child that inherited the loop through fork(): every call but ep_loop_free()
/// is refused, so that nothing the child does disturbs the parent's loop.
pub const EP_EFORK: c_int = -4008;

/// Name resolution failed (ep_connect() with a host name): such a failure is reported as the
/// connection's on_close(EP_CLOSE_ERROR) with `err` = -(EP_EAI_BASE + the EAI_* code of
/// getaddrinfo), i.e. a positive number above 4100 that ep_strerror(-err) names with
/// gai_strerror's text. The common ones have names: EP_EAI_NONAME, EP_EAI_AGAIN, EP_EAI_FAIL.
pub const EP_EAI_BASE: c_int = -4100;
/// The name does not exist, or has no IPv4/IPv6 address (EAI_NONAME; also reported for
/// EAI_NODATA and EAI_ADDRFAMILY): as an on_close `err`, 4102.
pub const EP_EAI_NONAME: c_int = -4102;
/// The name server could not be reached or answered "try again" (EAI_AGAIN): `err` 4103.
pub const EP_EAI_AGAIN: c_int = -4103;
/// The name server failed for good (EAI_FAIL): `err` 4104.
pub const EP_EAI_FAIL: c_int = -4104;

/// The one mapping from engine errors to C codes.
pub(super) fn code(err: Error) -> c_int {
    match err {
        Error::Stale => EP_ESTALE,
        Error::Closing => EP_ECLOSING,
        Error::Kind => EP_EKIND,
        Error::Busy => EP_EBUSY,
        Error::Null => EP_ENULL,
        Error::Os(errno) => -errno,
    }
}

/// 0, or the C code of the error.
pub(super) fn status(result: Result<(), Error>) -> c_int {
    result.map_or_else(code, |()| 0)
}

/// An id (> 0), or the C code of the error: what the exports that create registrations return.
pub(super) fn id_or_code(result: Result<u64, Error>) -> i64 {
    match result {
        Ok(id) => id as i64,
        Err(e) => i64::from(code(e)),
    }
}

/// A static description of any code these functions return (0, -errno, or EP_E*). Never NULL;
/// the string is never freed. Callable from any thread.
#[no_mangle]
pub extern "C" fn ep_strerror(code: c_int) -> *const c_char {
    let text: &'static CStr = match code {
        0 => c"Success",
        EP_ESTALE => c"Unknown or stale eploop id",
        EP_ENULL => c"NULL argument",
        EP_EBUSY => c"Not allowed now (inside a callback, or while the loop is being freed)",
        EP_ECLOSING => c"This id was already closed or aborted by the caller",
        EP_EKIND => c"Operation does not apply to this kind of registration",
        EP_EPANIC => c"Internal panic caught; the loop is poisoned",
        EP_ETHREAD => c"Another thread is using this loop (a loop is used by one thread at a time)",
        EP_EFORK => c"Loop inherited across fork(); the child may only free it",
        _ => match code.checked_neg().and_then(crate::sys::eai_of) {
            Some(eai) => crate::sys::eai_description(eai),
            None => crate::sys::errno_description(code.checked_abs().unwrap_or(0))
                .unwrap_or(c"Unknown error code"),
        },
    };
    text.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_codes_follow_the_eai_codes() {
        let err = |eai: c_int| -(EP_EAI_BASE + eai);
        assert_eq!(-crate::sys::EAI_ERRNO_BASE, EP_EAI_BASE);
        assert_eq!(EP_EAI_NONAME, -err(libc::EAI_NONAME));
        assert_eq!(EP_EAI_AGAIN, -err(libc::EAI_AGAIN));
        assert_eq!(EP_EAI_FAIL, -err(libc::EAI_FAIL));
        assert_eq!(
            crate::sys::eai_of(err(libc::EAI_NONAME)),
            Some(libc::EAI_NONAME)
        );
        assert_eq!(crate::sys::eai_of(libc::ECONNREFUSED), None);
    }
}
