//! Connections (and other stream fds): sending, ending, read flow control. Until a connection's
//! on_close, the peer's departure never makes these calls fail: they succeed and do nothing
//! harmful, and on_close alone reports it.

use std::ffi::{c_int, c_void};

use super::errors::{code, status, EP_ENULL};
use super::{ep_id, ep_loop};
use crate::engine::{Segment, MAX_QUEUE};

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
        // SAFETY: `buf` is readable for `len` bytes (contract).
        let Some(data) = (unsafe { byte_arg(buf, len) }) else {
            return EP_ENULL;
        };
        boxed.engine.send(id, data).map_or_else(code, c_int::from)
    })
}

/// The bytes of a (`buf`, `len`) argument; None for a NULL `buf` with `len` > 0 (EP_ENULL).
///
/// # Safety
/// `buf` NULL or readable for `len` bytes for as long as the slice is used.
pub(super) unsafe fn byte_arg<'a>(buf: *const c_void, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        Some(&[])
    } else if buf.is_null() {
        None
    } else {
        // SAFETY: non-NULL and readable for `len` bytes (contract).
        Some(unsafe { std::slice::from_raw_parts(buf.cast(), len) })
    }
}

/// At most this many buffers in one ep_sendv() (IOV_MAX, as for writev).
pub const EP_IOV_MAX: c_int = 1024;

/// Sends the `iovcnt` buffers of `iov` as one ordered unit, as if concatenated and passed to one
/// ep_send(): when nothing is queued they go out with one sendmsg (writev for a pipe), and only
/// what the kernel did not take is copied into the queue. The buffers may be reused when this
/// returns. Entries with iov_len 0 are skipped (their iov_base may then be NULL).
///
/// Returns as ep_send(): 0 (queue at or below the high-water mark), 1 (above it, or the peer is
/// gone: the bytes are discarded until on_close), or, with nothing queued, EP_ESTALE, EP_ENULL
/// (NULL iov with iovcnt > 0, or a NULL iov_base with iov_len > 0), -EINVAL (iovcnt < 0 or >
/// EP_IOV_MAX), EP_EKIND, EP_ECLOSING, -ESHUTDOWN, -EBADF, -ENOBUFS (the queue would exceed
/// 1 GiB), -ENOMEM, or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC). May be called
/// from callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free(); `iov` points at `iovcnt` iovecs, each readable for its length.
#[no_mangle]
pub unsafe extern "C" fn ep_sendv(
    lp: *mut ep_loop,
    id: ep_id,
    iov: *const libc::iovec,
    iovcnt: c_int,
) -> c_int {
    with_loop!(lp, |boxed| {
        if !(0..=EP_IOV_MAX).contains(&iovcnt) {
            return -libc::EINVAL;
        }
        if iovcnt == 0 {
            return boxed.engine.send(id, &[]).map_or_else(code, c_int::from);
        }
        if iov.is_null() {
            return EP_ENULL;
        }
        // SAFETY: `iov` points at `iovcnt` iovecs (contract), checked non-NULL above.
        let iov = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
        let mut slices: Vec<&[u8]> = Vec::with_capacity(iov.len());
        for v in iov {
            if v.iov_len == 0 {
                continue;
            }
            if v.iov_base.is_null() {
                return EP_ENULL;
            }
            if v.iov_len > MAX_QUEUE {
                return -libc::ENOBUFS;
            }
            // SAFETY: each iovec's base is readable for its length (contract), non-NULL, and its
            // length at most 1 GiB.
            slices.push(unsafe { std::slice::from_raw_parts(v.iov_base.cast(), v.iov_len) });
        }
        boxed
            .engine
            .send_vectored(id, &slices)
            .map_or_else(code, c_int::from)
    })
}

/// Called exactly once per accepted ep_send_nocopy() buffer, with the `user` given there.
pub type ep_release_fn = Option<unsafe extern "C" fn(user: *mut c_void)>;

/// A caller's buffer queued without a copy; dropping it runs the release callback.
struct CallerBuffer {
    buf: *const u8,
    len: usize,
    release: ep_release_fn,
    user: *mut c_void,
}

impl Segment for CallerBuffer {
    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ep_send_nocopy's contract keeps `buf` readable and unchanged for `len` bytes
        // until the release callback runs, which happens only when this value is dropped.
        unsafe { std::slice::from_raw_parts(self.buf, self.len) }
    }
}

impl Drop for CallerBuffer {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            // SAFETY: the caller handed this callback and its argument to ep_send_nocopy; it runs
            // once, on the loop's thread, with no borrow of the loop's state held.
            unsafe { release(self.user) };
        }
    }
}

/// Sends `len` bytes at `buf` without copying them: the library keeps a pointer, and calls
/// `release(user)` exactly once when it no longer needs the buffer — once the kernel took every
/// byte, or when the connection ends before that (ep_abort, a failure, the peer leaving,
/// ep_loop_free). The bytes leave in order with everything sent before and after. Until release
/// runs, `buf` must stay valid and unchanged. release never runs inside this call: it is called
/// from the loop, like any callback (at the end of the current dispatch step, or during the next
/// ep_run_once/ep_run, or in ep_loop_free), and may call any ep_* function, like other callbacks.
/// A NULL `release` is allowed (nothing is called; the buffer must then outlive its sending).
///
/// Returns as ep_send(): 0 (queue at or below the high-water mark) or 1 (above it, or the peer is
/// gone: the buffer is not sent and released as above) — in both cases release will be called.
/// On a negative return release is NOT called and the buffer stays the caller's: EP_ESTALE,
/// EP_ENULL (NULL buf with len > 0), EP_EKIND, EP_ECLOSING, -ESHUTDOWN, -EBADF, or a loop error
/// (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC). The buffer does not count against the 1 GiB cap
/// (it is not the loop's memory) but does count for the watermarks. May be called from callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free(); `buf` readable for `len` bytes until release is called; `release`
/// NULL or a function safe to call once with `user` on the loop's thread.
#[no_mangle]
pub unsafe extern "C" fn ep_send_nocopy(
    lp: *mut ep_loop,
    id: ep_id,
    buf: *const c_void,
    len: usize,
    release: ep_release_fn,
    user: *mut c_void,
) -> c_int {
    with_loop!(lp, |boxed| {
        if buf.is_null() && len > 0 {
            return EP_ENULL;
        }
        let segment = CallerBuffer {
            buf: buf.cast(),
            len,
            release,
            user,
        };
        match boxed.engine.send_borrowed(id, segment) {
            Ok(above) => c_int::from(above),
            Err((err, mut segment)) => {
                // Refused: the buffer stays the caller's, release is not called.
                segment.release = None;
                code(err)
            }
        }
    })
}

/// Sends `length` bytes of the open file `file_fd` starting at `offset` (`length` 0: up to the
/// file's end as fstat reports it now), in order with everything sent before and after, with
/// sendfile(2): the bytes never pass through user space and the loop never blocks on the socket
/// (a short sendfile keeps the rest queued until the socket is writable). `file_fd` stays the
/// caller's: the loop sends from its own close-on-exec duplicate, so it may be closed as soon as
/// this returns; the offset is passed to sendfile explicitly, so the file's position is neither
/// used nor moved. The queued range counts
/// for the watermarks (a large file returns 1: wait for on_writable before queueing more) but not
/// against the 1 GiB cap.
///
/// If the file turns out shorter than the range when its turn comes (e.g. truncated while
/// queued), or reading it fails, nothing more is sent and the connection ends once, through
/// on_close(EP_CLOSE_ERROR) with err ENODATA (short file) or the read's errno (e.g. EIO).
///
/// Returns as ep_send(): 0 or 1 (above the high-water mark, or the peer is gone and nothing is
/// sent), or, with nothing queued: EP_ESTALE, EP_EKIND, EP_ECLOSING, -ESHUTDOWN, -EBADF (a bad
/// `file_fd`, one not open for reading, or a read-only connection), -EINVAL (not a regular file,
/// `offset` beyond the end with `length` 0, or `offset + length` overflowing), -EMFILE (no
/// descriptor left for the duplicate), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK,
/// EP_EPANIC). May be called from callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_send_file(
    lp: *mut ep_loop,
    id: ep_id,
    file_fd: c_int,
    offset: u64,
    length: u64,
) -> c_int {
    with_loop!(lp, |boxed| boxed
        .engine
        .send_file(id, file_fd, offset, length)
        .map_or_else(code, c_int::from))
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
