//! Keeping a write's SIGPIPE from reaching the process, for descriptors that are not sockets
//! (sockets use MSG_NOSIGNAL instead).

use std::mem::MaybeUninit;

/// An empty signal set.
fn empty_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set it is given, which cannot fail.
    unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    // SAFETY: initialised by sigemptyset just above.
    unsafe { set.assume_init() }
}

/// Blocks SIGPIPE in the calling thread until dropped (then restores the old mask).
pub(super) struct SigpipeGuard {
    old_mask: libc::sigset_t,
    was_pending: bool,
    pipe_set: libc::sigset_t,
}

impl SigpipeGuard {
    pub(super) fn block() -> Self {
        let mut pipe_set = empty_set();
        // SAFETY: `pipe_set` is an initialised, writable set and SIGPIPE a valid signal.
        unsafe { libc::sigaddset(&mut pipe_set, libc::SIGPIPE) };
        let mut pending = empty_set();
        // SAFETY: `pending` is an initialised, writable set.
        unsafe { libc::sigpending(&mut pending) };
        // SAFETY: `pending` is an initialised set.
        let was_pending = unsafe { libc::sigismember(&pending, libc::SIGPIPE) } == 1;
        let mut old_mask = empty_set();
        // SAFETY: both sets are initialised; `old_mask` is writable.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &pipe_set, &mut old_mask) };
        SigpipeGuard {
            old_mask,
            was_pending,
            pipe_set,
        }
    }

    /// Swallows the SIGPIPE this thread's failed write raised, unless one was already pending.
    pub(super) fn consume_pending(&self) {
        if self.was_pending {
            return;
        }
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `pipe_set` is initialised; a NULL info is allowed; a zero timeout polls.
        unsafe { libc::sigtimedwait(&self.pipe_set, std::ptr::null_mut(), &zero) };
    }
}

impl Drop for SigpipeGuard {
    fn drop(&mut self) {
        // SAFETY: `old_mask` was filled by pthread_sigmask in block(); the old mask is not wanted.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}
