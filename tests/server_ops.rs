//! Server operations through the C ABI on real sockets: ep_post from other threads, ep_drain
//! (graceful shutdown with a grace period), ep_get_stats, EP_REUSEPORT across two loops in two
//! threads, and the TCP keepalive / user-timeout helpers.

mod common;

use common::*;
use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::ptr::null_mut;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

unsafe extern "C" fn noop_timer(_: *mut ep_loop, _: ep_id, _: *mut c_void) {}

/// A timer that keeps a loop alive without doing anything.
fn keepalive_timer(lp: *mut ep_loop) -> u64 {
    // SAFETY: live loop; the callback ignores its user pointer.
    let id = unsafe { ep_timer_start(lp, 60_000, 0, Some(noop_timer), null_mut()) };
    assert!(id > 0, "ep_timer_start: {id}");
    id as u64
}

fn stats(lp: *mut ep_loop) -> ep_stats {
    let mut s = ep_stats::default();
    // SAFETY: live loop, valid out pointer.
    let rc = unsafe { ep_get_stats(lp, &mut s, size_of::<ep_stats>()) };
    assert_eq!(rc, 0);
    s
}

// ---------------------------------------------------------------------------------------------
// ep_post

thread_local! {
    /// What posted callbacks ran on this thread, in order: (user word, thread).
    static POSTED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    static POST_RESULTS: RefCell<Vec<c_int>> = const { RefCell::new(Vec::new()) };
}

unsafe extern "C" fn record_post(_: *mut ep_loop, user: *mut c_void) {
    POSTED.with(|p| p.borrow_mut().push(user as usize));
}

unsafe extern "C" fn stop_post(lp: *mut ep_loop, _: *mut c_void) {
    // SAFETY: the loop running this callback is live.
    unsafe { ep_stop(lp) };
}

/// Records its word, then posts word - 1 until 0: a chain of posts made from posted callbacks.
unsafe extern "C" fn chain_post(lp: *mut ep_loop, user: *mut c_void) {
    let word = user as usize;
    POSTED.with(|p| p.borrow_mut().push(word));
    if word > 0 {
        // SAFETY: the loop running this callback is live.
        let r = unsafe { ep_post(lp, Some(chain_post), (word - 1) as *mut c_void) };
        POST_RESULTS.with(|p| p.borrow_mut().push(r));
    }
}

fn take_posted() -> Vec<usize> {
    POSTED.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

fn post(lp_addr: usize, cb: unsafe extern "C" fn(*mut ep_loop, *mut c_void), word: usize) -> c_int {
    // SAFETY: the loop outlives every posting thread (tests join them before freeing it).
    unsafe { ep_post(lp_addr as *mut ep_loop, Some(cb), word as *mut c_void) }
}

/// 10,000 posts from another thread while the loop runs: each runs exactly once, in posting
/// order, on the loop's thread (POSTED is thread-local to it), and ep_stop from the last one.
#[test]
fn posts_from_another_thread_run_once_in_order() {
    const N: usize = 10_000;
    take_posted();
    let lp = OwnedLoop::new();
    keepalive_timer(lp.0);
    let addr = lp.0 as usize;
    let poster = thread::spawn(move || {
        for i in 0..N {
            assert_eq!(post(addr, record_post, i), 0, "ep_post #{i}");
            if i % 1000 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(post(addr, stop_post, 0), 0);
    });
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_STOPPED);
    poster.join().expect("poster failed");
    let ran = take_posted();
    assert_eq!(ran.len(), N, "posts run");
    assert!(ran.iter().copied().eq(0..N), "posts ran out of order");
}

/// Two posting threads: every post runs exactly once, each thread's posts in its order.
#[test]
fn posts_from_two_threads_each_in_order() {
    const N: usize = 5_000;
    take_posted();
    let lp = OwnedLoop::new();
    keepalive_timer(lp.0);
    let addr = lp.0 as usize;
    let posters: Vec<_> = [0usize, 1_000_000]
        .into_iter()
        .map(|base| {
            thread::spawn(move || {
                for i in 0..N {
                    assert_eq!(post(addr, record_post, base + i), 0);
                }
            })
        })
        .collect();
    let stopper = thread::spawn(move || {
        for p in posters {
            p.join().expect("poster failed");
        }
        assert_eq!(post(addr, stop_post, 0), 0);
    });
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_STOPPED);
    stopper.join().expect("stopper failed");
    let ran = take_posted();
    assert_eq!(ran.len(), 2 * N);
    let a: Vec<usize> = ran.iter().copied().filter(|w| *w < 1_000_000).collect();
    let b: Vec<usize> = ran
        .iter()
        .copied()
        .filter(|w| *w >= 1_000_000)
        .map(|w| w - 1_000_000)
        .collect();
    assert!(
        a.iter().copied().eq(0..N),
        "thread A's posts out of order or missing"
    );
    assert!(
        b.iter().copied().eq(0..N),
        "thread B's posts out of order or missing"
    );
}

/// A post wakes a loop blocked in epoll_wait at once (its only other work is a timer a minute away).
#[test]
fn post_wakes_a_blocked_loop() {
    let lp = OwnedLoop::new();
    keepalive_timer(lp.0);
    let addr = lp.0 as usize;
    let poster = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        post(addr, stop_post, 0)
    });
    let started = Instant::now();
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_STOPPED);
    assert_eq!(poster.join().unwrap(), 0);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "post took {took:?} to wake the loop"
    );
}

/// Posts pending when the loop is freed run during ep_loop_free, in order, on the freeing thread.
#[test]
fn posts_pending_at_free_run_during_free() {
    take_posted();
    let lp = OwnedLoop::new();
    let addr = lp.0 as usize;
    thread::spawn(move || {
        for i in 0..100 {
            assert_eq!(post(addr, record_post, i), 0);
        }
    })
    .join()
    .unwrap();
    assert!(take_posted().is_empty(), "posts ran before the loop did");
    drop(lp);
    assert!(take_posted().into_iter().eq(0..100));
}

/// "Every successful post runs exactly once, even if the loop is then freed": also a post made by
/// a posted callback while ep_loop_free runs them (a chain of 5).
#[test]
fn posts_made_by_posts_during_free_still_run() {
    take_posted();
    POST_RESULTS.with(|p| p.borrow_mut().clear());
    let lp = OwnedLoop::new();
    assert_eq!(post(lp.0 as usize, chain_post, 5), 0);
    drop(lp);
    let results = POST_RESULTS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let ran = take_posted();
    let accepted = results.iter().filter(|r| **r == 0).count();
    assert_eq!(
        ran.len(),
        1 + accepted,
        "ep_post returned 0 {accepted} times from inside posts during free, but only {:?} ran \
         (results {results:?})",
        ran
    );
}

/// A post is work: a loop with nothing registered still runs it at its next step (ep_run_once
/// or ep_run), instead of answering EP_RUN_EMPTY with the post left pending.
#[test]
fn post_to_an_empty_loop_runs_at_the_next_step() {
    take_posted();
    let lp = OwnedLoop::new();
    assert_eq!(post(lp.0 as usize, record_post, 42), 0);
    // SAFETY: live loop, on its thread.
    let r = unsafe { ep_run_once(lp.0, 0) };
    assert_eq!(
        take_posted(),
        vec![42],
        "ep_run_once returned {r} without running the post"
    );
    assert_eq!(post(lp.0 as usize, record_post, 43), 0);
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_EMPTY);
    assert_eq!(
        take_posted(),
        vec![43],
        "ep_run returned without running the post"
    );
}

#[test]
fn post_argument_errors() {
    let lp = OwnedLoop::new();
    // SAFETY: NULL callback / NULL loop must be rejected.
    unsafe {
        assert_eq!(ep_post(lp.0, None, null_mut()), EP_ENULL);
        assert_eq!(ep_post(null_mut(), Some(record_post), null_mut()), EP_ENULL);
    }
}

// ---------------------------------------------------------------------------------------------
// ep_drain

/// Records the instant of every on_close.
fn close_times(h: &Harness) -> Rc<RefCell<Vec<(u64, Instant)>>> {
    let times = Rc::new(RefCell::new(Vec::new()));
    let t = times.clone();
    h.rec.set_hook(move |_, _, ev| {
        if let Event::Close { conn, .. } = *ev {
            t.borrow_mut().push((conn, Instant::now()));
        }
    });
    times
}

fn closed_at(times: &RefCell<Vec<(u64, Instant)>>, id: u64) -> Instant {
    times
        .borrow()
        .iter()
        .find(|(c, _)| *c == id)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no close time recorded for {id:#x}"))
}

fn drain(lp: *mut ep_loop, grace_ms: u32) -> c_int {
    // SAFETY: live loop.
    unsafe { ep_drain(lp, grace_ms) }
}

/// ep_drain(300): the listener closes at once (LOCAL; new connects refused); a connection whose
/// peer leaves within the grace keeps its own reason (PEER_EOF); one still open after the grace
/// is closed gracefully (LOCAL): its peer, reading late, gets all 4 MiB queued for it, then EOF.
/// ep_run then returns EP_RUN_EMPTY by itself.
#[test]
fn drain_closes_listeners_now_and_connections_after_the_grace() {
    let h = Harness::new();
    h.rec.set_keep_data(false);
    let times = close_times(&h);
    let (listener, port) = h.listen("127.0.0.1", 0);
    let quick = connect(port);
    let q = h.accept_for(&quick);
    let slow = connect(port);
    let s = h.accept_for(&slow);
    let chunk = pattern(7, 0, 1 << 20);
    let chunks = send_until_queued(h.lp, s, &chunk);

    let drained = Instant::now();
    assert_eq!(drain(h.lp, 300), 0);
    let refused = TcpStream::connect(("127.0.0.1", port));
    assert!(
        matches!(&refused, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        "connect after ep_drain: {refused:?}"
    );
    let quick_thread = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        drop(quick);
    });
    let slow_thread = thread::spawn(move || {
        let mut slow = slow;
        thread::sleep(Duration::from_millis(600));
        let r = read_to_eof(&mut slow)
            .map(|v| v.len() == chunks << 20 && v.chunks(1 << 20).all(|c| c == &chunk[..]));
        drop(slow);
        r.map_err(|(v, e)| format!("{} bytes then {e}", v.len()))
    });
    assert_eq!(
        run_bounded(h.lp, LIMIT),
        EP_RUN_EMPTY,
        "{}",
        h.rec.summary()
    );
    let ended = drained.elapsed();
    quick_thread.join().unwrap();
    assert_eq!(
        slow_thread.join().unwrap(),
        Ok(true),
        "the slow peer's bytes or EOF"
    );

    assert_eq!(h.rec.close_of(listener), Some((LOCAL, 0)));
    assert_eq!(
        h.rec.close_of(q),
        Some((PEER_EOF, 0)),
        "{}",
        h.rec.summary()
    );
    assert_eq!(h.rec.close_of(s), Some((LOCAL, 0)), "{}", h.rec.summary());
    assert!(closed_at(&times, listener) - drained < Duration::from_millis(100));
    let q_at = closed_at(&times, q) - drained;
    assert!(
        q_at < Duration::from_millis(300),
        "quick peer closed at {q_at:?}"
    );
    let s_at = closed_at(&times, s) - drained;
    assert!(
        s_at >= Duration::from_millis(300),
        "closed at {s_at:?}, inside the grace"
    );
    assert!(
        ended >= Duration::from_millis(600),
        "ep_run returned before the slow peer read"
    );
    let st = stats(h.lp);
    assert_eq!((st.open, st.lingering), (0, 0));
    h.finish();
}

/// A connection whose peer never reads cannot flush within the linger time after the grace: it
/// is reset (EP_CLOSE_TIMEOUT, ETIMEDOUT), and ep_run still returns EP_RUN_EMPTY.
#[test]
fn drain_resets_what_cannot_flush() {
    let h = Harness::new();
    let times = close_times(&h);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_set_linger(h.lp, 200) }, 0);
    let (_, port) = h.listen("127.0.0.1", 0);
    let stuck = connect(port);
    let c = h.accept_for(&stuck);
    send_until_queued(h.lp, c, &[0x55; 1 << 20]);
    let drained = Instant::now();
    assert_eq!(drain(h.lp, 100), 0);
    assert_eq!(
        run_bounded(h.lp, LIMIT),
        EP_RUN_EMPTY,
        "{}",
        h.rec.summary()
    );
    assert_eq!(
        h.rec.close_of(c),
        Some((TIMEOUT, libc::ETIMEDOUT)),
        "{}",
        h.rec.summary()
    );
    let at = closed_at(&times, c) - drained;
    assert!(
        at >= Duration::from_millis(300),
        "reset after {at:?}: grace 100 + linger 200"
    );
    let mut stuck = stuck;
    match read_to_eof(&mut stuck) {
        Err((_, e)) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        Ok(v) => panic!("peer saw a clean EOF after {} bytes; want a reset", v.len()),
    }
    h.finish();
}

/// Drain keeps pending timers: ep_run returns EP_RUN_EMPTY only after the last one fired; and
/// ep_drain may be called from a callback.
#[test]
fn drain_from_a_callback_waits_for_timers() {
    unsafe extern "C" fn drain_now(lp: *mut ep_loop, _: ep_id, user: *mut c_void) {
        // SAFETY: user is the test's Cell, alive while the loop runs.
        let result = unsafe { &*(user as *const Cell<c_int>) };
        result.set(drain(lp, 50));
    }
    unsafe extern "C" fn mark(_: *mut ep_loop, _: ep_id, user: *mut c_void) {
        // SAFETY: as above.
        let fired = unsafe { &*(user as *const Cell<Option<Instant>>) };
        fired.set(Some(Instant::now()));
    }
    let h = Harness::new();
    let (listener, _) = h.listen("127.0.0.1", 0);
    let drain_result = Cell::new(1);
    let late_fired: Cell<Option<Instant>> = Cell::new(None);
    let started = Instant::now();
    // SAFETY: live loop; both cells outlive the loop's run.
    unsafe {
        assert!(
            ep_timer_start(
                h.lp,
                20,
                0,
                Some(drain_now),
                &drain_result as *const _ as *mut c_void
            ) > 0
        );
        assert!(
            ep_timer_start(
                h.lp,
                400,
                0,
                Some(mark),
                &late_fired as *const _ as *mut c_void
            ) > 0
        );
    }
    assert_eq!(run_bounded(h.lp, LIMIT), EP_RUN_EMPTY);
    assert_eq!(drain_result.get(), 0, "ep_drain from a timer callback");
    assert_eq!(h.rec.close_of(listener), Some((LOCAL, 0)));
    let fired = late_fired.get().expect("the pending timer never fired");
    assert!(fired - started >= Duration::from_millis(400));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "ep_run left a pending timer"
    );
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// ep_get_stats

/// A known scenario, counted exactly: 4 accepts; 1000 bytes echoed; one close of each reason the
/// peer or the app can cause (PEER_EOF, PEER_RESET, LOCAL, ABORT); a graceful close lingering
/// until its peer leaves; a pending timer; then the listener closed.
#[test]
fn stats_count_a_known_scenario() {
    let h = Harness::new();
    h.rec.set_hook(echo);
    // SAFETY: NULL out must be rejected.
    let rc = unsafe { ep_get_stats(h.lp, null_mut(), size_of::<ep_stats>()) };
    assert_eq!(rc, EP_ENULL);
    let (listener, port) = h.listen("127.0.0.1", 0);
    let s0 = stats(h.lp);
    assert_eq!(
        (s0.open, s0.accepted, s0.bytes_in, s0.bytes_out),
        (1, 0, 0, 0)
    );

    let mut talker = connect(port);
    let t = h.accept_for(&talker);
    let msg = pattern(3, 0, 1000);
    talker.write_all(&msg).unwrap();
    let done = flag();
    let reader = spawn_exact_reader(&talker, 1000, done.clone());
    h.run_until("echo", |_| is_set(&done));
    assert_eq!(reader.join().unwrap().unwrap(), msg);
    drop(talker);
    assert_eq!(h.run_until_closed(t), (PEER_EOF, 0));

    let resetter = connect(port);
    let r = h.accept_for(&resetter);
    rst(resetter);
    assert_eq!(h.run_until_closed(r).0, PEER_RESET);

    let local = connect(port);
    let l = h.accept_for(&local);
    assert_eq!(close(h.lp, l), 0);
    assert_eq!(h.run_until_closed(l), (LOCAL, 0));

    let aborted = connect(port);
    let a = h.accept_for(&aborted);
    assert_eq!(abort(h.lp, a), 0);
    assert_eq!(h.run_until_closed(a), (ABORT, 0));
    let timer = keepalive_timer(h.lp);

    let s = stats(h.lp);
    assert_eq!(s.accepted, 4);
    assert_eq!(s.bytes_in, 1000);
    assert_eq!(s.bytes_out, 1000);
    assert_eq!(s.closes[..8], [0, 1, 1, 0, 1, 1, 0, 0], "closes by reason");
    assert_eq!(s.open, 1, "only the listener is open");
    assert_eq!(
        s.lingering, 1,
        "the LOCAL close lingers until its peer leaves"
    );
    assert_eq!(s.timers, 1);
    assert_eq!(s.accept_overloads, 0);

    drop(local);
    h.run_until("the linger to end", |_| stats(h.lp).lingering == 0);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_timer_cancel(h.lp, timer) }, 0);
    assert_eq!(close(h.lp, listener), 0);
    h.run_until_closed(listener);
    let s = stats(h.lp);
    assert_eq!(s.closes[..8], [0, 1, 1, 0, 2, 1, 0, 0]);
    assert_eq!((s.open, s.lingering, s.timers), (0, 0, 0));
    drop(aborted);
    h.finish();
}

/// An event fetched in the same epoll batch for a connection that an earlier callback of that
/// batch aborted is dropped and counted in stale_events.
#[test]
fn stats_count_stale_events() {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", 0);
    let mut c1 = connect(port);
    let a = h.accept_for(&c1);
    let mut c2 = connect(port);
    let b = h.accept_for(&c2);
    let aborted = Rc::new(Cell::new(0u64));
    {
        let aborted = aborted.clone();
        h.rec.set_hook(move |_, lp, ev| {
            if let Event::Data { conn, .. } = *ev {
                if aborted.get() == 0 {
                    let other = if conn == a { b } else { a };
                    assert_eq!(abort(lp, other), 0);
                    aborted.set(other);
                }
            }
        });
    }
    c1.write_all(b"1").unwrap();
    c2.write_all(b"2").unwrap();
    wait_delivered(&c1);
    wait_delivered(&c2);
    let before = stats(h.lp).stale_events;
    h.run_once(1000);
    let victim = aborted.get();
    assert_ne!(victim, 0, "no on_data in the batch");
    assert_eq!(
        h.rec.bytes(victim),
        0,
        "the aborted connection still got its data"
    );
    assert_eq!(stats(h.lp).stale_events - before, 1, "{}", h.rec.summary());
    h.run_until_closed(victim);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// EP_REUSEPORT

unsafe extern "C" fn count_accept(_: *mut ep_loop, _: ep_id, _: ep_id, user: *mut c_void) {
    // SAFETY: user is the serving thread's AtomicU32, alive while its loop runs.
    unsafe { &*(user as *const AtomicU32) }.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn echo_data(
    lp: *mut ep_loop,
    conn: ep_id,
    data: *const u8,
    len: usize,
    _: *mut c_void,
) {
    // SAFETY: the library lends `len` bytes at `data`; the loop is live.
    unsafe { ep_send(lp, conn, data as *const c_void, len) };
}

static COUNTING_ECHO: ep_callbacks = ep_callbacks {
    on_accept: Some(count_accept),
    on_data: Some(echo_data),
    on_writable: None,
    on_close: None,
};

/// A thread with its own loop listening with EP_REUSEPORT on `port` (0: pick one). Sends
/// (loop address, bound port) once listening, then runs until ep_stop, then frees its loop.
fn reuseport_server(
    port: u16,
    accepts: Arc<AtomicU32>,
    ready: mpsc::Sender<Result<(usize, u16), i64>>,
) -> thread::JoinHandle<i32> {
    thread::spawn(move || {
        let lp = OwnedLoop::new();
        let host = c"127.0.0.1";
        let user = Arc::as_ptr(&accepts) as *mut c_void;
        // SAFETY: live loop; static callbacks; `accepts` outlives the loop (freed below first).
        let id = unsafe {
            ep_listen(
                lp.0,
                host.as_ptr(),
                port,
                0,
                EP_REUSEPORT,
                &COUNTING_ECHO,
                user,
            )
        };
        if id <= 0 {
            ready.send(Err(id)).unwrap();
            return -1;
        }
        // SAFETY: live loop.
        let bound = unsafe { ep_local_port(lp.0, id as u64) } as u16;
        ready.send(Ok((lp.0 as usize, bound))).unwrap();
        let r = run_bounded(lp.0, LIMIT * 2);
        drop(lp);
        r
    })
}

/// Two loops in two threads listen on one port with EP_REUSEPORT; the kernel spreads 64
/// connections over both, and each one is served (echo). Without the flag the port is taken.
#[test]
fn reuseport_two_loops_share_a_port() {
    let (tx, rx) = mpsc::channel();
    let counts = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))];
    let first = reuseport_server(0, counts[0].clone(), tx.clone());
    let (lp1, port) = rx
        .recv_timeout(LIMIT)
        .unwrap()
        .expect("first EP_REUSEPORT listen");
    let second = reuseport_server(port, counts[1].clone(), tx);
    let (lp2, port2) = rx
        .recv_timeout(LIMIT)
        .unwrap()
        .expect("second EP_REUSEPORT listen on the same port");
    assert_eq!(port2, port);

    let h = Harness::new();
    let host = c"127.0.0.1";
    // SAFETY: live loop; static callbacks.
    let taken = unsafe { ep_listen(h.lp, host.as_ptr(), port, 0, 0, &CALLBACKS, h.user()) };
    assert_eq!(
        taken,
        -i64::from(libc::EADDRINUSE),
        "listen without EP_REUSEPORT on a shared port"
    );

    for i in 0..64u8 {
        let mut c = connect(port);
        c.write_all(&[i; 8]).unwrap();
        let mut back = [0u8; 8];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, [i; 8]);
    }
    for lp in [lp1, lp2] {
        // SAFETY: both loops are alive until their threads, joined below, free them.
        assert_eq!(unsafe { ep_stop(lp as *mut ep_loop) }, 0);
    }
    assert_eq!(first.join().unwrap(), EP_RUN_STOPPED);
    assert_eq!(second.join().unwrap(), EP_RUN_STOPPED);
    let (n1, n2) = (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    );
    println!("EP_REUSEPORT: loop 1 accepted {n1}, loop 2 accepted {n2}");
    assert_eq!(n1 + n2, 64);
    assert!(
        n1 > 0 && n2 > 0,
        "one loop got every connection: {n1} / {n2}"
    );
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// Keepalive and TCP_USER_TIMEOUT

fn getsockopt_int(fd: RawFd, level: c_int, opt: c_int) -> c_int {
    let mut v: c_int = -1;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            &mut v as *mut c_int as *mut c_void,
            &mut len,
        )
    };
    assert_eq!(
        r,
        0,
        "getsockopt({level}, {opt}): {}",
        std::io::Error::last_os_error()
    );
    v
}

fn set_keepalive(lp: *mut ep_loop, id: u64, idle: c_int, intvl: c_int, cnt: c_int) -> c_int {
    // SAFETY: live loop.
    unsafe { ep_set_keepalive(lp, id, idle, intvl, cnt) }
}

fn set_user_timeout(lp: *mut ep_loop, id: u64, ms: u32) -> c_int {
    // SAFETY: live loop.
    unsafe { ep_set_user_timeout(lp, id, ms) }
}

/// The helpers set what getsockopt on ep_fd() then reads back; a pipe is -ENOTSOCK.
#[test]
fn keepalive_and_user_timeout_are_visible_on_the_socket() {
    let h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", 0);
    let client = connect(port);
    let conn = h.accept_for(&client);
    // SAFETY: live loop.
    let fd = unsafe { ep_fd(h.lp, conn) };
    assert!(fd >= 0);

    assert_eq!(set_keepalive(h.lp, conn, 30, 5, 4), 0);
    assert_eq!(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
    assert_eq!(
        getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        30
    );
    assert_eq!(
        getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
        5
    );
    assert_eq!(getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 4);
    assert_eq!(
        set_keepalive(h.lp, conn, 0, 0, 0),
        0,
        "idle 0 turns keepalive off"
    );
    assert_eq!(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
    assert_eq!(set_keepalive(h.lp, conn, -1, 5, 4), -libc::EINVAL);

    assert_eq!(set_user_timeout(h.lp, conn, 1500), 0);
    assert_eq!(
        getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
        1500
    );
    assert_eq!(set_user_timeout(h.lp, conn, 0), 0);
    assert_eq!(
        getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
        0
    );

    let (rd, wr) = pipe();
    let pipe_id = h.register_ok(rd, 0);
    assert_eq!(set_keepalive(h.lp, pipe_id, 30, 5, 4), -libc::ENOTSOCK);
    assert_eq!(set_user_timeout(h.lp, pipe_id, 1000), -libc::ENOTSOCK);
    assert_eq!(
        set_keepalive(h.lp, listener, 30, 5, 4),
        EP_EKIND,
        "on a listener"
    );
    assert_eq!(
        set_user_timeout(h.lp, listener, 1000),
        EP_EKIND,
        "on a listener"
    );
    assert_eq!(set_keepalive(h.lp, 0x7777_0000_0042, 30, 5, 4), EP_ESTALE);
    assert_eq!(set_user_timeout(h.lp, 0x7777_0000_0042, 1000), EP_ESTALE);

    // The options do not disturb the connection.
    let mut client = client;
    h.rec.set_hook(echo);
    client.write_all(b"still fine").unwrap();
    let done = flag();
    let reader = spawn_exact_reader(&client, 10, done.clone());
    h.run_until("echo", |_| is_set(&done));
    assert_eq!(reader.join().unwrap().unwrap(), b"still fine");
    close_fd(wr);
    drop(client);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// c-examples/multi_loop.c

/// Builds c-examples/multi_loop.c with the Makefile's example flags into target/multi-loop-test/
/// (with its own libeploop.so.0 link, so it runs whether or not `make lib` made one).
fn build_multi_loop() -> std::path::PathBuf {
    use std::path::Path;
    use std::process::Command;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let libdir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let lib = libdir.join("libeploop.so");
    assert!(
        lib.exists(),
        "{} missing: run `make lib` first",
        lib.display()
    );
    let out = root.join("target/multi-loop-test");
    std::fs::create_dir_all(&out).unwrap();
    let soname = out.join("libeploop.so.0");
    let _ = std::fs::remove_file(&soname);
    std::os::unix::fs::symlink(&lib, &soname).unwrap();
    let exe = out.join("multi_loop");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-O2",
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-D_GNU_SOURCE",
        ])
        .arg(format!("-I{}", root.join("include").display()))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("c-examples/multi_loop.c"))
        .arg(format!("-L{}", libdir.display()))
        .arg("-leploop")
        .arg(format!("-Wl,-rpath,{}", out.display()))
        .status()
        .expect("running the C compiler (cc)");
    assert!(status.success(), "compiling c-examples/multi_loop.c failed");
    exe
}

/// The multi-loop example: `listening <port>` once, 40 echo clients served, one accept and one
/// close line per connection with unique ids (numbered process-wide), and SIGINT stops every
/// loop: open connections are logged `loop_freed`, exit status 0.
#[test]
fn multi_loop_example_echoes_logs_and_stops_on_sigint() {
    use std::collections::BTreeMap;
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let exe = build_multi_loop();
    let mut child = Command::new(&exe)
        .args(["0", "--threads", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting multi_loop");
    let pid = child.id() as libc::pid_t;
    // Kill it if the test fails before it exits.
    struct Reaper(libc::pid_t, bool);
    impl Drop for Reaper {
        fn drop(&mut self) {
            if !self.1 {
                // SAFETY: our own child's pid, not yet reaped.
                unsafe { libc::kill(self.0, libc::SIGKILL) };
            }
        }
    }
    let mut reaper = Reaper(pid, false);
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(LIMIT).expect("no listening line");
    let port: u16 = first
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("first line {first:?}"));
    let mut kept = Vec::new();
    for i in 0..40u8 {
        let mut c = connect(port);
        c.write_all(&[i; 100]).unwrap();
        let mut back = [0u8; 100];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, [i; 100]);
        if i % 2 == 0 {
            kept.push(c);
        }
    }
    thread::sleep(Duration::from_millis(200));
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "multi_loop did not exit after SIGINT"
        );
        thread::sleep(Duration::from_millis(10));
    };
    reaper.1 = true;
    assert_eq!(status.code(), Some(0), "exit status");
    let lines: Vec<String> = rx.try_iter().collect();
    let mut accepts = BTreeMap::new();
    let mut closes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in &lines {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "accept" => assert!(
                accepts.insert(f[1].to_string(), f[2].to_string()).is_none(),
                "id reused: {line}"
            ),
            "close" => closes
                .entry(f[1].to_string())
                .or_default()
                .push(f[2..].join(" ")),
            "listening" => panic!("second listening line: {line}"),
            _ => {}
        }
    }
    assert_eq!(accepts.len(), 40, "accept lines:\n{}", lines.join("\n"));
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for id in accepts.keys() {
        let c = closes
            .get(id)
            .unwrap_or_else(|| panic!("no close line for {id}"));
        assert_eq!(c.len(), 1, "close lines for {id}: {c:?}");
        *reasons.entry(c[0].clone()).or_default() += 1;
    }
    assert_eq!(closes.len(), 40, "close lines for unknown ids");
    assert_eq!(reasons.get("peer_eof 0"), Some(&20), "{reasons:?}");
    assert_eq!(reasons.get("loop_freed 0"), Some(&20), "{reasons:?}");
    drop(kept);
}
