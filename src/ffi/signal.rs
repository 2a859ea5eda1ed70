//! Signals: callbacks on the loop's thread for signals delivered to the process or the thread.

use std::ffi::{c_int, c_void};

use super::errors::{id_or_code, status, EP_ENULL};
use super::handler::{ep_signal_cb, Callbacks, FfiHandler};
use super::registration::EP_UNREF;
use super::{ep_id, ep_loop};
use crate::engine::Options;

/// Calls `cb(loop, id, signo, user)` on the loop's thread, as an ordinary callback (never from a
/// signal handler, so it may call any ep_* function), each time `signo` is delivered, until
/// ep_signal_stop(). Deliveries that arrive before the loop reads them coalesce as the kernel
/// coalesces signals (real-time signals are queued and each is reported). Several handles may
/// watch one signal (each is called, in the order they were started) and a loop may watch
/// several signals. A handle keeps ep_run() running, like a timer, unless `flags` has EP_UNREF
/// (the usual choice for SIGINT/SIGTERM in a server: the loop still ends when its connections
/// are gone). Signal handles get no on_close; ep_loop_free() stops them. ep_set_user() and
/// ep_get_user() work on them.
///
/// How: the first handle of a signal in a loop blocks it in the calling thread
/// (pthread_sigmask) and adds it to the loop's signalfd; the last ep_signal_stop() of it
/// discards a delivery not read yet and restores the mask as it was (a signal that was already
/// blocked stays blocked). No signal disposition (sigaction) is touched. Call ep_signal_start()
/// and ep_signal_stop() on the thread that runs the loop.
///
/// Threads — the price of signalfd: a signal sent to the process (kill, Ctrl-C, a service
/// manager's SIGTERM) goes to ANY thread that does not block it. The loop's thread blocks it, so
/// if another thread of the program does not, that thread takes the signal with its current
/// disposition (often: the process ends) and the loop never sees it. A program with several
/// threads must therefore block the signal in every thread: block it with pthread_sigmask()
/// in main() before creating any thread (new threads inherit the mask); the loop then reads it
/// whatever thread it runs on. With several loops watching the same signal in several threads, a
/// process-directed delivery is read by one of them (whichever reads first), while one sent to a
/// thread with pthread_kill() goes to that thread's loop. The mask is also inherited by child
/// processes, through exec: a child started from the loop's thread starts with the signal blocked
/// (reset it, e.g. with posix_spawnattr_setsigmask). A process-wide signal handler writing to
/// a pipe (a "self-pipe", as libuv does) avoids these limits but replaces the program's own
/// sigaction; eploop leaves dispositions to the program.
///
/// Returns the handle's id (> 0), or EP_ENULL (NULL cb), -EINVAL (a signal that cannot be
/// watched: out of range, SIGKILL, SIGSTOP, a fault signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE), one
/// reserved by the C library; or a flag other than EP_UNREF), -EMFILE/-ENFILE/-ENOMEM (no
/// signalfd), -ENOMEM, EP_EBUSY (during ep_loop_free()), or a loop error (EP_ENULL, EP_ETHREAD,
/// EP_EFORK, EP_EPANIC). May be called from callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_signal_start(
    lp: *mut ep_loop,
    signo: c_int,
    flags: u32,
    cb: ep_signal_cb,
    user: *mut c_void,
) -> i64 {
    with_loop!(lp, |boxed| {
        if cb.is_none() {
            return i64::from(EP_ENULL);
        }
        if flags & !EP_UNREF != 0 {
            return -i64::from(libc::EINVAL);
        }
        let handler = FfiHandler::new(Callbacks::Signal(cb), user);
        let opts = Options {
            unref: flags & EP_UNREF != 0,
            ..Options::default()
        };
        id_or_code(boxed.engine.signal_start(signo, opts, handler))
    })
}

/// Stops a signal handle: its callback is not called again (also when stopped from a callback of
/// the same delivery). When it was the last handle of its signal in this loop, a delivery not
/// read yet is discarded and the thread's signal mask restored (see ep_signal_start()). Returns
/// 0, EP_ESTALE (already stopped, or unknown), EP_EKIND (not a signal handle), or a loop error
/// (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_signal_stop(lp: *mut ep_loop, id: ep_id) -> c_int {
    with_loop!(lp, |boxed| status(boxed.engine.signal_stop(id)))
}
