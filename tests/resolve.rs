//! ep_connect by host name: resolved off the loop's thread, the connection's id at once, every
//! outcome (connected, refused, a name that does not resolve, closed or aborted while resolving,
//! the loop freed meanwhile) as one on_accept and/or one on_close. Names come from /etc/hosts
//! (`localhost`) or cannot resolve (`.invalid`, RFC 6761): no test needs the network.

mod common;

use common::*;
use std::cell::RefCell;
use std::ffi::{c_int, c_void, CStr, CString};
use std::io::Read;
use std::net::{TcpListener, ToSocketAddrs};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

const UNRESOLVABLE: &str = "does-not-exist.invalid";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Up(u64),
    Data,
    Close(i32, i32),
}

/// Every callback of the outbound connections, per id, in order.
#[derive(Default)]
struct Log(RefCell<Vec<(u64, Ev)>>);

impl Log {
    fn of(&self, id: u64) -> Vec<Ev> {
        let log = self.0.borrow();
        log.iter().filter(|e| e.0 == id).map(|e| e.1).collect()
    }
    fn closed(&self, id: u64) -> bool {
        self.of(id).iter().any(|e| matches!(e, Ev::Close(..)))
    }
    fn user(&self) -> *mut c_void {
        self as *const Log as *mut c_void
    }
}

fn log_of<'a>(user: *mut c_void) -> &'a Log {
    // SAFETY: every connection of these tests has a live `Log` as its user pointer.
    unsafe { &*(user as *const Log) }
}

unsafe extern "C" fn up(_lp: *mut ep_loop, listener: ep_id, conn: ep_id, user: *mut c_void) {
    log_of(user).0.borrow_mut().push((conn, Ev::Up(listener)));
}
unsafe extern "C" fn data(_: *mut ep_loop, conn: ep_id, _: *const u8, _: usize, user: *mut c_void) {
    log_of(user).0.borrow_mut().push((conn, Ev::Data));
}
unsafe extern "C" fn closed(
    _lp: *mut ep_loop,
    conn: ep_id,
    reason: ep_close_reason,
    err: c_int,
    user: *mut c_void,
) {
    log_of(user)
        .0
        .borrow_mut()
        .push((conn, Ev::Close(reason as i32, err)));
}

static OUTBOUND: ep_callbacks = ep_callbacks {
    on_accept: Some(up),
    on_data: Some(data),
    on_writable: None,
    on_close: Some(closed),
};

fn connect(lp: *mut ep_loop, host: &str, port: u16, timeout_ms: u32, log: &Log) -> u64 {
    let host = CString::new(host).unwrap();
    // SAFETY: live loop, NUL-terminated host, static callbacks, `log` outlives the loop's use.
    let id = unsafe {
        ep_connect(
            lp,
            host.as_ptr(),
            port,
            timeout_ms,
            0,
            &OUTBOUND,
            log.user(),
        )
    };
    assert!(id > 0, "ep_connect: {}", strerror(id as i32));
    id as u64
}

fn run_until(lp: *mut ep_loop, what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        // SAFETY: live loop, not inside a callback.
        let rc = unsafe { ep_run_once(lp, 20) };
        assert!(rc >= 0, "ep_run_once: {}", strerror(rc));
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn localhost_resolves_here_to_loopback() {
    let addrs: Vec<_> = ("localhost", 80).to_socket_addrs().unwrap().collect();
    assert!(
        !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()),
        "{addrs:?}"
    );
}

#[test]
fn a_name_connects_and_bytes_sent_while_resolving_arrive() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let lp = OwnedLoop::new();
    let log = Log::default();
    let began = Instant::now();
    let id = connect(lp.0, "localhost", port, 5000, &log);
    assert!(
        began.elapsed() < Duration::from_millis(200),
        "ep_connect returned at once"
    );
    assert!(
        log.of(id).is_empty(),
        "nothing happens before the loop runs"
    );
    assert_eq!(send(lp.0, id, b"queued while resolving"), 0);
    run_until(lp.0, "on_accept", || !log.of(id).is_empty());
    assert_eq!(log.of(id), vec![Ev::Up(0)]);
    let (mut peer, _) = server.accept().unwrap();
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    let mut got = [0u8; 22];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"queued while resolving");
    // SAFETY: live loop, live id.
    assert!(unsafe { ep_fd(lp.0, id) } >= 0);
    // SAFETY: live loop, live id.
    assert_eq!(unsafe { ep_close(lp.0, id) }, 0);
    run_until(lp.0, "on_close", || log.closed(id));
    assert_eq!(log.of(id), vec![Ev::Up(0), Ev::Close(LOCAL, 0)]);
}

#[test]
fn a_refused_name_is_one_on_close_with_the_errno() {
    let lp = OwnedLoop::new();
    let log = Log::default();
    let id = connect(lp.0, "localhost", closed_port(), 0, &log);
    run_until(lp.0, "on_close", || log.closed(id));
    assert_eq!(log.of(id), vec![Ev::Close(ERROR, libc::ECONNREFUSED)]);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_close(lp.0, id) }, EP_ESTALE);
}

#[test]
fn a_name_that_does_not_resolve_is_one_on_close_named_by_ep_strerror() {
    let lp = OwnedLoop::new();
    let log = Log::default();
    let began = Instant::now();
    let id = connect(lp.0, UNRESOLVABLE, 80, 0, &log);
    run_until(lp.0, "on_close", || log.closed(id));
    assert!(began.elapsed() < LIMIT);
    assert_eq!(log.of(id), vec![Ev::Close(ERROR, -EP_EAI_NONAME)]);
    // SAFETY: ep_strerror returns a static NUL-terminated string.
    let text = unsafe { CStr::from_ptr(ep_strerror(EP_EAI_NONAME)) };
    assert_eq!(text.to_str().unwrap(), "Name or service not known");
    // SAFETY: as above.
    let again = unsafe { CStr::from_ptr(ep_strerror(EP_EAI_AGAIN)) };
    assert_ne!(again, text, "each EAI code has its own name");
    // SAFETY: live loop: nothing more is called for the id.
    assert_eq!(unsafe { ep_run_once(lp.0, 0) }, EP_RUN_EMPTY);
    assert_eq!(log.of(id).len(), 1);
}

#[test]
fn close_and_abort_while_resolving_end_the_id_once() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let lp = OwnedLoop::new();
    let log = Log::default();
    let closed_now = connect(lp.0, "localhost", port, 0, &log);
    let aborted = connect(lp.0, "localhost", port, 0, &log);
    let flushing = connect(lp.0, "localhost", port, 0, &log);
    // SAFETY: live loop, live ids, before any answer could be taken.
    unsafe {
        assert_eq!(ep_close(lp.0, closed_now), 0);
        assert_eq!(ep_abort(lp.0, aborted), 0);
        assert_eq!(send(lp.0, flushing, b"last words"), 0);
        assert_eq!(ep_close(lp.0, flushing), 0);
        assert_eq!(ep_close(lp.0, closed_now), EP_ECLOSING);
    }
    // The queued bytes of a graceful close go out once connected; the others never connect.
    run_until(lp.0, "three closes", || {
        [closed_now, aborted, flushing]
            .iter()
            .all(|&id| log.closed(id))
    });
    // Long enough for the lookups of the closed ones to come back and be ignored.
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        // SAFETY: live loop.
        unsafe { ep_run_once(lp.0, 20) };
    }
    assert_eq!(log.of(closed_now), vec![Ev::Close(LOCAL, 0)]);
    assert_eq!(log.of(aborted), vec![Ev::Close(ABORT, 0)]);
    assert_eq!(log.of(flushing), vec![Ev::Close(LOCAL, 0)]);
    let (mut peer, _) = server.accept().unwrap();
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
}

#[test]
fn freeing_the_loop_while_resolving_neither_waits_nor_crashes() {
    let log = Log::default();
    for _ in 0..20 {
        let lp = ep_loop_new();
        let a = connect(lp, "localhost", 9, 0, &log);
        let b = connect(lp, UNRESOLVABLE, 9, 0, &log);
        let began = Instant::now();
        // SAFETY: live loop, freed once.
        unsafe { ep_loop_free(lp) };
        assert!(
            began.elapsed() < Duration::from_millis(100),
            "ep_loop_free waited"
        );
        assert_eq!(log.of(a), vec![Ev::Close(LOOP_FREED, 0)]);
        assert_eq!(log.of(b), vec![Ev::Close(LOOP_FREED, 0)]);
        // New loops (and their eventfds, maybe with the same numbers) while lookups finish.
        let other = OwnedLoop::new();
        // SAFETY: live loop.
        assert_eq!(unsafe { ep_run_once(other.0, 5) }, EP_RUN_EMPTY);
    }
    // The lookups end on their own; nothing is called for the freed loops' ids.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(log.0.borrow().len(), 40);
}

#[test]
fn the_connect_timeout_covers_the_whole_attempt() {
    // The deadline runs from ep_connect, lookup included: a 1 ms timeout ends the connection
    // before the lookup's answer is taken (or, on a fast machine, the refusal comes first).
    let lp = OwnedLoop::new();
    let log = Log::default();
    let id = connect(lp.0, "localhost", closed_port(), 1, &log);
    std::thread::sleep(Duration::from_millis(5));
    run_until(lp.0, "on_close", || log.closed(id));
    let events = log.of(id);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        matches!(events[0], Ev::Close(TIMEOUT, e) if e == libc::ETIMEDOUT)
            || events[0] == Ev::Close(ERROR, libc::ECONNREFUSED),
        "{events:?}"
    );
}

#[test]
fn numeric_hosts_and_bad_arguments_keep_their_immediate_answers() {
    let lp = OwnedLoop::new();
    let log = Log::default();
    // SAFETY: live loop, NUL-terminated strings, static callbacks.
    unsafe {
        assert_eq!(
            ep_connect(lp.0, c"".as_ptr(), 80, 0, 0, &OUTBOUND, log.user()),
            -i64::from(libc::EINVAL)
        );
        assert_eq!(
            ep_connect(lp.0, null_mut(), 80, 0, 0, &OUTBOUND, log.user()),
            i64::from(EP_ENULL)
        );
    }
    let id = connect(lp.0, "127.0.0.1", closed_port(), 0, &log);
    // A numeric host's socket exists at once (no placeholder): it is a TCP socket.
    // SAFETY: live loop and id.
    let fd = unsafe { ep_fd(lp.0, id) };
    let mut kind: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: valid fd and out buffers.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut c_int).cast(),
            &mut len,
        )
    };
    assert_eq!((rc, kind), (0, libc::SOCK_STREAM));
    run_until(lp.0, "on_close", || log.closed(id));
    assert_eq!(log.of(id), vec![Ev::Close(ERROR, libc::ECONNREFUSED)]);
}
