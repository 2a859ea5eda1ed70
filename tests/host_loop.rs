//! Driving a loop from another event loop: poll() on ep_loop_fd() with ep_next_timeout() as the
//! bound, then ep_run_once(loop, 0) — the way asyncio, GLib or libuv's uv_poll would host it.

mod common;

use common::*;
use std::cell::Cell;
use std::ffi::c_void;
use std::io::{Read, Write};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

thread_local! {
    static FIRED: Cell<Option<Instant>> = const { Cell::new(None) };
}

unsafe extern "C" fn fire(_lp: *mut ep_loop, _t: u64, _u: *mut c_void) {
    FIRED.with(|f| f.set(Some(Instant::now())));
}

/// One turn of the host loop: wait for the fd or the timeout, then one non-blocking step.
fn host_turn(lp: *mut ep_loop) {
    // SAFETY: live loop on this thread.
    let (fd, timeout) = unsafe { (ep_loop_fd(lp), ep_next_timeout(lp)) };
    assert!(fd >= 0 && timeout >= -1);
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // Bound each wait so a broken timeout cannot hang the test.
    let bound = if timeout < 0 { 200 } else { timeout.min(200) };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, bound) };
    // SAFETY: live loop on this thread.
    let rc = unsafe { ep_run_once(lp, 0) };
    assert!(rc >= 0, "ep_run_once: {}", strerror(rc));
}

#[test]
fn a_host_loop_drives_connections_and_timers() {
    let h = Harness::new();
    h.rec.set_hook(echo);
    // SAFETY: live loop.
    let next = unsafe { ep_next_timeout(h.lp) };
    assert_eq!(next, -1, "nothing pending: no deadline");
    let (_listener, port) = h.listen("127.0.0.1", 0);
    let started = Instant::now();
    // SAFETY: live loop, valid callback.
    let timer = unsafe { ep_timer_start(h.lp, 150, 0, Some(fire), null_mut()) };
    assert!(timer > 0);
    // SAFETY: live loop.
    let next = unsafe { ep_next_timeout(h.lp) };
    assert!(
        (100..=150).contains(&next),
        "the timer's deadline: {next} ms"
    );

    let mut client = connect(port);
    client.write_all(b"through the host loop").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while got.len() < 21 || FIRED.with(Cell::get).is_none() {
        assert!(Instant::now() < deadline, "host loop made no progress");
        host_turn(h.lp);
        let mut buf = [0u8; 64];
        if let Ok(n) = client.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(got, b"through the host loop");
    let fired = FIRED.with(Cell::get).unwrap() - started;
    assert!(
        fired >= Duration::from_millis(150),
        "the timer fired early: {fired:?}"
    );
    assert!(
        fired < Duration::from_secs(2),
        "the timer fired late: {fired:?}"
    );
    drop(client);
    h.finish();
}

#[test]
fn loop_fd_and_next_timeout_codes() {
    // SAFETY: NULL is refused.
    unsafe {
        assert_eq!(ep_loop_fd(null_mut()), EP_ENULL);
        assert_eq!(ep_next_timeout(null_mut()), EP_ENULL);
    }
}
