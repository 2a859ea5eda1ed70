//! Timers: callbacks on the loop's thread after a delay, once or at a fixed rate.

use std::ffi::{c_int, c_void};
use std::time::Duration;

use super::errors::{id_or_code, status, EP_ENULL};
use super::handler::{ep_timer_cb, Callbacks, FfiHandler};
use super::{ep_id, ep_loop};

/// Starts a timer: `cb` runs on the loop's thread after `timeout_ms`, then every `repeat_ms` if it
/// is not 0 (at fixed rate: a late loop skips missed periods instead of bursting). Timers with
/// equal deadlines fire in the order they were started. A pending timer keeps ep_run() running.
/// Timers get no on_close: a one-shot timer ends when its callback runs, any timer when
/// ep_timer_cancel() is called — and ep_loop_free() cancels pending timers without calling them,
/// so a `user` the timer owns must be freed by whoever frees the loop. ep_set_user() and
/// ep_get_user() work on timers. Returns the timer's id, or EP_ENULL (NULL cb), -ENOMEM, EP_EBUSY
/// (during ep_loop_free()), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC). May be
/// called from callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_timer_start(
    lp: *mut ep_loop,
    timeout_ms: u64,
    repeat_ms: u64,
    cb: ep_timer_cb,
    user: *mut c_void,
) -> i64 {
    with_loop!(lp, |boxed| {
        if cb.is_none() {
            return i64::from(EP_ENULL);
        }
        let handler = FfiHandler::new(Callbacks::Timer(cb), user);
        let repeat = (repeat_ms > 0).then(|| Duration::from_millis(repeat_ms));
        id_or_code(
            boxed
                .engine
                .timer_start(Duration::from_millis(timeout_ms), repeat, handler),
        )
    })
}

/// Cancels a pending timer; its callback will not run again. Works from any callback, including
/// the timer's own. Returns 0, EP_ESTALE (already fired one-shot, or cancelled), EP_EKIND (not a
/// timer), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_timer_cancel(lp: *mut ep_loop, id: ep_id) -> c_int {
    with_loop!(lp, |boxed| status(boxed.engine.timer_cancel(id)))
}
