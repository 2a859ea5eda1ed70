//! The part of a loop another thread or a signal handler may touch: the stop flag, the wakeup
//! eventfd, and the queue of posted values.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::Error;
use crate::sys;

/// The part of a loop another thread or a signal handler may touch.
pub struct Remote<P> {
    stop: AtomicBool,
    pub(super) wake_fd: sys::Waker,
    /// Values posted and not run yet; None once the loop is being freed (posting is over).
    posted: Mutex<Option<Vec<P>>>,
    /// Set after a post is queued, cleared before the queue is taken: lets the loop ask "anything
    /// posted?" every step without taking the lock, and makes a burst of posts one wakeup (the
    /// post that sets it wakes the loop; the ones that find it set leave their value to the take
    /// that clears it).
    has_posts: AtomicBool,
}

impl<P> Remote<P> {
    /// Requests the loop to return from ep_run / ep_run_once. Async-signal-safe.
    pub fn stop(&self) -> Result<(), Error> {
        self.stop.store(true, Ordering::SeqCst);
        self.wake_fd.wake().map_err(Error::Os)
    }

    /// Hands `posted` to the loop's thread and wakes it. Callable from any thread. Fails with
    /// Busy once the loop is being freed: every accepted post is run exactly once.
    ///
    /// One eventfd write per burst, as libuv's uv_async_send coalesces: a post that finds
    /// `has_posts` already set makes no system call. The loop clears the flag after draining the
    /// eventfd and before it takes the queue (take_posted), so a value pushed before the flag was
    /// seen set is in that take, and a post after the clear sets the flag again and wakes it.
    pub fn post(&self, posted: P) -> Result<(), Error> {
        match self.lock_posted().as_mut() {
            Some(queue) => queue.push(posted),
            None => return Err(Error::Busy),
        }
        if self.has_posts.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.wake_fd.wake().map_err(Error::Os)
    }

    fn lock_posted(&self) -> std::sync::MutexGuard<'_, Option<Vec<P>>> {
        self.posted
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes what was posted; `last` also ends posting (the loop is being freed).
    pub(super) fn take_posted(&self, last: bool) -> Vec<P> {
        if !last && !self.has_posts.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut guard = self.lock_posted();
        if last {
            guard.take().unwrap_or_default()
        } else {
            guard.as_mut().map(std::mem::take).unwrap_or_default()
        }
    }

    pub(super) fn has_posted(&self) -> bool {
        self.has_posts.load(Ordering::Acquire)
    }
}

impl<P> Remote<P> {
    pub(super) fn new(wake_fd: sys::Waker) -> Self {
        Remote {
            stop: AtomicBool::new(false),
            wake_fd,
            posted: Mutex::new(Some(Vec::new())),
            has_posts: AtomicBool::new(false),
        }
    }

    /// Takes a pending stop request. (Read first: twice a step, a plain load instead of a
    /// locked exchange while no stop is asked for.)
    #[inline(always)]
    pub(super) fn take_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed) && self.stop.swap(false, Ordering::SeqCst)
    }
}
