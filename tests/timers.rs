//! Timers and idle timeouts, through the C ABI on real sockets: one-shot and repeating timers,
//! cancellation from any callback, creation order for equal deadlines, accuracy while the loop is
//! saturated with I/O (printed, so the numbers can be quoted), and the per-connection and
//! per-listener inactivity timeout that ends a silent peer with EP_CLOSE_TIMEOUT.

mod common;

use common::*;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::io::{ErrorKind, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The load test measures time: it must not share the CPU with the other timing tests.
static TIMING: Mutex<()> = Mutex::new(());

fn timing_lock() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Timers as Rust closures: the timer's user pointer is a `TimerFn` the test keeps alive.

type TimerFn = RefCell<Box<dyn FnMut(*mut ep_loop, u64)>>;

thread_local! {
    static CALLBACK_PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

unsafe extern "C" fn run_timer_fn(lp: *mut ep_loop, timer: ep_id, user: *mut c_void) {
    // SAFETY: every timer started by `start_timer` carries a TimerFn that outlives it.
    let f = unsafe { &*(user as *const TimerFn) };
    let result = catch_unwind(AssertUnwindSafe(|| (f.borrow_mut())(lp, timer)));
    if let Err(panic) = result {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        CALLBACK_PANICS.with(|p| p.borrow_mut().push(msg));
    }
}

fn timer_fn(f: impl FnMut(*mut ep_loop, u64) + 'static) -> Box<TimerFn> {
    Box::new(RefCell::new(Box::new(f)))
}

fn try_start_timer(lp: *mut ep_loop, timeout_ms: u64, repeat_ms: u64, f: &TimerFn) -> i64 {
    // SAFETY: live loop (or NULL, rejected); the TimerFn outlives the timer (the test owns it).
    unsafe {
        ep_timer_start(
            lp,
            timeout_ms,
            repeat_ms,
            Some(run_timer_fn),
            f as *const TimerFn as *mut c_void,
        )
    }
}

fn start_timer(lp: *mut ep_loop, timeout_ms: u64, repeat_ms: u64, f: &TimerFn) -> u64 {
    let id = try_start_timer(lp, timeout_ms, repeat_ms, f);
    assert!(
        id > 0,
        "ep_timer_start({timeout_ms}, {repeat_ms}) failed: {id} ({})",
        strerror(id as i32)
    );
    id as u64
}

fn cancel(lp: *mut ep_loop, id: u64) -> i32 {
    // SAFETY: live loop.
    unsafe { ep_timer_cancel(lp, id) }
}

fn assert_no_callback_panics() {
    let panics = CALLBACK_PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    assert!(panics.is_empty(), "timer callbacks panicked: {panics:?}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// One-shot and repeating timers

/// A one-shot timer fires once, not before its timeout; the pending timer alone keeps ep_run
/// running, and ep_run returns EP_RUN_EMPTY once it has fired.
#[test]
fn one_shot_fires_once_after_its_timeout() {
    let fires = Rc::new(RefCell::new(Vec::<(u64, Instant)>::new()));
    let f = {
        let fires = fires.clone();
        timer_fn(move |_, id| fires.borrow_mut().push((id, Instant::now())))
    };
    let lp = OwnedLoop::new();
    let started = Instant::now();
    let id = start_timer(lp.0, 100, 0, &f);
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_EMPTY);
    let ran = started.elapsed();
    assert_no_callback_panics();
    let fires = fires.borrow();
    assert_eq!(fires.len(), 1, "one-shot fired {} times", fires.len());
    assert_eq!(fires[0].0, id, "callback got another timer id");
    let after = fires[0].1 - started;
    assert!(
        after >= Duration::from_millis(100),
        "fired early: {after:?}"
    );
    assert!(
        after < Duration::from_secs(2),
        "fired far too late: {after:?}"
    );
    assert!(
        ran >= Duration::from_millis(100),
        "ep_run returned after {ran:?}, before the timer was due"
    );
    assert_eq!(cancel(lp.0, id), EP_ESTALE, "cancel of a fired one-shot");
    // Nothing left: another run returns at once.
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_run_once(lp.0, 1000) }, EP_RUN_EMPTY);
}

/// A repeating timer fires at fixed rate (never early) and stops for good when it cancels itself
/// from its own callback; ep_run then has nothing left and returns EP_RUN_EMPTY.
#[test]
fn repeating_cancelled_from_its_own_callback() {
    let fires = Rc::new(RefCell::new(Vec::<Instant>::new()));
    let cancel_result = Rc::new(Cell::new(1));
    let f = {
        let (fires, result) = (fires.clone(), cancel_result.clone());
        timer_fn(move |lp, id| {
            fires.borrow_mut().push(Instant::now());
            if fires.borrow().len() == 5 {
                result.set(cancel(lp, id));
            }
        })
    };
    let lp = OwnedLoop::new();
    let started = Instant::now();
    let id = start_timer(lp.0, 20, 20, &f);
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_EMPTY);
    assert_no_callback_panics();
    assert_eq!(cancel_result.get(), 0, "cancel from its own callback");
    let fires = fires.borrow();
    assert_eq!(
        fires.len(),
        5,
        "fired {} times, cancelled at the 5th",
        fires.len()
    );
    for (k, at) in fires.iter().enumerate() {
        let due = Duration::from_millis(20 * (k as u64 + 1));
        assert!(
            *at - started >= due,
            "fire {k} at {:?}, before its deadline {due:?}",
            *at - started
        );
    }
    assert_eq!(cancel(lp.0, id), EP_ESTALE, "second cancel");
}

/// A repeating timer cancelled from another timer's callback never fires again.
#[test]
fn repeating_cancelled_from_another_timer() {
    let a_fires = Rc::new(RefCell::new(Vec::<Instant>::new()));
    let a_id = Rc::new(Cell::new(0u64));
    let b_fired = Rc::new(Cell::new(None::<Instant>));
    let b_cancel = Rc::new(Cell::new(1));
    let a = {
        let fires = a_fires.clone();
        timer_fn(move |_, _| fires.borrow_mut().push(Instant::now()))
    };
    let b = {
        let (a_id, fired, result) = (a_id.clone(), b_fired.clone(), b_cancel.clone());
        timer_fn(move |lp, _| {
            fired.set(Some(Instant::now()));
            result.set(cancel(lp, a_id.get()));
        })
    };
    let lp = OwnedLoop::new();
    a_id.set(start_timer(lp.0, 10, 10, &a));
    start_timer(lp.0, 55, 0, &b);
    // A is cancelled when B fires, so ep_run empties right after B.
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_EMPTY);
    assert_no_callback_panics();
    assert_eq!(b_cancel.get(), 0, "cancel from another timer's callback");
    let b_at = b_fired.get().expect("B never fired");
    let fires = a_fires.borrow();
    assert!(
        (1..=5).contains(&fires.len()),
        "A fired {} times in 55 ms at a 10 ms period",
        fires.len()
    );
    assert!(
        fires.iter().all(|t| *t <= b_at),
        "A fired after B cancelled it"
    );
    assert_eq!(cancel(lp.0, a_id.get()), EP_ESTALE);
}

/// A repeating timer cancelled from a connection's on_data stops, and the loop goes idle.
#[test]
fn repeating_cancelled_from_on_data() {
    let fires = Rc::new(Cell::new(0u32));
    let f = {
        let fires = fires.clone();
        timer_fn(move |_, _| fires.set(fires.get() + 1))
    };
    let h = Harness::new();
    let timer = start_timer(h.lp, 5, 5, &f);
    let cancel_result = Rc::new(Cell::new(1));
    {
        let result = cancel_result.clone();
        h.rec.set_hook(move |_, lp, ev| {
            if let Event::Data { .. } = ev {
                result.set(cancel(lp, timer));
            }
        });
    }
    let (_, port) = h.listen("127.0.0.1", 0);
    let mut client = connect(port);
    h.run_until("three timer fires", |_| fires.get() >= 3);
    client.write_all(b"x").unwrap();
    h.run_until("on_data", |_| cancel_result.get() != 1);
    assert_eq!(cancel_result.get(), 0, "cancel from on_data");
    let after_cancel = fires.get();
    h.assert_idle("after cancelling the only timer");
    assert_eq!(fires.get(), after_cancel, "timer fired after its cancel");
    assert_no_callback_panics();
    h.finish();
}

/// The documented error codes of ep_timer_start / ep_timer_cancel, and what other id functions
/// say about a timer id.
#[test]
fn timer_error_codes() {
    let noop = timer_fn(|_, _| {});
    let h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", 0);
    let client = connect(port);
    let conn = h.accept_for(&client);

    // SAFETY: NULL callback / NULL loop must be rejected without touching anything.
    unsafe {
        assert_eq!(
            ep_timer_start(h.lp, 10, 0, None, null_mut()),
            i64::from(EP_ENULL),
            "NULL cb"
        );
        assert_eq!(
            ep_timer_start(null_mut(), 10, 0, Some(run_timer_fn), null_mut()),
            i64::from(EP_ENULL),
            "NULL loop"
        );
        assert_eq!(
            ep_timer_cancel(null_mut(), 1),
            EP_ENULL,
            "cancel on NULL loop"
        );
    }
    assert_eq!(cancel(h.lp, conn), EP_EKIND, "cancel of a connection id");
    assert_eq!(cancel(h.lp, listener), EP_EKIND, "cancel of a listener id");
    assert_eq!(cancel(h.lp, 0), EP_ESTALE, "cancel of id 0");
    assert_eq!(
        cancel(h.lp, 0x7777_0000_0042),
        EP_ESTALE,
        "cancel of an id never issued"
    );

    let timer = start_timer(h.lp, 60_000, 0, &noop);
    // A timer is not a stream: the stream operations answer EP_EKIND, the user pointer works.
    assert_eq!(send(h.lp, timer, b"x"), EP_EKIND, "ep_send on a timer");
    assert_eq!(close(h.lp, timer), EP_EKIND, "ep_close on a timer");
    // SAFETY: live loop.
    unsafe {
        assert_eq!(ep_set_idle_timeout(h.lp, timer, 10), EP_EKIND);
        let marker = 0x5eed as *mut c_void;
        assert_eq!(
            ep_set_user(h.lp, timer, marker),
            0,
            "ep_set_user on a timer"
        );
        assert_eq!(ep_get_user(h.lp, timer), marker);
    }
    assert_eq!(cancel(h.lp, timer), 0);
    assert_eq!(cancel(h.lp, timer), EP_ESTALE, "double cancel");
    assert_no_callback_panics();
    drop(client);
    h.finish();
}

/// Timers started with the same timeout fire in the order they were started — started from
/// outside the loop, and started with timeout 0 from inside a callback.
#[test]
fn equal_deadlines_fire_in_creation_order() {
    const N: usize = 50;
    let order = Rc::new(RefCell::new(Vec::<usize>::new()));
    let outer: Vec<Box<TimerFn>> = (0..N)
        .map(|i| {
            let order = order.clone();
            timer_fn(move |_, _| order.borrow_mut().push(i))
        })
        .collect();
    let inner: Rc<Vec<Box<TimerFn>>> = Rc::new(
        (0..N)
            .map(|i| {
                let order = order.clone();
                timer_fn(move |_, _| order.borrow_mut().push(1000 + i))
            })
            .collect(),
    );
    let starter = {
        let inner = inner.clone();
        timer_fn(move |lp, _| {
            for f in inner.iter() {
                start_timer(lp, 0, 0, f);
            }
        })
    };
    let lp = OwnedLoop::new();
    for f in &outer {
        start_timer(lp.0, 30, 0, f);
    }
    // Due after the 50: its 50 zero-timeout timers fire after it returns, in their own order.
    start_timer(lp.0, 31, 0, &starter);
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_EMPTY);
    assert_no_callback_panics();
    let want: Vec<usize> = (0..N).chain((0..N).map(|i| 1000 + i)).collect();
    assert_eq!(*order.borrow(), want);
}

/// A repeating timer keeps ep_run running until ep_stop (from another thread); it is still
/// pending afterwards, and the loop is empty once it is cancelled.
#[test]
fn repeating_timer_keeps_the_loop_running() {
    let fires = Rc::new(Cell::new(0u32));
    let f = {
        let fires = fires.clone();
        timer_fn(move |_, _| fires.set(fires.get() + 1))
    };
    let lp = OwnedLoop::new();
    let id = start_timer(lp.0, 10, 10, &f);
    let addr = lp.0 as usize;
    let stopper = thread::spawn(move || {
        thread::sleep(Duration::from_millis(150));
        // SAFETY: the loop is freed only after this thread is joined.
        unsafe { ep_stop(addr as *mut ep_loop) }
    });
    let started = Instant::now();
    assert_eq!(run_bounded(lp.0, LIMIT), EP_RUN_STOPPED);
    assert_eq!(stopper.join().unwrap(), 0);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(
        fires.get() >= 2,
        "only {} fires in 150 ms at 10 ms",
        fires.get()
    );
    let mut stats = ep_stats::default();
    // SAFETY: live loop, valid out pointer.
    let rc = unsafe { ep_get_stats(lp.0, &mut stats, size_of::<ep_stats>()) };
    assert_eq!(rc, 0);
    assert_eq!(stats.timers, 1, "pending timers");
    assert_eq!(stats.open, 0, "timers are not open registrations");
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_run_once(lp.0, 0) }, EP_RUN_MORE);
    assert_eq!(cancel(lp.0, id), 0);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_run_once(lp.0, 0) }, EP_RUN_EMPTY);
    assert_no_callback_panics();
}

// ---------------------------------------------------------------------------------------------
// Accuracy

struct Lateness {
    samples: Vec<Duration>,
    skipped: u64,
}

impl Lateness {
    fn percentile(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    }
}

/// Runs a `period` repeating timer for `fires` fires and measures, for each, how late it fired
/// after its deadline (the timer is fixed-rate: deadlines are start + k * period, and a late
/// loop skips the periods it missed). Stops the loop after the last fire.
fn measure_lateness(
    lp: *mut ep_loop,
    period: u64,
    fires: usize,
    on_fire: impl FnMut(usize) + 'static,
) -> Lateness {
    let log = Rc::new(RefCell::new(Vec::<Instant>::new()));
    let f = {
        let log = log.clone();
        let mut on_fire = on_fire;
        timer_fn(move |lp, id| {
            let n = {
                let mut log = log.borrow_mut();
                log.push(Instant::now());
                log.len()
            };
            on_fire(n);
            if n == fires {
                assert_eq!(cancel(lp, id), 0);
                // SAFETY: inside a callback of this live loop.
                unsafe { ep_stop(lp) };
            }
        })
    };
    let anchor = Instant::now();
    start_timer(lp, period, period, &f);
    assert_eq!(run_bounded(lp, LIMIT * 3), EP_RUN_STOPPED);
    assert_no_callback_panics();
    let every = Duration::from_millis(period);
    let mut due = anchor + every;
    let mut samples = Vec::new();
    let mut skipped = 0;
    for &at in log.borrow().iter() {
        assert!(
            at >= due,
            "timer fired {:?} before its deadline",
            due.saturating_duration_since(at)
        );
        samples.push(at - due);
        let mut next = due + every;
        while next <= at {
            next += every;
            skipped += 1;
        }
        due = next;
    }
    assert_eq!(samples.len(), fires);
    Lateness { samples, skipped }
}

fn report(what: &str, l: &Lateness) {
    println!(
        "timer lateness ({what}): n={} median={:.3} ms p99={:.3} ms max={:.3} ms skipped periods={}",
        l.samples.len(),
        ms(l.percentile(50.0)),
        ms(l.percentile(99.0)),
        ms(l.percentile(100.0)),
        l.skipped
    );
}

/// Baseline for the load test: a 10 ms timer on an otherwise idle loop.
#[test]
fn timer_accuracy_idle() {
    let _t = timing_lock();
    let lp = OwnedLoop::new();
    let l = measure_lateness(lp.0, 10, 50, |_| {});
    report("idle loop, 10 ms period", &l);
    assert!(l.percentile(99.0) < Duration::from_millis(50));
}

/// Two clients flood the server at full speed (each with a writer and a reader thread; the
/// server echoes with flow control) while a 10 ms repeating timer runs for about a second. The
/// timer must stay on time: p99 lateness under 50 ms. Prints median/p99 and the echo rate.
#[test]
fn timers_stay_on_time_while_io_saturates_the_loop() {
    let _t = timing_lock();
    let h = Harness::new();
    h.rec.set_keep_data(false);
    h.rec.set_hook(echo);
    let (_, port) = h.listen("127.0.0.1", 0);
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    let mut threads = Vec::new();
    for seed in 0..2u8 {
        let client = connect(port);
        conns.push(h.accept_for(&client));
        let mut writer = client.try_clone().unwrap();
        let mut reader = client;
        let stop_w = stop.clone();
        threads.push(thread::spawn(move || {
            let chunk = vec![seed; 64 * 1024];
            while !stop_w.load(Ordering::SeqCst) {
                if let Err(e) = writer.write_all(&chunk) {
                    panic!("flood write: {e}");
                }
            }
            writer.shutdown(std::net::Shutdown::Write).unwrap();
        }));
        let total = echoed.clone();
        threads.push(thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        total.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("flood read: {e}"),
                }
            }
        }));
    }
    // Let the flood reach full speed before measuring.
    h.run_until("the flood to start", |_| {
        echoed.load(Ordering::Relaxed) > 8 << 20
    });

    // (bytes echoed, instant) at the first and at the last fire.
    let window = Rc::new(Cell::new(None::<((u64, Instant), (u64, Instant))>));
    let l = {
        let (echoed, window) = (echoed.clone(), window.clone());
        measure_lateness(h.lp, 10, 100, move |n| {
            let now = (echoed.load(Ordering::Relaxed), Instant::now());
            let first = match window.get() {
                Some((first, _)) if n > 1 => first,
                _ => now,
            };
            window.set(Some((first, now)));
        })
    };
    let ((b0, t0), (b1, t1)) = window.get().expect("no timer fired");
    let moved = b1 - b0;
    report("2 clients flooding an echo server, 10 ms period", &l);
    println!(
        "echoed during the timer window: {:.1} MiB in {:.0} ms ({:.0} MiB/s)",
        moved as f64 / (1 << 20) as f64,
        ms(t1 - t0),
        moved as f64 / (1 << 20) as f64 / (t1 - t0).as_secs_f64()
    );

    stop.store(true, Ordering::SeqCst);
    for id in &conns {
        h.run_until_closed(*id);
    }
    for t in threads {
        t.join().expect("flood thread failed");
    }
    assert!(
        moved > 1 << 20,
        "no real load during the window: {moved} bytes echoed"
    );
    assert!(
        l.percentile(99.0) < Duration::from_millis(50),
        "timer p99 lateness {:.1} ms under load",
        ms(l.percentile(99.0))
    );
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// Idle timeouts

fn set_idle(lp: *mut ep_loop, id: u64, timeout_ms: u32) -> i32 {
    // SAFETY: live loop.
    unsafe { ep_set_idle_timeout(lp, id, timeout_ms) }
}

/// Records the instant of every on_close, per id.
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
        .expect("no close time recorded")
}

/// A silent peer is ended with on_close(EP_CLOSE_TIMEOUT, ETIMEDOUT) after about the timeout,
/// never before it; the peer then reads EOF.
#[test]
fn silent_peer_times_out() {
    let h = Harness::new();
    let armed = Rc::new(Cell::new(None::<Instant>));
    let times = Rc::new(RefCell::new(Vec::new()));
    {
        let (armed, times) = (armed.clone(), times.clone());
        h.rec.set_hook(move |_, lp, ev| match *ev {
            Event::Accept { conn, .. } => {
                armed.set(Some(Instant::now()));
                assert_eq!(set_idle(lp, conn, 200), 0);
            }
            Event::Close { conn, .. } => times.borrow_mut().push((conn, Instant::now())),
            _ => {}
        });
    }
    let (_, port) = h.listen("127.0.0.1", 0);
    let mut client = connect(port);
    let conn = h.accept_for(&client);
    assert_eq!(
        h.run_until_closed(conn),
        (TIMEOUT, libc::ETIMEDOUT),
        "{}",
        h.rec.summary()
    );
    let after = closed_at(&times, conn) - armed.get().unwrap();
    println!("idle timeout 200 ms: closed after {:.1} ms", ms(after));
    assert!(
        after >= Duration::from_millis(200),
        "timed out early: {after:?}"
    );
    assert!(
        after < Duration::from_millis(1200),
        "timed out late: {after:?}"
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        client.read(&mut buf).expect("read after the timeout"),
        0,
        "peer must see EOF"
    );
    h.finish();
}

/// A peer that sends a byte every timeout/3 (200 ms of 600, echoed back) is never timed out;
/// once it falls silent the timeout applies, counted from its last byte.
#[test]
fn active_peer_is_never_timed_out() {
    let h = Harness::new();
    let times = Rc::new(RefCell::new(Vec::new()));
    let (listener, port) = h.listen("127.0.0.1", 0);
    {
        let times = times.clone();
        h.rec.set_hook(move |r, lp, ev| match *ev {
            Event::Close { conn, .. } => times.borrow_mut().push((conn, Instant::now())),
            _ => echo(r, lp, ev),
        });
    }
    assert_eq!(set_idle(h.lp, listener, 600), 0);
    let client = connect(port);
    let conn = h.accept_for(&client);
    let last_write = Arc::new(Mutex::new(Instant::now()));
    let talker = {
        let (mut c, last) = (client.try_clone().unwrap(), last_write.clone());
        thread::spawn(move || {
            let mut byte = [0u8; 1];
            for _ in 0..8 {
                thread::sleep(Duration::from_millis(200));
                c.write_all(b"k").unwrap();
                *last.lock().unwrap() = Instant::now();
                c.read_exact(&mut byte).unwrap();
            }
        })
    };
    h.run_until_for("the talker to finish", LIMIT, |_| talker.is_finished());
    talker.join().expect("talker failed");
    assert!(
        !h.rec.is_closed(conn),
        "an active peer was closed: {}",
        h.rec.summary()
    );
    assert_eq!(h.run_until_closed(conn), (TIMEOUT, libc::ETIMEDOUT));
    let silent_for = closed_at(&times, conn) - *last_write.lock().unwrap();
    assert!(
        silent_for >= Duration::from_millis(600),
        "closed {silent_for:?} after the last byte"
    );
    drop(client);
    h.finish();
}

/// Writing counts as activity: a silent peer that keeps receiving a byte every 200 ms from the
/// server is not timed out at 600 ms; when the server stops writing, it is.
#[test]
fn server_writes_keep_a_connection_alive() {
    let h = Harness::new();
    let times = close_times(&h);
    let (_, port) = h.listen("127.0.0.1", 0);
    let client = connect(port);
    let conn = h.accept_for(&client);
    assert_eq!(set_idle(h.lp, conn, 600), 0);
    let sent = Rc::new(Cell::new(0u32));
    let ticker = {
        let sent = sent.clone();
        timer_fn(move |lp, _| {
            assert_eq!(send(lp, conn, b"t"), 0);
            sent.set(sent.get() + 1);
        })
    };
    let tick = start_timer(h.lp, 200, 200, &ticker);
    h.run_until("8 ticks", |_| sent.get() >= 8);
    assert!(
        !h.rec.is_closed(conn),
        "closed while writing: {}",
        h.rec.summary()
    );
    assert_eq!(cancel(h.lp, tick), 0);
    let stopped = Instant::now();
    assert_eq!(h.run_until_closed(conn), (TIMEOUT, libc::ETIMEDOUT));
    let after = closed_at(&times, conn) - stopped;
    assert!(
        after >= Duration::from_millis(400),
        "closed {after:?} after the last write"
    );
    assert_no_callback_panics();
    drop(client);
    h.finish();
}

/// A listener's idle timeout is inherited by the connections it accepts from then on (not by
/// those accepted before); measured from the connection's start.
#[test]
fn listener_default_is_inherited() {
    let h = Harness::new();
    let times = close_times(&h);
    let (listener, port) = h.listen("127.0.0.1", 0);
    let early = connect(port);
    let early_id = h.accept_for(&early);
    assert_eq!(set_idle(h.lp, listener, 200), 0);
    let connected = Instant::now();
    let late = connect(port);
    let late_id = h.accept_for(&late);
    assert_eq!(h.run_until_closed(late_id), (TIMEOUT, libc::ETIMEDOUT));
    let after = closed_at(&times, late_id) - connected;
    assert!(
        after >= Duration::from_millis(200),
        "timed out early: {after:?}"
    );
    assert!(
        after < Duration::from_millis(1200),
        "timed out late: {after:?}"
    );
    h.run_for(Duration::from_millis(300));
    assert!(
        !h.rec.is_closed(early_id),
        "a connection accepted before the default was set timed out"
    );
    drop((early, late));
    h.finish();
}

/// 0 disables: on a connection that inherited a default, on a connection before its timeout
/// expires, and on the listener itself.
#[test]
fn zero_disables_the_idle_timeout() {
    let h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", 0);
    assert_eq!(set_idle(h.lp, listener, 150), 0);
    let inherited_then_off = connect(port);
    let a = h.accept_for(&inherited_then_off);
    assert_eq!(set_idle(h.lp, a, 0), 0);

    assert_eq!(set_idle(h.lp, listener, 0), 0);
    let listener_off = connect(port);
    let b = h.accept_for(&listener_off);

    let own_then_off = connect(port);
    let c = h.accept_for(&own_then_off);
    assert_eq!(set_idle(h.lp, c, 150), 0);
    h.run_for(Duration::from_millis(50));
    assert_eq!(set_idle(h.lp, c, 0), 0);

    h.run_for(Duration::from_millis(600));
    for (name, id) in [
        ("inherited, then 0", a),
        ("listener set to 0", b),
        ("own, then 0", c),
    ] {
        assert!(!h.rec.is_closed(id), "{name}: closed: {}", h.rec.summary());
    }
    assert_eq!(set_idle(h.lp, 0x7777_0000_0042, 10), EP_ESTALE);
    drop((inherited_then_off, listener_off, own_then_off));
    h.finish();
}

fn lingering(lp: *mut ep_loop) -> u64 {
    // SAFETY: ep_stats is plain data (all zeros is a valid value).
    let mut stats: ep_stats = unsafe { std::mem::zeroed() };
    // SAFETY: live loop; `stats` is writable for its size.
    let rc = unsafe { ep_get_stats(lp, &mut stats, std::mem::size_of::<ep_stats>()) };
    assert_eq!(rc, 0);
    stats.lingering
}

/// The loop's own deadlines and the user's timers keep one order: sockets lingering after a close
/// (their deadlines armed in order, now plus the linger time) and a timer due before them, armed
/// after them, each fire when due, the earlier first; a timer due after them fires after they
/// were let go.
#[test]
fn a_timer_due_before_linger_deadlines_fires_first() {
    let h = Harness::new();
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_set_linger(h.lp, 400) }, 0);
    h.rec.set_hook(|_, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            assert_eq!(close(lp, conn), 0); // the peers never close: their sockets linger
        }
    });
    let (_, port) = h.listen("127.0.0.1", 0);
    let clients: Vec<_> = (0..3).map(|_| connect(port)).collect();
    h.run_until("three lingering sockets", |_| lingering(h.lp) == 3);
    let armed = Instant::now();
    let fires = Rc::new(RefCell::new(Vec::<(&str, Duration, u64)>::new()));
    let record = |label: &'static str| {
        let fires = fires.clone();
        timer_fn(move |lp, _| {
            fires
                .borrow_mut()
                .push((label, armed.elapsed(), lingering(lp)))
        })
    };
    let (late, early) = (record("late"), record("early"));
    start_timer(h.lp, 900, 0, &late);
    start_timer(h.lp, 50, 0, &early);
    h.run_until_for("both timers", Duration::from_secs(5), |_| {
        fires.borrow().len() == 2
    });
    assert_no_callback_panics();
    let fires = fires.borrow();
    assert_eq!((fires[0].0, fires[1].0), ("early", "late"), "{fires:?}");
    let (_, early_at, lingering_then) = fires[0];
    assert!(
        early_at >= Duration::from_millis(50) && early_at < Duration::from_millis(350),
        "the 50 ms timer fired after {early_at:?}"
    );
    assert_eq!(lingering_then, 3, "the sockets lingered on when it fired");
    let (_, late_at, lingering_then) = fires[1];
    assert!(late_at >= Duration::from_millis(900), "{late_at:?}");
    assert_eq!(lingering_then, 0, "the 400 ms linger deadlines had passed");
    drop(clients);
}
