//! Connections (and other stream fds): sending, ending, read flow control. Until a connection's
//! on_close, the peer's departure never makes these calls fail: they succeed and do nothing
//! harmful, and on_close alone reports it.

use std::ffi::{c_int, c_void};

use super::errors::{code, status, EP_ENULL};
use super::{ep_id, ep_loop};
use crate::engine::MAX_QUEUE;

/// Sends `len` bytes from `buf` on connection (or pipe/tty) `id`. The bytes are copied: `buf` may
/// be reused when this returns. What the kernel takes now is written at once, the rest is queued;
/// bytes leave in call order. Never blocks, never a short count.
///
/// Returns 0 when the queue is at or below its high-water mark, or 1 — "stop producing" — when it
/// is above it (wait for on_writable) or when the peer is gone: after a reset, a failed write, or
/// any other departure of the peer the bytes are discarded and 1 is returned until the
/// connection's on_close, which reports the departure. Negative returns are the caller's mistakes
/// only, with nothing queued: EP_ESTALE, EP_ENULL (NULL buf with len > 0), EP_EKIND (a listener or
/// timer), EP_ECLOSING (after your own ep_close()/ep_abort()), -ESHUTDOWN (after your own
/// ep_shutdown()), -EBADF (a read-only fd, e.g. a pipe's read end), -ENOBUFS (the queue would
/// exceed 1 GiB), -ENOMEM, or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC). May be
/// called from callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free(); `buf` readable for `len` bytes (or NULL with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn ep_send(
    lp: *mut ep_loop,
    id: ep_id,
    buf: *const c_void,
    len: usize,
) -> c_int {
    with_loop!(lp, |boxed| {
        if len > MAX_QUEUE {
            return -libc::ENOBUFS;
        }
        let data: &[u8] = if len == 0 {
            &[]
        } else if buf.is_null() {
            return EP_ENULL;
        } else {
            // SAFETY: `buf` is readable for `len` bytes (contract), len <= 1 GiB.
            unsafe { std::slice::from_raw_parts(buf.cast(), len) }
        };
        boxed.engine.send(id, data).map_or_else(code, c_int::from)
    })
}

/// Sends FIN once the queued output has been written; reading continues, and the peer's EOF
/// then ends the connection (on_close EP_CLOSE_LOCAL). Later ep_send() calls return -ESHUTDOWN.
/// Returns 0 (also when repeated, and for a connection whose peer is gone), EP_ESTALE, EP_EKIND
/// (a listener or timer), EP_ECLOSING (after your own ep_close()/ep_abort()), -ENOTSOCK (a pipe,
/// a tty), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_shutdown(lp: *mut ep_loop, id: ep_id) -> c_int {
    with_loop!(lp, |boxed| status(boxed.engine.shutdown(id)))
}

/// Graceful close: flushes the queue, sends FIN, then the loop alone reads and discards until
/// the peer's EOF or the linger time (so the peer gets everything even if it left request bytes
/// unread). on_close(EP_CLOSE_LOCAL) comes once the data was handed to the kernel and FIN sent,
/// always later, never from inside this call; if the peer left first, on_close keeps the peer's
/// reason. Until on_close, further calls with the id return EP_ECLOSING, except ep_abort(), which
/// still resets the connection (also while the loop lingers on it); ep_get_user()/ep_set_user()
/// keep working. Once on_close runs, calls return EP_ESTALE. If the queue makes no progress for a
/// whole linger time the connection is reset (EP_CLOSE_TIMEOUT). Closing a listener stops
/// accepting at once. Returns 0 (also for a connection whose peer is gone), EP_ESTALE, EP_EKIND
/// (a timer: use ep_timer_cancel()), EP_ECLOSING (already closed or aborted by you), or a loop
/// error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_close(lp: *mut ep_loop, id: ep_id) -> c_int {
    with_loop!(lp, |boxed| status(boxed.engine.close(id)))
}

/// Aborts: RST now (SO_LINGER 0), queued data dropped; on_close(EP_CLOSE_ABORT) follows, deferred
/// (a connection that had already failed keeps its failure's reason; one that had completed
/// ep_close() keeps EP_CLOSE_LOCAL, and the socket the loop lingers on is reset). Allowed until
/// on_close, also after ep_close(). Returns 0, EP_ESTALE, EP_EKIND (a timer), EP_ECLOSING
/// (already aborted by you), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_abort(lp: *mut ep_loop, id: ep_id) -> c_int {
    with_loop!(lp, |boxed| status(boxed.engine.abort(id)))
}

/// Read flow control: no on_data until ep_resume_reading() (a listener stops accepting). If the
/// connection fails or hangs up meanwhile, what remains is delivered before on_close. Returns 0
/// (also for a connection whose peer is gone), EP_ESTALE, EP_EKIND (a timer), EP_ECLOSING (after
/// your own ep_close()/ep_abort()), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_pause_reading(lp: *mut ep_loop, id: ep_id) -> c_int {
    with_loop!(lp, |boxed| status(boxed.engine.pause_reading(id, true)))
}

/// Undoes ep_pause_reading(); data that arrived meanwhile is delivered in the next step.
/// Returns as ep_pause_reading().
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_resume_reading(lp: *mut ep_loop, id: ep_id) -> c_int {
    with_loop!(lp, |boxed| status(boxed.engine.pause_reading(id, false)))
}
