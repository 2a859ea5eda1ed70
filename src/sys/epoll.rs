//! epoll, and the eventfd that wakes it from other threads and signal handlers.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::raw::c_int;

use super::errno::{SysResult, EAGAIN};
use super::fd::{owned, Fd};

/// epoll event bits, as `u32` for the engine's bit arithmetic.
pub mod ev {
    pub const IN: u32 = libc::EPOLLIN as u32;
    pub const OUT: u32 = libc::EPOLLOUT as u32;
    pub const RDHUP: u32 = libc::EPOLLRDHUP as u32;
    pub const HUP: u32 = libc::EPOLLHUP as u32;
    pub const ERR: u32 = libc::EPOLLERR as u32;
    pub const ET: u32 = libc::EPOLLET as u32;
    /// Urgent (TCP out-of-band) data: watched in edge mode only (see Stream::wanted_interest).
    pub const PRI: u32 = libc::EPOLLPRI as u32;
}

const NO_EVENT: libc::epoll_event = libc::epoll_event { events: 0, u64: 0 };

/// The kernel's event buffer for `epoll_wait`, readable as (events, token) pairs. A wait asks
/// for at most `limit` events (the buffer's length or fewer).
pub struct EventBuf {
    raw: Vec<libc::epoll_event>,
    limit: usize,
}

impl EventBuf {
    pub fn with_capacity(capacity: usize) -> Self {
        EventBuf {
            raw: vec![NO_EVENT; capacity.max(1)],
            limit: capacity.max(1),
        }
    }
    /// The most events a wait returns.
    pub fn capacity(&self) -> usize {
        self.limit
    }
    /// Lets a wait return up to `capacity` events (used when a wait filled the buffer: load is
    /// high); the buffer grows if needed.
    pub fn grow(&mut self, capacity: usize) {
        if capacity > self.raw.len() {
            self.raw.resize(capacity, NO_EVENT);
        }
        self.limit = capacity.max(1);
    }
    /// Lets a wait return at most `capacity` events (at least one); the buffer keeps its size.
    pub fn limit_to(&mut self, capacity: usize) {
        self.limit = capacity.clamp(1, self.raw.len());
    }
    /// The i-th ready event as (event bits, token).
    pub fn get(&self, i: usize) -> (u32, u64) {
        let e = self.raw[i];
        (e.events, e.u64)
    }
}

pub fn epoll_create() -> SysResult<OwnedFd> {
    // SAFETY: epoll_create1 takes only flags.
    syscall!(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).map(owned)
}

fn epoll_ctl(epfd: Fd, op: c_int, fd: Fd, events: u32, token: u64) -> SysResult<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: `event` is a valid epoll_event living across the call; the kernel copies it.
    syscall!(unsafe { libc::epoll_ctl(epfd, op, fd, &mut event) }).map(drop)
}

pub fn epoll_add(epfd: Fd, fd: Fd, events: u32, token: u64) -> SysResult<()> {
    epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, events, token)
}

pub fn epoll_modify(epfd: Fd, fd: Fd, events: u32, token: u64) -> SysResult<()> {
    epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, events, token)
}

pub fn epoll_delete(epfd: Fd, fd: Fd) -> SysResult<()> {
    epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0)
}

/// Waits for events; EINTR is returned to the caller (a signal may mean "stop").
pub fn epoll_wait(epfd: Fd, buf: &mut EventBuf, timeout_ms: c_int) -> SysResult<usize> {
    let max = c_int::try_from(buf.limit.min(buf.raw.len())).unwrap_or(c_int::MAX);
    let events = buf.raw.as_mut_ptr();
    // SAFETY: `events` and `max` describe the start of buf.raw (max never exceeds its length),
    // which is writable and outlives the call.
    syscall!(unsafe { libc::epoll_wait(epfd, events, max, timeout_ms) }).map(|n| n as usize)
}

/// Adds one to the counter of the eventfd `fd` (for threads that hold only its number while its
/// owner keeps it open). Async-signal-safe: one write(2), no allocation, no locks.
pub fn eventfd_signal(fd: Fd) -> SysResult<()> {
    let one: u64 = 1;
    // SAFETY: `one` is 8 readable bytes, the size an eventfd write requires.
    match syscall!(unsafe { libc::write(fd, (&one as *const u64).cast(), 8) }) {
        // A saturated counter already means "wake up".
        Ok(_) | Err(EAGAIN) => Ok(()),
        Err(e) => Err(e),
    }
}

/// An eventfd that wakes the loop's epoll_wait: readable while its counter is non-zero.
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> SysResult<Waker> {
        // SAFETY: eventfd takes only an initial value and flags.
        let fd = syscall!(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        Ok(Waker { fd: owned(fd) })
    }

    /// Adds one to the counter. Async-signal-safe: one write(2), no allocation, no locks.
    pub fn wake(&self) -> SysResult<()> {
        eventfd_signal(self.fd.as_raw_fd())
    }

    /// Resets the counter to zero; EAGAIN (already zero) is fine.
    pub fn drain(&self) {
        let mut value: u64 = 0;
        let fd = self.fd.as_raw_fd();
        // SAFETY: `value` is 8 writable bytes, the size an eventfd read requires.
        let _ = syscall!(unsafe { libc::read(fd, (&mut value as *mut u64).cast(), 8) });
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> Fd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_returns_no_more_events_than_the_limit() {
        let epfd = epoll_create().unwrap();
        let wakers: Vec<Waker> = (0..5).map(|_| Waker::new().unwrap()).collect();
        for (token, waker) in wakers.iter().enumerate() {
            epoll_add(epfd.as_raw_fd(), waker.as_raw_fd(), ev::IN, token as u64).unwrap();
            waker.wake().unwrap();
        }
        let mut buf = EventBuf::with_capacity(8);
        buf.limit_to(2);
        assert_eq!(buf.capacity(), 2);
        assert_eq!(epoll_wait(epfd.as_raw_fd(), &mut buf, 0), Ok(2));
        buf.limit_to(0);
        assert_eq!(buf.capacity(), 1, "a wait always takes one event");
        assert_eq!(epoll_wait(epfd.as_raw_fd(), &mut buf, 0), Ok(1));
        buf.limit_to(100);
        assert_eq!(buf.capacity(), 8, "the limit never exceeds the buffer");
        assert_eq!(epoll_wait(epfd.as_raw_fd(), &mut buf, 0), Ok(5));
        buf.grow(16);
        assert_eq!((buf.capacity(), buf.raw.len()), (16, 16));
    }
}
