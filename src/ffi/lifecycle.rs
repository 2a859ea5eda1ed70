//! The loop object: creating, running, stopping, waking from other threads, and freeing it.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::time::Duration;

use super::boundary::{guard, Engine, LoopBox};
use super::ep_loop;
use super::errors::{code, status, EP_EBUSY, EP_EFORK, EP_ENULL, EP_EPANIC};
use super::handler::{ep_post_cb, FfiPost};
use crate::engine::{Error, RunState};

/// ep_run()/ep_run_once(): nothing is registered any more.
pub const EP_RUN_EMPTY: c_int = 0;
/// ep_run_once(): the loop still has registrations.
pub const EP_RUN_MORE: c_int = 1;
/// ep_run()/ep_run_once(): returned because of ep_stop(); the stop request is consumed.
pub const EP_RUN_STOPPED: c_int = 2;

pub(super) fn run_code(result: Result<RunState, Error>) -> c_int {
    match result {
        Ok(RunState::Empty) => EP_RUN_EMPTY,
        Ok(RunState::More) => EP_RUN_MORE,
        Ok(RunState::Stopped) => EP_RUN_STOPPED,
        Err(e) => code(e),
    }
}

/// Creates an event loop (an epoll instance and a wakeup eventfd, both close-on-exec).
/// Returns NULL on failure (errno describes it). The caller owns the loop and frees it with
/// ep_loop_free(). Any thread may create a loop; it is then used by one thread at a time.
#[no_mangle]
pub extern "C" fn ep_loop_new() -> *mut ep_loop {
    guard(|| match Engine::new() {
        Ok(engine) => Box::into_raw(Box::new(LoopBox::new(engine))).cast(),
        Err(errno) => {
            crate::sys::set_errno(errno);
            std::ptr::null_mut()
        }
    })
}

/// Frees a loop: every open registration gets on_close(EP_CLOSE_LOOP_FREED) (closes already
/// decided keep their own reason), lingering sockets are closed, pending timers are cancelled
/// without a call (free a timer's `user` yourself, e.g. after ep_run() returned), what other
/// threads posted runs, and every owned fd is closed. No callback runs after this returns. NULL is
/// a no-op. Ignored from inside a callback of the same loop (call ep_stop() and free the loop
/// after ep_run() returns) and while another thread is using the loop (EP_ETHREAD's rule: the loop
/// is left as it was).
///
/// In a child process that inherited the loop through fork(), this closes the child's copies of
/// the descriptors and delivers on_close(EP_CLOSE_LOOP_FREED) so the child can free its copies of
/// the user state, without touching what the parent uses: no epoll_ctl on the shared epoll set,
/// no queued output written, no socket option or file flag changed, no FIN or RST sent.
///
/// # Safety
/// `lp` must be NULL or a pointer from ep_loop_new() not freed yet; afterwards it is dangling.
#[no_mangle]
pub unsafe extern "C" fn ep_loop_free(lp: *mut ep_loop) {
    // SAFETY: `lp` is NULL or a live loop (this function's contract).
    let Some(boxed) = (unsafe { super::boundary::loop_box(lp) }) else {
        return;
    };
    if boxed.inherited() {
        boxed.engine.forget_parent();
    } else {
        let freed = with_loop!(lp, |boxed| {
            if boxed.engine.in_callback() {
                return EP_EBUSY;
            }
            boxed.engine.close_all();
            0
        });
        // A poisoned loop is still released (its close_all already failed once).
        if freed != 0 && freed != EP_EPANIC {
            return;
        }
    }
    guard(|| {
        if boxed.inherited() {
            boxed.engine.close_all();
        }
        // SAFETY: `lp` came from Box::into_raw in ep_loop_new, no callback of it is on the
        // stack and no other thread is inside a call on it (checked above).
        drop(unsafe { Box::from_raw(lp.cast::<LoopBox>()) })
    })
}

/// Runs the loop until ep_stop() (returns EP_RUN_STOPPED) or until nothing is registered, no
/// socket is lingering and nothing is posted (EP_RUN_EMPTY). A callback that registers something
/// (a reconnect from on_close, a timer) keeps it running. Signals interrupting the wait are
/// ignored (EINTR is retried): call ep_stop() from the handler to stop. Returns EP_RUN_EMPTY,
/// EP_RUN_STOPPED, EP_EBUSY (from inside a callback), -errno of epoll_wait(), or a loop error
/// (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC). Events of EP_QUEUE registrations are kept for the
/// next ep_poll().
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_run(lp: *mut ep_loop) -> c_int {
    with_loop!(lp, |boxed| {
        boxed.begin_step();
        run_code(boxed.engine.run())
    })
}

/// Waits at most `timeout_ms` (-1 = until something happens, 0 = poll) and dispatches what
/// arrived. Returns EP_RUN_MORE, EP_RUN_EMPTY, EP_RUN_STOPPED (ep_stop() was called; consumed),
/// -EINTR when a signal interrupted the wait (nothing was dispatched; lets a host language run
/// its signal handlers), EP_EBUSY (from inside a callback), -errno of epoll_wait(), or a loop
/// error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC). Events of EP_QUEUE registrations are kept
/// for the next ep_poll(), which returns them without waiting.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_run_once(lp: *mut ep_loop, timeout_ms: c_int) -> c_int {
    with_loop!(lp, |boxed| {
        boxed.begin_step();
        run_code(boxed.engine.run_once(timeout_ms.max(-1)))
    })
}

/// The loop's thread-safe part, for ep_stop() and ep_post(); None for NULL or an inherited loop.
///
/// # Safety
/// `lp` must be NULL or a live loop that is not freed concurrently with this call.
unsafe fn remote<'a>(lp: *mut ep_loop) -> Result<&'a crate::engine::Remote<FfiPost>, c_int> {
    // SAFETY: `lp` is NULL or a live loop (contract). Only fields that are never written after
    // ep_loop_new (the fork generation) or are thread-safe (`remote`) are read; the rest of the
    // loop may be in use by its own thread.
    let boxed = unsafe { super::boundary::loop_box(lp) }.ok_or(EP_ENULL)?;
    if boxed.inherited() {
        return Err(EP_EFORK);
    }
    Ok(&boxed.engine.remote)
}

/// Asks ep_run()/ep_run_once() to return (EP_RUN_STOPPED) at the end of the current step, waking
/// it if it is waiting; a request made while the loop is not running is kept for the next run.
/// Callable from any thread and from a signal handler (async-signal-safe: an atomic store and one
/// write(2)). Returns 0, EP_ENULL, EP_EFORK (a child's inherited loop), or -errno of the wakeup
/// write.
///
/// # Safety
/// `lp` must be NULL or a live loop that is not freed concurrently with this call.
#[no_mangle]
pub unsafe extern "C" fn ep_stop(lp: *mut ep_loop) -> c_int {
    // SAFETY: forwarded contract.
    match unsafe { remote(lp) } {
        Ok(remote) => status(remote.stop()),
        Err(code) => code,
    }
}

/// Runs `cb(loop, user)` on the loop's thread at its next step, waking it; a pending post counts as
/// work, so ep_run()/ep_run_once() run it even if nothing is registered. Every successful post runs
/// exactly once, in posting order, even if the loop is then freed (ep_loop_free() runs what is
/// pending). Callable from any thread (not from signal handlers: it takes a lock) while the loop is
/// alive. A burst of posts made before the loop takes them costs one wakeup (one eventfd write),
/// not one system call per post. Returns 0, EP_ENULL (NULL loop or cb), EP_EBUSY (ep_loop_free()
/// has started: this post will not run), EP_EFORK (a child's inherited loop), EP_EPANIC, or -errno
/// of the wakeup.
///
/// # Safety
/// `lp` must be a live loop that is not freed concurrently with this call.
#[no_mangle]
pub unsafe extern "C" fn ep_post(lp: *mut ep_loop, cb: ep_post_cb, user: *mut c_void) -> c_int {
    let Some(cb) = cb else { return EP_ENULL };
    // SAFETY: forwarded contract.
    match unsafe { remote(lp) } {
        Ok(remote) => guard(|| {
            status(remote.post(FfiPost {
                cb,
                user: user as usize,
            }))
        }),
        Err(code) => code,
    }
}

/// Graceful server shutdown: closes every listener now (on_close EP_CLOSE_LOCAL), lets open
/// connections finish on their own for `grace_ms`, then closes the remaining ones gracefully
/// (EP_UNREF registrations are left alone); those that cannot flush within the linger time are
/// reset (EP_CLOSE_TIMEOUT). Connections drained this way still accept ep_send() (it returns 1
/// and discards) until their on_close. ep_run() then returns EP_RUN_EMPTY once nothing is left
/// (pending timers keep it running). Returns 0, EP_EBUSY (during ep_loop_free()), or a loop error
/// (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_drain(lp: *mut ep_loop, grace_ms: u32) -> c_int {
    with_loop!(lp, |boxed| status(
        boxed
            .engine
            .drain(Duration::from_millis(u64::from(grace_ms)))
    ))
}

/// Bounds, for the whole loop, both how long a graceful close (or a flush after the peer's EOF) may
/// go without progress before the connection is reset (EP_CLOSE_TIMEOUT), and how long the loop
/// then lingers reading the peer's leftovers after FIN (default 5000 ms). Returns 0 or a loop
/// error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_linger(lp: *mut ep_loop, ms: u32) -> c_int {
    with_loop!(lp, |boxed| {
        boxed
            .engine
            .set_linger(Duration::from_millis(u64::from(ms)));
        0
    })
}

/// The loop's epoll descriptor, for driving the loop from another event loop (asyncio, GLib,
/// libuv's uv_poll, a select() of your own) instead of ep_run(): whenever it is readable, or
/// ep_next_timeout() milliseconds have passed, call ep_run_once(loop, 0). The loop owns it: do
/// not read, close or change it. Returns the fd (>= 0) or a loop error (EP_ENULL, EP_ETHREAD,
/// EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_loop_fd(lp: *mut ep_loop) -> c_int {
    with_loop!(lp, |boxed| boxed.engine.poll_fd())
}

/// How long a host loop driving this loop through ep_loop_fd() may wait before the next
/// ep_run_once(loop, 0): 0 when work is pending without a descriptor event (a deferred pass, a
/// close to deliver, a post), otherwise the milliseconds until the nearest timer or deadline
/// (rounded up), or -1 when there is none (wait for the fd alone). Ask again after every step.
/// Returns that value or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_next_timeout(lp: *mut ep_loop) -> c_int {
    with_loop!(lp, |boxed| boxed.engine.next_timeout())
}

/// The library's version, "MAJOR.MINOR.PATCH" (static string). Compare its major number with
/// EP_VERSION_MAJOR to check that the header and the loaded library agree. Callable from any
/// thread.
#[no_mangle]
pub extern "C" fn ep_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(version) => version,
            Err(_) => panic!("the crate version contains NUL"),
        };
    VERSION.as_ptr()
}
