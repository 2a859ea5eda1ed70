//! The trace hook: why did the loop do what it did with a connection? One record per decision
//! (see ep_set_trace()), formatted by ep_trace_format(); EPLOOP_TRACE=1 in the environment
//! traces every loop of the process to stderr without a code change.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::fmt::Write as _;

use super::boundary::LoopBox;
use super::errors::EP_ENULL;
use super::handler::ep_close_reason;
use super::{ep_close_reason_name, ep_id, ep_loop};
use crate::engine::Trace;

/// ep_trace_record.kind: epoll reported `bits` (EPOLLIN 0x1, EPOLLOUT 0x4, EPOLLERR 0x8,
/// EPOLLHUP 0x10, EPOLLRDHUP 0x2000) for the id.
pub const EP_TRACE_EPOLL: u32 = 1;
/// ep_trace_record.kind: a read returned `result` bytes (0: the peer's EOF) or -errno.
pub const EP_TRACE_READ: u32 = 2;
/// ep_trace_record.kind: a write (ep_send's direct write, or a flush of the queue) handed
/// `result` bytes to the kernel, or failed with -errno (-EAGAIN: the kernel took nothing now).
pub const EP_TRACE_WRITE: u32 = 3;
/// ep_trace_record.kind: the peer's EOF arrived in the same step as data an EP_QUEUE handler has
/// not seen yet; it is held until the next step so the reply to that data goes out first.
pub const EP_TRACE_EOF_HELD: u32 = 4;
/// ep_trace_record.kind: EPOLLHUP/EPOLLERR settled after the input was drained; `err` is SO_ERROR
/// (0: none).
pub const EP_TRACE_HANGUP: u32 = 5;
/// ep_trace_record.kind: FIN was sent (ep_shutdown(), or a graceful close whose queue drained).
pub const EP_TRACE_FIN_SENT: u32 = 6;
/// ep_trace_record.kind: the id's one close is decided with `reason` and `err`; its on_close
/// follows at the end of the step.
pub const EP_TRACE_CLOSE: u32 = 7;

/// One decision of the loop about a registration, handed to the trace callback. Only the fields
/// the kind names are meaningful; the others are 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ep_trace_record {
    /// EP_TRACE_EPOLL ... EP_TRACE_CLOSE.
    pub kind: u32,
    /// EP_TRACE_EPOLL: the epoll event bits.
    pub bits: u32,
    /// The registration.
    pub id: ep_id,
    /// EP_TRACE_READ, EP_TRACE_WRITE: bytes, or -errno.
    pub result: i64,
    /// EP_TRACE_CLOSE: the ep_close_reason.
    pub reason: c_int,
    /// EP_TRACE_CLOSE, EP_TRACE_HANGUP: the errno (0: none).
    pub err: c_int,
}

/// A trace callback: `record` is valid only during the call. It runs on the loop's thread like
/// any callback, and may call ep_* functions like any callback (it is best left to logging).
pub type ep_trace_cb = Option<
    unsafe extern "C" fn(lp: *mut ep_loop, record: *const ep_trace_record, user: *mut c_void),
>;

impl ep_trace_record {
    pub(super) fn of(id: ep_id, trace: Trace) -> Self {
        let record = ep_trace_record {
            id,
            ..Default::default()
        };
        match trace {
            Trace::Epoll { bits } => ep_trace_record {
                kind: EP_TRACE_EPOLL,
                bits,
                ..record
            },
            Trace::Read { result } => ep_trace_record {
                kind: EP_TRACE_READ,
                result,
                ..record
            },
            Trace::Write { result } => ep_trace_record {
                kind: EP_TRACE_WRITE,
                result,
                ..record
            },
            Trace::EofHeld => ep_trace_record {
                kind: EP_TRACE_EOF_HELD,
                ..record
            },
            Trace::Hangup { err } => ep_trace_record {
                kind: EP_TRACE_HANGUP,
                err,
                ..record
            },
            Trace::FinSent => ep_trace_record {
                kind: EP_TRACE_FIN_SENT,
                ..record
            },
            Trace::Close { reason, err } => ep_trace_record {
                kind: EP_TRACE_CLOSE,
                reason: ep_close_reason::from(reason) as c_int,
                err,
                ..record
            },
        }
    }

    /// The record as one line of text (no newline).
    fn text(&self) -> String {
        let mut line = format!("trace {} ", self.id);
        let _ = match self.kind {
            EP_TRACE_EPOLL => write!(line, "epoll {}", epoll_bits(self.bits)),
            EP_TRACE_READ if self.result == 0 => write!(line, "read eof"),
            EP_TRACE_READ => write!(line, "read {}", outcome(self.result)),
            EP_TRACE_WRITE => write!(line, "write {}", outcome(self.result)),
            EP_TRACE_EOF_HELD => write!(line, "eof held for the next step"),
            EP_TRACE_HANGUP => write!(line, "hangup so_error {}", self.err),
            EP_TRACE_FIN_SENT => write!(line, "fin sent"),
            EP_TRACE_CLOSE => {
                // SAFETY: ep_close_reason_name returns a static NUL-terminated string.
                let name = unsafe { CStr::from_ptr(ep_close_reason_name(self.reason)) };
                write!(line, "close {} {}", name.to_string_lossy(), self.err)
            }
            other => write!(line, "kind {other}"),
        };
        line
    }
}

fn outcome(result: i64) -> String {
    if result >= 0 {
        return result.to_string();
    }
    let code = c_int::try_from(result).unwrap_or(c_int::MIN);
    // SAFETY: ep_strerror returns a static NUL-terminated string for any int.
    let text = unsafe { CStr::from_ptr(super::ep_strerror(code)) };
    format!("{result} ({})", text.to_string_lossy())
}

fn epoll_bits(bits: u32) -> String {
    let names = [
        (libc::EPOLLIN as u32, "IN"),
        (libc::EPOLLOUT as u32, "OUT"),
        (libc::EPOLLRDHUP as u32, "RDHUP"),
        (libc::EPOLLHUP as u32, "HUP"),
        (libc::EPOLLERR as u32, "ERR"),
        (libc::EPOLLPRI as u32, "PRI"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if set.is_empty() {
        format!("{bits:#x}")
    } else {
        set.join("|")
    }
}

/// Writes `record` as one line of text (no newline; it starts with "trace <id> ", so it never
/// looks like an event-log line) into `buf` of `len` bytes, NUL-terminated and truncated like
/// snprintf. Returns the length of the whole line (excluding the NUL), EP_ENULL (NULL record, or
/// NULL buf with len > 0). An unknown kind is formatted as "kind N", not refused. Callable from
/// any thread.
///
/// # Safety
/// `record` NULL or valid; `buf` NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ep_trace_format(
    record: *const ep_trace_record,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: a non-NULL `record` is valid (contract).
    let Some(record) = (unsafe { record.as_ref() }) else {
        return EP_ENULL;
    };
    if buf.is_null() && len > 0 {
        return EP_ENULL;
    }
    let line = record.text();
    if len > 0 {
        let n = line.len().min(len - 1);
        // SAFETY: `buf` is writable for `len` bytes (contract) and n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(line.as_ptr(), buf.cast::<u8>(), n);
            buf.add(n).write(0);
        }
    }
    c_int::try_from(line.len()).unwrap_or(c_int::MAX)
}

/// Sets the loop's trace hook: `cb(loop, record, user)` is called for every decision the loop
/// makes about a registration (epoll bits seen, each read and write result, an EOF held, a hangup
/// settled, FIN sent, the close decided with its cause). NULL turns tracing off; while off, each
/// trace point costs one branch. Replaces a hook set before (including the EPLOOP_TRACE one).
/// Returns 0 or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// Setting EPLOOP_TRACE=1 in the environment makes every loop created afterwards trace to stderr
/// (one ep_trace_format() line each), without a code change.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_trace(
    lp: *mut ep_loop,
    cb: ep_trace_cb,
    user: *mut c_void,
) -> c_int {
    with_loop!(lp, |boxed| {
        boxed.trace.set((cb, user));
        boxed.engine.set_tracing(cb.is_some());
        0
    })
}

/// The EPLOOP_TRACE hook: one line per record on stderr.
unsafe extern "C" fn trace_to_stderr(
    _lp: *mut ep_loop,
    record: *const ep_trace_record,
    _user: *mut c_void,
) {
    // SAFETY: the loop hands a valid record for the duration of the call.
    if let Some(record) = unsafe { record.as_ref() } {
        eprintln!("{}", record.text());
    }
}

impl LoopBox {
    /// Installs the stderr hook when EPLOOP_TRACE asks for it (at loop creation).
    pub(super) fn trace_from_environment(&self) {
        if std::env::var_os("EPLOOP_TRACE").is_some_and(|v| !v.is_empty() && v != "0") {
            self.trace
                .set((Some(trace_to_stderr), std::ptr::null_mut()));
            self.engine.set_tracing(true);
        }
    }

    /// Hands a trace record to the hook, if one is set.
    pub(super) fn emit_trace(&self, lp: *mut ep_loop, id: ep_id, trace: Trace) {
        if let (Some(cb), user) = self.trace.get() {
            let record = ep_trace_record::of(id, trace);
            // SAFETY: the caller passed this function pointer to ep_set_trace with this
            // signature; the record lives for the duration of the call.
            unsafe { cb(lp, &record, user) }
        }
    }
}
