//! Signals as loop callbacks (ep_signal_start / ep_signal_stop) on real signals. Most tests send
//! the signal to their own thread with pthread_kill: the test binary runs tests on several
//! threads that do not block the signals, so a process-directed kill() could land on another
//! thread and end the process. The process-directed case runs in a forked child, whose only
//! thread is the loop's.

mod common;

use common::*;
use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

/// What the signal callbacks saw: (handle id, signo), in call order.
#[derive(Default)]
struct Seen {
    calls: RefCell<Vec<(u64, c_int)>>,
    /// A handle to stop from the next callback.
    stop_next: RefCell<Option<u64>>,
}

unsafe extern "C" fn on_signal(lp: *mut ep_loop, id: ep_id, signo: c_int, user: *mut c_void) {
    // SAFETY: every handle of these tests has a live `Seen` as its user pointer.
    let seen = unsafe { &*(user as *const Seen) };
    seen.calls.borrow_mut().push((id, signo));
    if let Some(other) = seen.stop_next.borrow_mut().take() {
        // SAFETY: live loop, called from its callback.
        assert_eq!(unsafe { ep_signal_stop(lp, other) }, 0);
    }
}

fn start(lp: *mut ep_loop, signo: c_int, flags: u32, seen: &Seen) -> u64 {
    // SAFETY: live loop; `seen` outlives the handle (each test stops it or frees the loop first).
    let id = unsafe {
        ep_signal_start(
            lp,
            signo,
            flags,
            Some(on_signal),
            seen as *const Seen as *mut c_void,
        )
    };
    assert!(id > 0, "ep_signal_start({signo}): {}", strerror(id as i32));
    id as u64
}

fn raise_in_this_thread(signo: c_int) {
    // SAFETY: sends a signal to the calling thread, which blocks it (a handle watches it).
    let rc = unsafe { libc::pthread_kill(libc::pthread_self(), signo) };
    assert_eq!(rc, 0);
}

fn blocked_here(signo: c_int) -> bool {
    // SAFETY: queries the calling thread's mask into a zeroed sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set),
            0
        );
        libc::sigismember(&set, signo) == 1
    }
}

/// Runs steps until `done` or the time limit.
fn run_until(lp: *mut ep_loop, what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        // SAFETY: live loop, not inside a callback.
        let rc = unsafe { ep_run_once(lp, 50) };
        assert!(rc >= 0, "ep_run_once: {}", strerror(rc));
    }
}

#[test]
fn a_signal_is_an_ordinary_callback_with_its_id_and_number() {
    let lp = OwnedLoop::new();
    let seen = Seen::default();
    assert!(!blocked_here(libc::SIGUSR1));
    let id = start(lp.0, libc::SIGUSR1, 0, &seen);
    assert!(
        blocked_here(libc::SIGUSR1),
        "the loop's thread blocks a watched signal"
    );
    raise_in_this_thread(libc::SIGUSR1);
    run_until(lp.0, "the callback", || !seen.calls.borrow().is_empty());
    assert_eq!(*seen.calls.borrow(), vec![(id, libc::SIGUSR1)]);
    // Another delivery, another call.
    raise_in_this_thread(libc::SIGUSR1);
    run_until(lp.0, "the second call", || seen.calls.borrow().len() == 2);
    // SAFETY: live loop.
    unsafe {
        assert_eq!(ep_signal_stop(lp.0, id), 0);
        assert_eq!(ep_signal_stop(lp.0, id), EP_ESTALE);
    }
    assert!(
        !blocked_here(libc::SIGUSR1),
        "stopping the last handle restores the mask"
    );
}

#[test]
fn several_signals_and_handles_each_called_in_start_order() {
    let lp = OwnedLoop::new();
    let seen = Seen::default();
    let first = start(lp.0, libc::SIGUSR1, 0, &seen);
    let second = start(lp.0, libc::SIGUSR1, 0, &seen);
    let other = start(lp.0, libc::SIGUSR2, 0, &seen);
    raise_in_this_thread(libc::SIGUSR2);
    raise_in_this_thread(libc::SIGUSR1);
    run_until(lp.0, "three calls", || seen.calls.borrow().len() == 3);
    let mut calls = seen.calls.borrow().clone();
    calls.sort_by_key(|&(_, signo)| signo);
    let usr1: Vec<_> = calls.iter().filter(|c| c.1 == libc::SIGUSR1).collect();
    assert_eq!(
        usr1,
        vec![&(first, libc::SIGUSR1), &(second, libc::SIGUSR1)]
    );
    assert!(calls.contains(&(other, libc::SIGUSR2)));

    // A handle stopped by the callback of an earlier handle of the same delivery is not called.
    seen.calls.borrow_mut().clear();
    *seen.stop_next.borrow_mut() = Some(second);
    raise_in_this_thread(libc::SIGUSR1);
    run_until(lp.0, "the first handle", || !seen.calls.borrow().is_empty());
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_run_once(lp.0, 20) }, EP_RUN_MORE);
    assert_eq!(*seen.calls.borrow(), vec![(first, libc::SIGUSR1)]);
    assert!(blocked_here(libc::SIGUSR1), "SIGUSR1 still has a handle");
    // SAFETY: live loop.
    unsafe {
        assert_eq!(ep_signal_stop(lp.0, first), 0);
        assert!(!blocked_here(libc::SIGUSR1));
        assert!(blocked_here(libc::SIGUSR2));
        assert_eq!(ep_signal_stop(lp.0, other), 0);
    }
    assert!(!blocked_here(libc::SIGUSR2));
}

#[test]
fn a_handle_keeps_the_loop_running_unless_unref() {
    let lp = OwnedLoop::new();
    let seen = Seen::default();
    let unref = start(lp.0, libc::SIGUSR1, EP_UNREF, &seen);
    // SAFETY: live loop.
    let rc = unsafe { ep_run(lp.0) };
    assert_eq!(rc, EP_RUN_EMPTY, "an EP_UNREF handle keeps nothing alive");
    let kept = start(lp.0, libc::SIGUSR2, 0, &seen);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_run_once(lp.0, 0) }, EP_RUN_MORE);
    // The loop runs until the signal's callback stops the handle.
    *seen.stop_next.borrow_mut() = Some(kept);
    raise_in_this_thread(libc::SIGUSR2);
    let began = Instant::now();
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_run(lp.0) }, EP_RUN_EMPTY);
    assert!(began.elapsed() < LIMIT);
    assert_eq!(*seen.calls.borrow(), vec![(kept, libc::SIGUSR2)]);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_signal_stop(lp.0, unref) }, 0);
}

#[test]
fn stopping_restores_a_mask_that_blocked_the_signal_already() {
    let lp = OwnedLoop::new();
    let seen = Seen::default();
    let set = {
        // SAFETY: a zeroed sigset_t initialised by sigemptyset/sigaddset.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGWINCH);
            set
        }
    };
    // SAFETY: changes this test thread's mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, null_mut()) };
    let id = start(lp.0, libc::SIGWINCH, 0, &seen);
    raise_in_this_thread(libc::SIGWINCH);
    run_until(lp.0, "the callback", || !seen.calls.borrow().is_empty());
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_signal_stop(lp.0, id) }, 0);
    assert!(
        blocked_here(libc::SIGWINCH),
        "the program's own block stays"
    );
    // SAFETY: as above.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, null_mut()) };
}

#[test]
fn freeing_the_loop_stops_its_handles_and_restores_the_mask() {
    let seen = Seen::default();
    let lp = ep_loop_new();
    start(lp, libc::SIGUSR2, 0, &seen);
    start(lp, libc::SIGURG, EP_UNREF, &seen);
    assert!(blocked_here(libc::SIGUSR2) && blocked_here(libc::SIGURG));
    // SAFETY: live loop, freed once.
    unsafe { ep_loop_free(lp) };
    assert!(!blocked_here(libc::SIGUSR2) && !blocked_here(libc::SIGURG));
    assert!(seen.calls.borrow().is_empty());
}

#[test]
fn misuse_is_refused_with_documented_codes() {
    let lp = OwnedLoop::new();
    let seen = Seen::default();
    let user = &seen as *const Seen as *mut c_void;
    // SAFETY: live loop; the refused calls register nothing.
    unsafe {
        for signo in [0, -1, libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV, 32, 200] {
            let rc = ep_signal_start(lp.0, signo, 0, Some(on_signal), user);
            assert_eq!(rc, -i64::from(libc::EINVAL), "signal {signo}");
        }
        let rc = ep_signal_start(lp.0, libc::SIGUSR1, EP_EDGE, Some(on_signal), user);
        assert_eq!(rc, -i64::from(libc::EINVAL), "a flag other than EP_UNREF");
        assert_eq!(
            ep_signal_start(lp.0, libc::SIGUSR1, 0, None, user),
            i64::from(EP_ENULL)
        );
        assert_eq!(
            ep_signal_start(null_mut(), libc::SIGUSR1, 0, Some(on_signal), user),
            i64::from(EP_ENULL)
        );
        assert!(
            !blocked_here(libc::SIGUSR1),
            "a refused start changes no mask"
        );
        let id = start(lp.0, libc::SIGUSR1, 0, &seen);
        assert_eq!(ep_close(lp.0, id), EP_EKIND);
        assert_eq!(ep_timer_cancel(lp.0, id), EP_EKIND);
        assert_eq!(ep_get_user(lp.0, id), user);
        let timer = ep_timer_start(lp.0, 10_000, 0, Some(noop_timer), null_mut());
        assert_eq!(ep_signal_stop(lp.0, timer as u64), EP_EKIND);
        assert_eq!(ep_signal_stop(lp.0, 12345), EP_ESTALE);
        assert_eq!(ep_signal_stop(lp.0, id), 0);
    }
}

unsafe extern "C" fn noop_timer(_lp: *mut ep_loop, _id: ep_id, _user: *mut c_void) {}

#[test]
fn a_pending_delivery_is_discarded_when_the_last_handle_stops() {
    // SIGUSR1's default action ends the process: were the delivery handed on at unblocking,
    // this test binary would die.
    let lp = OwnedLoop::new();
    let seen = Seen::default();
    let id = start(lp.0, libc::SIGUSR1, 0, &seen);
    raise_in_this_thread(libc::SIGUSR1);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_signal_stop(lp.0, id) }, 0);
    assert!(!blocked_here(libc::SIGUSR1));
    assert!(seen.calls.borrow().is_empty());
}

#[test]
fn each_loop_gets_the_signals_sent_to_its_thread() {
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let lp = OwnedLoop::new();
                let seen = Seen::default();
                let id = start(lp.0, libc::SIGUSR2, 0, &seen);
                raise_in_this_thread(libc::SIGUSR2);
                run_until(lp.0, "this thread's signal", || {
                    !seen.calls.borrow().is_empty()
                });
                // SAFETY: live loop.
                assert_eq!(unsafe { ep_run_once(lp.0, 20) }, EP_RUN_MORE);
                let calls = seen.calls.borrow().clone();
                assert_eq!(calls, vec![(id, libc::SIGUSR2)]);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a loop thread failed");
    }
}

#[test]
fn a_process_directed_signal_reaches_the_loop_when_no_thread_takes_it() {
    // In a child, whose one thread runs the loop: kill(getpid()) and Ctrl-C-like delivery.
    // SAFETY: the child only runs the loop and calls _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(|| {
            let lp = OwnedLoop::new();
            let seen = Seen::default();
            let term = start(lp.0, libc::SIGTERM, 0, &seen);
            let int = start(lp.0, libc::SIGINT, EP_UNREF, &seen);
            // SAFETY: signals to this process, whose one thread blocks them.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGTERM);
                libc::kill(libc::getpid(), libc::SIGINT);
            }
            run_until(lp.0, "both signals", || seen.calls.borrow().len() == 2);
            let mut calls = seen.calls.borrow().clone();
            calls.sort();
            let mut want = vec![(term, libc::SIGTERM), (int, libc::SIGINT)];
            want.sort();
            i32::from(calls != want)
        })
        .unwrap_or(2);
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let began = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, without blocking.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            break;
        }
        if began.elapsed() > LIMIT {
            // SAFETY: ends our own child, by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the child did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}: the loop did not see both signals"
    );
}
