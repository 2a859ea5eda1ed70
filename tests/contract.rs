//! The caller-facing contract of issue 10, each point on real descriptors: the user pointer lives
//! until on_close, a refused fd is left as it came, EP_QUEUE events survive ep_run_once, the
//! documented codes of timers, pipes and closing ids, calls after the peer left succeed, wrong
//! threads are refused, ids of another loop are stale, and ep_get_stats honours the caller's size.

mod common;

use common::*;
use std::cell::RefCell;
use std::ffi::c_void;
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::null_mut;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// A minimal recorder of its own: these tests change user pointers, which the shared harness
// uses for itself.

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Accept(u64),
    Data(u64, usize),
    Close(u64, i32, usize),
}

type DataHook = Box<dyn FnMut(*mut ep_loop, u64)>;

thread_local! {
    static SEEN: RefCell<Vec<Seen>> = const { RefCell::new(Vec::new()) };
    static ON_DATA: RefCell<Option<DataHook>> = const { RefCell::new(None) };
}

fn seen() -> Vec<Seen> {
    SEEN.with(|s| s.borrow().clone())
}

fn on_data_do(f: impl FnMut(*mut ep_loop, u64) + 'static) {
    ON_DATA.with(|slot| *slot.borrow_mut() = Some(Box::new(f)));
}

unsafe extern "C" fn c_accept(_lp: *mut ep_loop, _listener: u64, conn: u64, _user: *mut c_void) {
    SEEN.with(|s| s.borrow_mut().push(Seen::Accept(conn)));
}

unsafe extern "C" fn c_data(
    lp: *mut ep_loop,
    conn: u64,
    _d: *const u8,
    len: usize,
    _u: *mut c_void,
) {
    SEEN.with(|s| s.borrow_mut().push(Seen::Data(conn, len)));
    let hook = ON_DATA.with(|slot| slot.borrow_mut().take());
    if let Some(mut hook) = hook {
        hook(lp, conn);
        ON_DATA.with(|slot| {
            slot.borrow_mut().get_or_insert(hook);
        });
    }
}

unsafe extern "C" fn c_close(
    _lp: *mut ep_loop,
    conn: u64,
    reason: ep_close_reason,
    _err: i32,
    user: *mut c_void,
) {
    SEEN.with(|s| {
        s.borrow_mut()
            .push(Seen::Close(conn, reason as i32, user as usize))
    });
}

static PLAIN: ep_callbacks = ep_callbacks {
    on_accept: Some(c_accept),
    on_data: Some(c_data),
    on_writable: None,
    on_close: Some(c_close),
};

fn listen(lp: *mut ep_loop, flags: u32) -> (u64, u16) {
    // SAFETY: live loop, static callbacks, static C string.
    let id = unsafe { ep_listen(lp, c"127.0.0.1".as_ptr(), 0, 0, flags, &PLAIN, null_mut()) };
    assert!(id > 0, "ep_listen: {}", strerror(id as i32));
    // SAFETY: live loop, live id.
    let port = unsafe { ep_local_port(lp, id as u64) };
    (id as u64, port as u16)
}

fn run_until(lp: *mut ep_loop, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            seen()
        );
        // SAFETY: live loop, on the thread that uses it.
        let rc = unsafe { ep_run_once(lp, 20) };
        assert!(rc >= 0, "ep_run_once: {}", strerror(rc));
    }
}

fn accepted() -> Vec<u64> {
    seen()
        .iter()
        .filter_map(|e| match e {
            Seen::Accept(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn closes_of(id: u64) -> Vec<(i32, usize)> {
    seen()
        .iter()
        .filter_map(|e| match e {
            Seen::Close(c, r, u) if *c == id => Some((*r, *u)),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The user pointer lives until on_close

fn user_pointer_until_on_close(flags: u32) {
    for end in ["close", "abort"] {
        SEEN.with(|s| s.borrow_mut().clear());
        let lp = OwnedLoop::new();
        let (_listener, port) = listen(lp.0, flags);
        let results = std::rc::Rc::new(RefCell::new(Vec::new()));
        let log = results.clone();
        on_data_do(move |lp, conn| {
            // SAFETY: live loop, inside its callback.
            unsafe {
                let rc = if end == "close" {
                    ep_close(lp, conn)
                } else {
                    ep_abort(lp, conn)
                };
                let set = ep_set_user(lp, conn, 0x5eed as *mut c_void);
                let got = ep_get_user(lp, conn) as usize;
                log.borrow_mut().push((rc, set, got));
            }
        });
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        client.write_all(b"hello").unwrap();
        run_until(lp.0, "the close", || {
            accepted()
                .first()
                .is_some_and(|c| !closes_of(*c).is_empty())
        });
        let conn = accepted()[0];
        assert_eq!(
            results.borrow().as_slice(),
            &[(0, 0, 0x5eed)],
            "{end}: rc, set_user, get_user"
        );
        let expected = if end == "close" { LOCAL } else { ABORT };
        assert_eq!(
            closes_of(conn),
            vec![(expected, 0x5eed)],
            "{end}: on_close gets the pointer set after the close"
        );
        // SAFETY: live loop; the id is past its on_close.
        assert!(unsafe { ep_get_user(lp.0, conn) }.is_null());
        // SAFETY: as above.
        assert_eq!(unsafe { ep_set_user(lp.0, conn, null_mut()) }, EP_ESTALE);
        ON_DATA.with(|slot| slot.borrow_mut().take());
    }
}
both_modes!(user_pointer_until_on_close);

// ---------------------------------------------------------------------------------------------
// A refused fd is left exactly as it came

fn flags_of(fd: RawFd) -> (i32, i32) {
    // SAFETY: fcntl on an open fd with query commands.
    unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    }
}

#[test]
fn refused_register_leaves_the_fd_alone() {
    let dir = std::env::temp_dir().join(format!("eploop-contract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::File::create(dir.join("regular")).unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let directory = std::fs::File::open(&dir).unwrap();
    let lp = OwnedLoop::new();
    for (what, fd) in [
        ("regular file", file.as_raw_fd()),
        ("/dev/null", devnull.as_raw_fd()),
        ("directory", directory.as_raw_fd()),
    ] {
        // Rust opens with O_CLOEXEC: clear it so that gaining it would show.
        // SAFETY: fcntl on an open fd.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let before = flags_of(fd);
        // SAFETY: live loop, static callbacks.
        let rc = unsafe { ep_register(lp.0, fd, 0, &PLAIN, null_mut()) };
        assert_eq!(
            rc,
            -i64::from(libc::EPERM),
            "{what}: {}",
            strerror(rc as i32)
        );
        assert_eq!(
            flags_of(fd),
            before,
            "{what}: status and fd flags changed by a refused register"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// EP_QUEUE registrations driven by ep_run_once keep their events for the next ep_poll

#[test]
fn queued_events_survive_run_once() {
    let lp = OwnedLoop::new();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    // SAFETY: live loop; EP_QUEUE takes NULL callbacks; EP_BORROW: `ours` stays ours.
    let id = unsafe {
        ep_register(
            lp.0,
            ours.as_raw_fd(),
            EP_QUEUE | EP_BORROW,
            std::ptr::null(),
            null_mut(),
        )
    };
    assert!(id > 0, "{}", strerror(id as i32));
    (&theirs).write_all(b"queued bytes").unwrap();
    drop(theirs);
    let mut stats = ep_stats::default();
    let deadline = Instant::now() + LIMIT;
    while stats.closes.iter().sum::<u64>() == 0 {
        assert!(Instant::now() < deadline, "the close never came");
        // SAFETY: live loop.
        assert!(unsafe { ep_run_once(lp.0, 20) } >= 0);
        // SAFETY: live loop, writable stats of the size passed.
        let rc = unsafe { ep_get_stats(lp.0, &mut stats, size_of::<ep_stats>()) };
        assert_eq!(rc, 0);
    }
    let mut out = std::mem::MaybeUninit::<ep_poll_result>::uninit();
    let started = Instant::now();
    // SAFETY: live loop, no commands, writable out. A long timeout: the held events must come at once.
    let rc = unsafe { ep_poll(lp.0, 5000, std::ptr::null(), out.as_mut_ptr()) };
    assert_eq!(rc, 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ep_poll waited although events were held"
    );
    // SAFETY: ep_poll wrote `out`; its arrays are valid until the next step.
    let out = unsafe { out.assume_init() };
    // SAFETY: as above.
    let events = unsafe { std::slice::from_raw_parts(out.events, out.count) };
    let kinds: Vec<u32> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![EP_EVENT_DATA, EP_EVENT_CLOSE],
        "data, then the one close"
    );
    // SAFETY: as above.
    let data = unsafe { std::slice::from_raw_parts(out.data, out.data_len) };
    assert_eq!(
        &data[events[0].offset as usize..][..events[0].len as usize],
        b"queued bytes"
    );
    assert_eq!(events[1].reason, PEER_EOF as u32);
    let mut again = std::mem::MaybeUninit::<ep_poll_result>::uninit();
    // SAFETY: as above; the events were handed out and are not repeated.
    let rc = unsafe { ep_poll(lp.0, 0, std::ptr::null(), again.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: written by ep_poll.
    assert_eq!(unsafe { again.assume_init() }.count, 0);
}

// ---------------------------------------------------------------------------------------------
// Codes the header lists: timers, pipes, closing ids

unsafe extern "C" fn never(_lp: *mut ep_loop, _timer: u64, _user: *mut c_void) {}

#[test]
fn timer_ids_are_the_wrong_kind() {
    let lp = OwnedLoop::new();
    // SAFETY: live loop, valid callback.
    let timer = unsafe { ep_timer_start(lp.0, 60_000, 0, Some(never), null_mut()) } as u64;
    // SAFETY: live loop, live timer id.
    unsafe {
        assert_eq!(ep_abort(lp.0, timer), EP_EKIND);
        assert_eq!(ep_close(lp.0, timer), EP_EKIND);
        assert_eq!(ep_pause_reading(lp.0, timer), EP_EKIND);
        assert_eq!(ep_resume_reading(lp.0, timer), EP_EKIND);
        assert_eq!(ep_set_watermarks(lp.0, timer, 1, 2), EP_EKIND);
        assert_eq!(ep_send(lp.0, timer, b"x".as_ptr().cast(), 1), EP_EKIND);
        assert_eq!(ep_fd(lp.0, timer), EP_EKIND);
        assert_eq!(ep_timer_cancel(lp.0, timer), 0);
    }
}

#[test]
fn send_on_a_read_only_pipe_end_is_ebadf() {
    let lp = OwnedLoop::new();
    let mut fds = [0; 2];
    // SAFETY: valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: live loop, static callbacks; the loop owns the read end from here on.
    let id = unsafe { ep_register(lp.0, fds[0], 0, &PLAIN, null_mut()) } as u64;
    // SAFETY: live loop, live id, valid buffer.
    let rc = unsafe { ep_send(lp.0, id, b"x".as_ptr().cast(), 1) };
    assert_eq!(rc, -libc::EBADF);
    // SAFETY: our write end.
    unsafe { libc::close(fds[1]) };
}

fn closing_codes(flags: u32) {
    SEEN.with(|s| s.borrow_mut().clear());
    let lp = OwnedLoop::new();
    let (_listener, port) = listen(lp.0, flags);
    let codes = std::rc::Rc::new(RefCell::new(Vec::new()));
    let log = codes.clone();
    on_data_do(move |lp, conn| {
        // SAFETY: live loop, inside its callback.
        unsafe {
            log.borrow_mut().extend([
                ep_close(lp, conn),
                ep_close(lp, conn),
                ep_send(lp, conn, b"x".as_ptr().cast(), 1),
                ep_shutdown(lp, conn),
                ep_pause_reading(lp, conn),
                ep_abort(lp, conn),
                ep_abort(lp, conn),
            ]);
        }
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(b"hi").unwrap();
    run_until(lp.0, "the close", || {
        accepted()
            .first()
            .is_some_and(|c| !closes_of(*c).is_empty())
    });
    assert_eq!(
        codes.borrow().as_slice(),
        &[
            0,
            EP_ECLOSING,
            EP_ECLOSING,
            EP_ECLOSING,
            EP_ECLOSING,
            0,
            EP_ECLOSING
        ],
        "close, close again, send, shutdown, pause after close; abort after close; abort again"
    );
    assert_eq!(closes_of(accepted()[0]).len(), 1);
    ON_DATA.with(|slot| slot.borrow_mut().take());
}
both_modes!(closing_codes);

/// After the peer reset, every call succeeds until on_close; send returns 1 ("stop producing").
fn calls_after_the_peer_left_succeed(flags: u32) {
    SEEN.with(|s| s.borrow_mut().clear());
    let lp = OwnedLoop::new();
    let (_listener, port) = listen(lp.0, flags);
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    run_until(lp.0, "the accept", || !accepted().is_empty());
    let conn = accepted()[0];
    // Fill the peer's receive window so a send fails once the RST arrives.
    let chunk = vec![7u8; 256 * 1024];
    // SAFETY: live loop, live id, valid buffer.
    while unsafe { ep_send(lp.0, conn, chunk.as_ptr().cast(), chunk.len()) } == 0 {}
    set_linger_zero(&client);
    drop(client);
    let mut codes = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while closes_of(conn).is_empty() {
        assert!(Instant::now() < deadline, "no close: {:?}", seen());
        // SAFETY: live loop, valid buffer; the id is live until its on_close.
        unsafe {
            codes.push(("send", ep_send(lp.0, conn, chunk.as_ptr().cast(), 1024)));
            codes.push(("pause", ep_pause_reading(lp.0, conn)));
            codes.push(("resume", ep_resume_reading(lp.0, conn)));
            codes.push(("watermarks", ep_set_watermarks(lp.0, conn, 1, 2)));
            assert!(ep_run_once(lp.0, 20) >= 0);
        }
    }
    for (call, rc) in &codes {
        assert!(
            *rc >= 0,
            "{call} returned {rc} ({}) before on_close",
            strerror(*rc)
        );
    }
    assert_eq!(closes_of(conn)[0].0, PEER_RESET);
}
both_modes!(calls_after_the_peer_left_succeed);

// ---------------------------------------------------------------------------------------------
// Threads and loops

/// A raw loop pointer moved to another thread on purpose.
#[derive(Clone, Copy)]
struct SendPtr(*mut ep_loop);
// SAFETY: the tests below hand the pointer to another thread precisely to see such calls refused.
unsafe impl Send for SendPtr {}

#[test]
fn another_thread_is_refused_while_the_loop_runs() {
    let lp = OwnedLoop::new();
    let (listener, _port) = listen(lp.0, 0);
    let shared = SendPtr(lp.0);
    let (tx, rx) = mpsc::channel();
    let other = thread::spawn(move || {
        let shared = shared;
        // Wait until the main thread is inside ep_run.
        thread::sleep(Duration::from_millis(100));
        // SAFETY: the loop is alive until this thread is joined; these calls must be refused.
        let codes = unsafe {
            vec![
                ep_local_port(shared.0, listener),
                ep_close(shared.0, listener),
                ep_send(shared.0, listener, b"x".as_ptr().cast(), 1),
                ep_set_user(shared.0, listener, null_mut()),
                ep_run_once(shared.0, 0),
            ]
        };
        tx.send(codes).unwrap();
        // SAFETY: ep_stop is callable from any thread.
        assert_eq!(unsafe { ep_stop(shared.0) }, 0);
    });
    let rc = run_bounded(lp.0, LIMIT);
    other.join().unwrap();
    assert_eq!(rc, EP_RUN_STOPPED);
    assert_eq!(
        rx.recv().unwrap(),
        vec![EP_ETHREAD; 5],
        "calls from a second thread while the loop runs"
    );
    // The loop was untouched and is usable again by whoever calls it next.
    // SAFETY: live loop, live listener.
    assert!(unsafe { ep_local_port(lp.0, listener) } > 0);
    let handoff = thread::spawn(move || {
        let shared = shared;
        // SAFETY: nobody else uses the loop now: handing it to another thread is allowed.
        unsafe { ep_local_port(shared.0, listener) }
    });
    assert!(handoff.join().unwrap() > 0);
}

#[test]
fn an_id_of_another_loop_is_stale() {
    let first = OwnedLoop::new();
    let second = OwnedLoop::new();
    let (a, _) = listen(first.0, 0);
    let (b, _) = listen(second.0, 0);
    assert_ne!(a, b);
    // SAFETY: live loops; foreign ids must be rejected without touching anything.
    unsafe {
        assert_eq!(ep_close(second.0, a), EP_ESTALE);
        assert_eq!(ep_fd(first.0, b), EP_ESTALE);
        assert!(ep_local_port(first.0, a) > 0 && ep_local_port(second.0, b) > 0);
    }
}

// ---------------------------------------------------------------------------------------------
// ep_get_stats and an older, smaller ep_stats

/// ep_stats as a program built against 0.1's header saw it (closes[8]), followed by a canary.
#[repr(C)]
struct OldStats {
    counters: [u64; 8],
    closes: [u64; 8],
    canary: [u64; 8],
}

#[test]
fn stats_never_write_past_the_callers_struct() {
    let lp = OwnedLoop::new();
    let (_listener, _port) = listen(lp.0, 0);
    let mut old = OldStats {
        counters: [u64::MAX; 8],
        closes: [u64::MAX; 8],
        canary: [0xc0ffee; 8],
    };
    let size = size_of::<[u64; 16]>();
    // SAFETY: live loop; `old` is writable for far more than `size` bytes.
    let rc = unsafe { ep_get_stats(lp.0, (&mut old as *mut OldStats).cast(), size) };
    assert_eq!(rc, 0);
    assert_eq!(old.counters[0], 1, "open: the listener");
    assert_eq!(old.closes, [0; 8]);
    assert_eq!(
        old.canary, [0xc0ffee; 8],
        "bytes past the caller's struct were written"
    );
    // A newer, larger struct: the part the library does not know is zeroed.
    let mut newer = [u64::MAX; 40];
    // SAFETY: as above, writable for the size passed.
    let rc = unsafe { ep_get_stats(lp.0, newer.as_mut_ptr().cast(), size_of::<[u64; 40]>()) };
    assert_eq!(rc, 0);
    assert_eq!(newer[0], 1);
    assert!(newer[size_of::<ep_stats>() / 8..].iter().all(|v| *v == 0));
    // SAFETY: a size too small for anything is refused.
    let rc = unsafe { ep_get_stats(lp.0, newer.as_mut_ptr().cast(), 4) };
    assert_eq!(rc, -libc::EINVAL);
}
