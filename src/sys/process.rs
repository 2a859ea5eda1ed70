//! The process and its threads: errno for C callers, fork notification, thread identity.

use super::errno::Errno;

/// Sets the calling thread's errno (for C functions that report failure through it).
pub fn set_errno(errno: Errno) {
    // SAFETY: __errno_location returns the calling thread's errno slot, valid for the thread's life.
    unsafe { *libc::__errno_location() = errno };
}

/// Runs `child` in the child process right after every fork() from now on (pthread_atfork). The
/// handler must be async-signal-safe.
pub fn on_fork_in_child(child: extern "C" fn()) {
    // SAFETY: registers a plain function pointer with no prepare/parent handlers; it fails only
    // with ENOMEM, and then forks go unnoticed (best effort: the caller has no better fallback).
    let _ = unsafe { libc::pthread_atfork(None, None, Some(child)) };
}

/// A number that identifies the calling thread among the live threads of the process (its
/// pthread_t: one load from the thread pointer, no system call, unlike gettid).
pub fn thread_token() -> usize {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    unsafe { libc::pthread_self() as usize }
}
