//! ep_post's wakeups: a burst of posts made while the loop is busy is one write to the loop's
//! eventfd (as libuv's uv_async_send coalesces), and no post is ever left without a wakeup.
//! Its own test binary: the loop's eventfd is found among the process's descriptors, and the
//! eventfd counter read from /proc/self/fdinfo (the number of wakeups not yet drained).

mod common;

use common::*;
use std::cell::RefCell;
use std::ffi::c_void;
use std::fs;
use std::os::fd::RawFd;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

thread_local! {
    static RAN: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}
static RAN_COUNT: AtomicUsize = AtomicUsize::new(0);
/// The tests run one at a time: the first finds its loop's eventfd among the process's.
static SERIAL: Mutex<()> = Mutex::new(());
static PENDING_WAKEUPS: AtomicU64 = AtomicU64::new(u64::MAX);
static EVENTFD: AtomicUsize = AtomicUsize::new(usize::MAX);

unsafe extern "C" fn record(_: *mut ep_loop, user: *mut c_void) {
    RAN.with(|r| r.borrow_mut().push(user as usize));
    RAN_COUNT.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn stop(lp: *mut ep_loop, _: *mut c_void) {
    // SAFETY: the loop running this callback is live.
    unsafe { ep_stop(lp) };
}

unsafe extern "C" fn noop_timer(_: *mut ep_loop, _: ep_id, _: *mut c_void) {}

fn eventfds() -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let target = fs::read_link(e.path()).ok()?;
            (target.to_str()? == "anon_inode:[eventfd]")
                .then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// The eventfd's counter: wakeups written and not drained yet.
fn eventfd_count(fd: RawFd) -> u64 {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("eventfd-count:"))
        .expect("an eventfd's fdinfo has eventfd-count");
    u64::from_str_radix(line.trim(), 16).expect("hex count")
}

/// The loop's wakeup eventfd: the one ep_loop_new made.
fn new_loop_and_its_eventfd() -> (OwnedLoop, RawFd) {
    let before = eventfds();
    let lp = OwnedLoop::new();
    let added: Vec<RawFd> = eventfds()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect();
    assert_eq!(added.len(), 1, "ep_loop_new made one eventfd: {added:?}");
    (lp, added[0])
}

fn post(addr: usize, cb: unsafe extern "C" fn(*mut ep_loop, *mut c_void), word: usize) {
    // SAFETY: the loop outlives the posting threads (joined before it is freed).
    let rc = unsafe { ep_post(addr as *mut ep_loop, Some(cb), word as *mut c_void) };
    assert_eq!(rc, 0, "ep_post");
}

/// Holds the loop inside a timer callback while another thread posts: the poster passes the
/// first barrier once the loop is busy, the second once it has posted everything.
unsafe extern "C" fn busy_timer(_: *mut ep_loop, _: ep_id, user: *mut c_void) {
    // SAFETY: `user` is the test's Barrier pair, alive until the loop has run.
    let barriers = unsafe { &*(user as *const (Barrier, Barrier)) };
    barriers.0.wait();
    barriers.1.wait();
    PENDING_WAKEUPS.store(
        eventfd_count(EVENTFD.load(Ordering::SeqCst) as RawFd),
        Ordering::SeqCst,
    );
}

/// 1,000 posts while the loop is inside a callback: one eventfd write, not 1,000; then every
/// post runs once, in order.
#[test]
fn a_burst_of_posts_while_the_loop_is_busy_is_one_wakeup() {
    const N: usize = 1_000;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (lp, efd) = new_loop_and_its_eventfd();
    EVENTFD.store(efd as usize, Ordering::SeqCst);
    let barriers = Arc::new((Barrier::new(2), Barrier::new(2)));
    // SAFETY: live loop; the barriers outlive the run (the Arc is held until the end).
    let timer = unsafe {
        ep_timer_start(
            lp.0,
            0,
            0,
            Some(busy_timer),
            Arc::as_ptr(&barriers) as *mut c_void,
        )
    };
    assert!(timer > 0);
    // SAFETY: live loop (a timer that keeps it running until the last post stops it).
    let keep = unsafe { ep_timer_start(lp.0, 60_000, 0, Some(noop_timer), null_mut()) };
    assert!(keep > 0);
    let addr = lp.0 as usize;
    let b = Arc::clone(&barriers);
    let poster = thread::spawn(move || {
        b.0.wait();
        for i in 0..N {
            post(addr, record, i);
        }
        post(addr, stop, 0);
        b.1.wait();
    });
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_STOPPED);
    poster.join().expect("poster");
    assert_eq!(
        PENDING_WAKEUPS.load(Ordering::SeqCst),
        1,
        "eventfd writes for a burst of {} posts",
        N + 1
    );
    let ran = RAN.with(|r| std::mem::take(&mut *r.borrow_mut()));
    assert!(
        ran.iter().copied().eq(0..N),
        "every post once, in order ({} ran)",
        ran.len()
    );
    drop(barriers);
}

/// Posts one at a time, each after the last one ran: every post must wake the loop (a lost
/// wakeup leaves the loop asleep and the watchdog fails the run).
#[test]
fn posts_one_at_a_time_each_wake_the_loop() {
    const N: usize = 2_000;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let lp = OwnedLoop::new();
    // SAFETY: live loop.
    let keep = unsafe { ep_timer_start(lp.0, 60_000, 0, Some(noop_timer), null_mut()) };
    assert!(keep > 0);
    let addr = lp.0 as usize;
    let start = RAN_COUNT.load(Ordering::SeqCst);
    let poster = thread::spawn(move || {
        for i in 0..N {
            post(addr, record, i);
            while RAN_COUNT.load(Ordering::SeqCst) < start + i + 1 {
                thread::yield_now();
            }
        }
        post(addr, stop, 0);
    });
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_STOPPED);
    poster.join().expect("poster");
    assert_eq!(RAN_COUNT.load(Ordering::SeqCst) - start, N);
}
