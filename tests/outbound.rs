//! Outbound connections (ep_connect, ep_connect_unix) and Unix listeners (ep_listen_unix),
//! through the C ABI on real sockets. The server side is the common recording harness; the
//! outbound side is recorded by a [`Peer`] of this file, because its success arrives as
//! on_accept with listener 0, which the harness would rightly reject for its own listeners.

mod common;

use common::*;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::{c_int, c_void, CString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The outbound side's recorder

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PEv {
    /// on_accept: for ep_connect, `listener` must be 0.
    Up {
        listener: u64,
    },
    Data(usize),
    Writable,
    Close {
        reason: i32,
        err: i32,
    },
}

type PeerHook = Box<dyn FnMut(*mut ep_loop, u64, &PEv, &[u8])>;

/// Records every callback of the registrations it is the user pointer of, per id, and runs a
/// test hook after each. A panicking hook becomes a recorded violation (callbacks are extern "C").
#[derive(Default)]
struct Peer {
    log: RefCell<BTreeMap<u64, Vec<PEv>>>,
    data: RefCell<BTreeMap<u64, Vec<u8>>>,
    hook: RefCell<Option<PeerHook>>,
    violations: RefCell<Vec<String>>,
    depth: Cell<u32>,
}

impl Peer {
    fn new() -> Rc<Peer> {
        Rc::new(Peer::default())
    }

    fn user(self: &Rc<Self>) -> *mut c_void {
        Rc::as_ptr(self) as *mut c_void
    }

    fn set_hook(&self, hook: impl FnMut(*mut ep_loop, u64, &PEv, &[u8]) + 'static) {
        *self.hook.borrow_mut() = Some(Box::new(hook));
    }

    fn events(&self, id: u64) -> Vec<PEv> {
        self.log.borrow().get(&id).cloned().unwrap_or_default()
    }

    fn data(&self, id: u64) -> Vec<u8> {
        self.data.borrow().get(&id).cloned().unwrap_or_default()
    }

    fn close_of(&self, id: u64) -> Option<(i32, i32)> {
        self.events(id).iter().find_map(|e| match *e {
            PEv::Close { reason, err } => Some((reason, err)),
            _ => None,
        })
    }

    fn is_up(&self, id: u64) -> bool {
        self.events(id).iter().any(|e| matches!(e, PEv::Up { .. }))
    }

    fn record(&self, lp: *mut ep_loop, id: u64, ev: PEv, bytes: &[u8]) {
        self.depth.set(self.depth.get() + 1);
        if self.depth.get() > 1 {
            self.violations
                .borrow_mut()
                .push(format!("nested callback {ev:?} for {id:#x}"));
        }
        {
            let mut log = self.log.borrow_mut();
            let events = log.entry(id).or_default();
            if events.iter().any(|e| matches!(e, PEv::Close { .. })) {
                self.violations
                    .borrow_mut()
                    .push(format!("{ev:?} for {id:#x} after its on_close"));
            }
            events.push(ev);
        }
        if !bytes.is_empty() {
            self.data
                .borrow_mut()
                .entry(id)
                .or_default()
                .extend_from_slice(bytes);
        }
        let hook = self.hook.borrow_mut().take();
        if let Some(mut hook) = hook {
            let result = catch_unwind(AssertUnwindSafe(|| hook(lp, id, &ev, bytes)));
            let mut slot = self.hook.borrow_mut();
            if slot.is_none() {
                *slot = Some(hook);
            }
            drop(slot);
            if let Err(panic) = result {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.violations
                    .borrow_mut()
                    .push(format!("hook panicked on {ev:?} for {id:#x}: {msg}"));
            }
        }
        self.depth.set(self.depth.get() - 1);
    }

    /// The outbound oracle for `id`: at most one Up (listener 0) first, then data/writable,
    /// exactly one close, last; and no violation anywhere.
    fn check(&self, id: u64) {
        let events = self.events(id);
        let mut problems = self.violations.borrow().clone();
        let ups: Vec<usize> = (0..events.len())
            .filter(|&i| matches!(events[i], PEv::Up { .. }))
            .collect();
        if ups.len() > 1 || ups.first().is_some_and(|&i| i != 0) {
            problems.push(format!("on_accept must come once, first: {events:?}"));
        }
        if let Some(PEv::Up { listener }) = events.first() {
            if *listener != 0 {
                problems.push(format!(
                    "outbound on_accept with listener {listener:#x}, not 0"
                ));
            }
        }
        let closes = events
            .iter()
            .filter(|e| matches!(e, PEv::Close { .. }))
            .count();
        if closes != 1 || !matches!(events.last(), Some(PEv::Close { .. })) {
            problems.push(format!("want exactly one on_close, last: {events:?}"));
        }
        if ups.is_empty() && events.iter().any(|e| matches!(e, PEv::Data(_))) {
            problems.push(format!("data before the connection was up: {events:?}"));
        }
        assert!(problems.is_empty(), "{id:#x}: {}", problems.join("\n  "));
    }
}

/// # Safety
/// `user` must point at a live Peer (every registration made with PEER_CBS passes one).
unsafe fn peer<'a>(user: *mut c_void) -> &'a Peer {
    // SAFETY: see above.
    unsafe { &*(user as *const Peer) }
}

unsafe extern "C" fn peer_on_accept(
    lp: *mut ep_loop,
    listener: ep_id,
    conn: ep_id,
    user: *mut c_void,
) {
    // SAFETY: PEER_CBS registrations carry a live Peer.
    unsafe { peer(user) }.record(lp, conn, PEv::Up { listener }, &[]);
}

unsafe extern "C" fn peer_on_data(
    lp: *mut ep_loop,
    conn: ep_id,
    data: *const u8,
    len: usize,
    user: *mut c_void,
) {
    let bytes: &[u8] = if len == 0 || data.is_null() {
        &[]
    } else {
        // SAFETY: the library lends `len` bytes at `data` for the call.
        unsafe { std::slice::from_raw_parts(data, len) }
    };
    // SAFETY: as above.
    unsafe { peer(user) }.record(lp, conn, PEv::Data(len), bytes);
}

unsafe extern "C" fn peer_on_writable(lp: *mut ep_loop, conn: ep_id, user: *mut c_void) {
    // SAFETY: as above.
    unsafe { peer(user) }.record(lp, conn, PEv::Writable, &[]);
}

unsafe extern "C" fn peer_on_close(
    lp: *mut ep_loop,
    conn: ep_id,
    reason: ep_close_reason,
    err: c_int,
    user: *mut c_void,
) {
    let ev = PEv::Close {
        reason: reason as i32,
        err,
    };
    // SAFETY: as above.
    unsafe { peer(user) }.record(lp, conn, ev, &[]);
}

static PEER_CBS: ep_callbacks = ep_callbacks {
    on_accept: Some(peer_on_accept),
    on_data: Some(peer_on_data),
    on_writable: Some(peer_on_writable),
    on_close: Some(peer_on_close),
};

fn try_connect(
    h: &Harness,
    host: &str,
    port: u16,
    timeout_ms: u32,
    flags: u32,
    p: &Rc<Peer>,
) -> i64 {
    let c = CString::new(host).unwrap();
    // SAFETY: live loop; valid C string; static callbacks; the Peer outlives the loop's use of it
    // (every test frees the loop before dropping its Peer).
    unsafe {
        ep_connect(
            h.lp,
            c.as_ptr(),
            port,
            timeout_ms,
            flags,
            &PEER_CBS,
            p.user(),
        )
    }
}

fn connect_out(
    h: &Harness,
    host: &str,
    port: u16,
    timeout_ms: u32,
    flags: u32,
    p: &Rc<Peer>,
) -> u64 {
    let id = try_connect(h, host, port, timeout_ms, flags, p);
    assert!(
        id > 0,
        "ep_connect({host}, {port}) failed: {id} ({})",
        strerror(id as i32)
    );
    id as u64
}

fn try_connect_unix(h: &Harness, path: &str, timeout_ms: u32, flags: u32, p: &Rc<Peer>) -> i64 {
    let c = CString::new(path).unwrap();
    // SAFETY: as in try_connect.
    unsafe { ep_connect_unix(h.lp, c.as_ptr(), timeout_ms, flags, &PEER_CBS, p.user()) }
}

fn connect_unix_out(h: &Harness, path: &str, flags: u32, p: &Rc<Peer>) -> u64 {
    let id = try_connect_unix(h, path, 0, flags, p);
    assert!(
        id > 0,
        "ep_connect_unix({path}) failed: {id} ({})",
        strerror(id as i32)
    );
    id as u64
}

fn try_listen_unix(h: &Harness, path: &str, backlog: i32, flags: u32) -> i64 {
    let c = CString::new(path).unwrap();
    // SAFETY: live loop; valid C string; the harness's static callbacks and recorder.
    let id = unsafe { ep_listen_unix(h.lp, c.as_ptr(), backlog, flags, &CALLBACKS, h.user()) };
    if id > 0 {
        h.rec.registered(id as u64);
    }
    id
}

fn listen_unix(h: &Harness, path: &str, flags: u32) -> u64 {
    let id = try_listen_unix(h, path, 0, flags);
    assert!(
        id > 0,
        "ep_listen_unix({path}) failed: {id} ({})",
        strerror(id as i32)
    );
    id as u64
}

fn run_until_peer_closed(h: &Harness, p: &Peer, id: u64) -> (i32, i32) {
    h.run_until(&format!("on_close of outbound {id:#x}"), |_| {
        p.close_of(id).is_some()
    });
    p.close_of(id).unwrap()
}

/// A port nothing listens on: bound once by us, then closed.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A unique scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "eploop-outbound-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn abstract_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("@eploop-test-{}-{tag}-{nanos}", std::process::id())
}

/// The echo-through-the-loop scenario shared by TCP and Unix: `first` bytes sent before the
/// connection is up, the rest from on_accept; the outbound side closes once all came back.
/// Returns the server side's accepted id.
fn echo_round_trip(h: &Harness, p: &Rc<Peer>, id: u64, total: usize, first: usize) -> u64 {
    let payload = pattern(id, 0, total);
    let r = send(h.lp, id, &payload[..first]);
    assert!(
        r == 0 || r == 1,
        "ep_send before the connection is up: {r} ({})",
        strerror(r)
    );
    {
        let rest = payload[first..].to_vec();
        p.set_hook(move |lp, conn, ev, _| {
            if let PEv::Up { .. } = *ev {
                let r = send(lp, conn, &rest);
                assert!(r == 0 || r == 1, "ep_send in on_accept: {r}");
            }
        });
    }
    let p2 = p.clone();
    h.run_until("the whole echo", move |_| p2.data(id).len() >= total);
    assert_eq!(close(h.lp, id), 0);
    assert_eq!(run_until_peer_closed(h, p, id), (LOCAL, 0));
    assert!(p.data(id) == payload, "echoed bytes differ from those sent");
    let accepted = h.rec.accepted();
    assert_eq!(accepted.len(), 1, "server accepted {accepted:?}");
    let server = accepted[0];
    assert_eq!(h.run_until_closed(server), (PEER_EOF, 0));
    assert!(h.rec.data(server) == payload, "server received other bytes");
    p.check(id);
    server
}

// ---------------------------------------------------------------------------------------------
// TCP

both_modes!(connect_in_the_same_loop_echoes_both_ways);
/// ep_connect to a listener of the same loop: on_accept(listener 0) on the outbound side, bytes
/// sent before the connection is up and from on_accept arrive, the echo comes back.
fn connect_in_the_same_loop_echoes_both_ways(flags: u32) {
    let p = Peer::new();
    let h = Harness::new();
    h.rec.set_keep_data(true);
    h.rec.set_hook(echo);
    let (_, port) = h.listen("127.0.0.1", flags);
    let id = connect_out(&h, "127.0.0.1", port, 1000, flags, &p);
    assert!(!p.is_up(id), "on_accept ran inside ep_connect");
    echo_round_trip(&h, &p, id, 300 * 1024, 100 * 1024);
    h.finish();
    p.check(id);
}

/// The commonest client: connect, send a request, close — all before the loop ran once. The
/// graceful close must still deliver the queued bytes (a graceful close is graceful), then EOF.
#[test]
fn send_then_close_before_connected_still_delivers() {
    let p = Peer::new();
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", 0);
    let id = connect_out(&h, "127.0.0.1", port, 0, 0, &p);
    assert_eq!(send(h.lp, id, b"request before connect"), 0);
    assert_eq!(close(h.lp, id), 0);
    let server = h.run_until_accepted(1)[0];
    assert_eq!(h.run_until_closed(server), (PEER_EOF, 0));
    assert_eq!(h.rec.data(server), b"request before connect");
    assert_eq!(run_until_peer_closed(&h, &p, id), (LOCAL, 0));
    h.finish();
    p.check(id);
}

/// A closed port: exactly one on_close(EP_CLOSE_ERROR, ECONNREFUSED), no on_accept, and the loop
/// is empty afterwards.
#[test]
fn refused_connect_is_one_close_with_econnrefused() {
    let p = Peer::new();
    let h = Harness::new();
    let id = connect_out(&h, "127.0.0.1", closed_port(), 1000, 0, &p);
    assert_eq!(
        run_until_peer_closed(&h, &p, id),
        (ERROR, libc::ECONNREFUSED)
    );
    assert!(
        !p.is_up(id),
        "refused connection reported up: {:?}",
        p.events(id)
    );
    assert_eq!(h.run_once(0), EP_RUN_EMPTY);
    assert_eq!(send(h.lp, id, b"x"), EP_ESTALE);
    h.finish();
    p.check(id);
}

/// A TCP listener whose accept queue is full and never accepted from: the kernel drops further
/// SYNs, so a connect stays in progress. Returns the listener and the connections filling it.
fn blackhole() -> (OwnedFd, u16, Vec<TcpStream>) {
    // SAFETY: plain socket calls on a fresh fd we own.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &sin as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(fd, 1), 0);
        OwnedFd::from_raw_fd(fd)
    };
    let port = local_port_of(fd.as_raw_fd());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut fill = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fill.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (fd, port, fill),
            Err(e) => panic!("filling the backlog: {e}"),
        }
    }
    panic!("16 connections completed against a listen(fd, 1) that never accepts");
}

fn local_port_of(fd: RawFd) -> u16 {
    // SAFETY: getsockname writes at most `len` bytes into a sockaddr_in-sized buffer.
    unsafe {
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::getsockname(fd, &mut sin as *mut _ as *mut libc::sockaddr, &mut len),
            0
        );
        u16::from_be(sin.sin_port)
    }
}

/// A connect that cannot complete ends with on_close(EP_CLOSE_TIMEOUT, ETIMEDOUT) after its
/// timeout, not before, and never reports on_accept.
#[test]
fn connect_timeout_is_one_close_with_etimedout() {
    let (_listener, port, _fill) = blackhole();
    let p = Peer::new();
    let h = Harness::new();
    let started = Instant::now();
    let id = connect_out(&h, "127.0.0.1", port, 200, 0, &p);
    assert_eq!(
        run_until_peer_closed(&h, &p, id),
        (TIMEOUT, libc::ETIMEDOUT)
    );
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(200),
        "timed out early: {after:?}"
    );
    assert!(after < Duration::from_secs(2), "timed out late: {after:?}");
    assert!(!p.is_up(id));
    h.finish();
    p.check(id);
}

/// ep_close and ep_abort while the connect is in progress end it at once with their reason.
#[test]
fn close_and_abort_while_connecting() {
    let (_listener, port, _fill) = blackhole();
    let p = Peer::new();
    let h = Harness::new();
    let closing = connect_out(&h, "127.0.0.1", port, 0, 0, &p);
    let aborting = connect_out(&h, "127.0.0.1", port, 0, 0, &p);
    h.run_for(Duration::from_millis(20));
    assert_eq!(close(h.lp, closing), 0);
    assert_eq!(abort(h.lp, aborting), 0);
    assert_eq!(run_until_peer_closed(&h, &p, closing), (LOCAL, 0));
    assert_eq!(run_until_peer_closed(&h, &p, aborting).0, ABORT);
    assert_eq!(h.run_once(0), EP_RUN_EMPTY);
    h.finish();
    p.check(closing);
    p.check(aborting);
}

/// The connect timeout ends with the connect: an established connection outlives it.
#[test]
fn connect_timeout_does_not_apply_once_connected() {
    let p = Peer::new();
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", 0);
    let id = connect_out(&h, "127.0.0.1", port, 100, 0, &p);
    let p2 = p.clone();
    h.run_until("connected", move |_| p2.is_up(id));
    h.run_for(Duration::from_millis(300));
    assert_eq!(
        p.close_of(id),
        None,
        "closed after connecting: {:?}",
        p.events(id)
    );
    assert_eq!(close(h.lp, id), 0);
    assert_eq!(run_until_peer_closed(&h, &p, id), (LOCAL, 0));
    h.finish();
    p.check(id);
}

/// IPv6 loopback, and "localhost".
#[test]
fn connect_over_ipv6_and_localhost() {
    for (listen_on, host) in [("::1", "::1"), ("127.0.0.1", "localhost")] {
        let p = Peer::new();
        let h = Harness::new();
        h.rec.set_hook(echo);
        let (_, port) = h.listen(listen_on, 0);
        let id = connect_out(&h, host, port, 1000, 0, &p);
        echo_round_trip(&h, &p, id, 2000, 1000);
        h.finish();
        p.check(id);
    }
    // The family really is IPv6.
    let p = Peer::new();
    let h = Harness::new();
    let (_, port) = h.listen("::1", 0);
    let id = connect_out(&h, "::1", port, 1000, 0, &p);
    let p2 = p.clone();
    h.run_until("connected", move |_| p2.is_up(id));
    // SAFETY: live loop.
    let fd = unsafe { ep_fd(h.lp, id) };
    assert!(fd >= 0);
    // SAFETY: getpeername writes at most `len` bytes into a sockaddr_storage.
    let family = unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        assert_eq!(
            libc::getpeername(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len),
            0
        );
        ss.ss_family as c_int
    };
    assert_eq!(family, libc::AF_INET6);
    h.finish();
}

/// Bad arguments are refused at once with nothing registered.
#[test]
fn bad_connect_arguments() {
    let p = Peer::new();
    let h = Harness::new();
    // A name ("example.com", "256.0.0.1") is resolved off the loop's thread now: its failure is
    // the connection's on_close (tests/resolve.rs). What cannot be a host is refused at once.
    for host in ["", "*", "127.0.0.1:80", "::1%", "[::1]"] {
        assert_eq!(
            try_connect(&h, host, 80, 0, 0, &p),
            -i64::from(libc::EINVAL),
            "host {host:?}"
        );
    }
    assert_eq!(
        try_connect(&h, "127.0.0.1", 80, 0, 0x100, &p),
        -i64::from(libc::EINVAL),
        "flags"
    );
    // SAFETY: NULL host / NULL callbacks / NULL loop must be rejected.
    unsafe {
        assert_eq!(
            ep_connect(h.lp, null(), 80, 0, 0, &PEER_CBS, null_mut()),
            i64::from(EP_ENULL)
        );
        let host = CString::new("127.0.0.1").unwrap();
        assert_eq!(
            ep_connect(h.lp, host.as_ptr(), 80, 0, 0, null(), null_mut()),
            i64::from(EP_ENULL)
        );
        assert_eq!(
            ep_connect(null_mut(), host.as_ptr(), 80, 0, 0, &PEER_CBS, null_mut()),
            i64::from(EP_ENULL)
        );
        assert_eq!(
            ep_connect_unix(h.lp, null(), 0, 0, &PEER_CBS, null_mut()),
            i64::from(EP_ENULL)
        );
        assert_eq!(
            ep_listen_unix(h.lp, null(), 0, 0, &CALLBACKS, null_mut()),
            i64::from(EP_ENULL)
        );
    }
    assert_eq!(
        h.run_once(0),
        EP_RUN_EMPTY,
        "a failed call left a registration"
    );
    assert!(
        p.log.borrow().is_empty(),
        "callbacks for refused calls: {:?}",
        p.log.borrow()
    );
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// Unix domain sockets

both_modes!(unix_listen_and_connect_echo);
/// ep_listen_unix + ep_connect_unix in one loop: the same callbacks, the same echo.
fn unix_listen_and_connect_echo(flags: u32) {
    let dir = Scratch::new();
    let path = dir.path("echo.sock");
    let p = Peer::new();
    let h = Harness::new();
    h.rec.set_hook(echo);
    let listener = listen_unix(&h, &path, flags);
    assert!(Path::new(&path).exists(), "no socket file at {path}");
    // SAFETY: live loop.
    let port = unsafe { ep_local_port(h.lp, listener) };
    assert_eq!(
        port,
        -libc::EAFNOSUPPORT,
        "ep_local_port of a Unix listener"
    );
    let id = connect_unix_out(&h, &path, flags, &p);
    echo_round_trip(&h, &p, id, 200 * 1024, 64 * 1024);
    h.finish();
    p.check(id);
}

/// A plain client (std UnixStream) is accepted by ep_listen_unix like any connection.
#[test]
fn unix_listener_accepts_a_plain_client() {
    let dir = Scratch::new();
    let path = dir.path("plain.sock");
    let h = Harness::new();
    h.rec.set_hook(echo);
    listen_unix(&h, &path, 0);
    let mut client = UnixStream::connect(&path).unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    let conn = h.run_until_accepted(1)[0];
    client.write_all(b"over a unix socket").unwrap();
    let reader = {
        let mut c = client.try_clone().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 18];
            c.read_exact(&mut buf).map(|_| buf)
        })
    };
    h.run_until("echo read", |_| reader.is_finished());
    assert_eq!(&reader.join().unwrap().unwrap(), b"over a unix socket");
    drop(client);
    assert_eq!(h.run_until_closed(conn), (PEER_EOF, 0));
    h.finish();
}

/// Abstract names ("@name"): no file is created, and connect finds the listener.
#[test]
fn unix_abstract_socket() {
    let name = abstract_name("abs");
    let p = Peer::new();
    let h = Harness::new();
    h.rec.set_hook(echo);
    listen_unix(&h, &name, 0);
    assert!(
        !Path::new(&name).exists(),
        "a file named {name} was created"
    );
    let id = connect_unix_out(&h, &name, 0, &p);
    echo_round_trip(&h, &p, id, 5000, 100);
    h.finish();
    p.check(id);
}

/// A stale socket file (its listener is gone) is replaced; a regular file is left alone and the
/// listen fails.
#[test]
fn unix_stale_socket_replaced_regular_file_refused() {
    let dir = Scratch::new();
    let stale = dir.path("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(
        Path::new(&stale).exists(),
        "std removed the file; the test needs it stale"
    );
    assert!(
        UnixStream::connect(&stale).is_err(),
        "the stale file still answers"
    );

    let p = Peer::new();
    let h = Harness::new();
    h.rec.set_hook(echo);
    listen_unix(&h, &stale, 0);
    let id = connect_unix_out(&h, &stale, 0, &p);
    echo_round_trip(&h, &p, id, 1000, 10);

    let regular = dir.path("regular.txt");
    std::fs::write(&regular, b"keep me").unwrap();
    let r = try_listen_unix(&h, &regular, 0, 0);
    assert_eq!(
        r,
        -i64::from(libc::EADDRINUSE),
        "listen over a regular file: {}",
        strerror(r as i32)
    );
    assert_eq!(
        std::fs::read(&regular).unwrap(),
        b"keep me",
        "the regular file was touched"
    );
    h.finish();
    p.check(id);
}

/// Paths: sun_path holds 107 bytes plus a NUL; longer is -ENAMETOOLONG (listen and connect, with
/// nothing registered); an abstract name may use all 107 bytes after the '@'... up to the limit.
#[test]
fn unix_path_limits() {
    let h = Harness::new();
    let p = Peer::new();
    let long = format!("/tmp/{}", "x".repeat(200));
    assert_eq!(
        try_listen_unix(&h, &long, 0, 0),
        -i64::from(libc::ENAMETOOLONG)
    );
    assert_eq!(
        try_connect_unix(&h, &long, 0, 0, &p),
        -i64::from(libc::ENAMETOOLONG)
    );
    assert_eq!(
        try_listen_unix(&h, "", 0, 0),
        -i64::from(libc::EINVAL),
        "empty path"
    );
    assert_eq!(h.run_once(0), EP_RUN_EMPTY);

    // The longest abstract name: '@' plus 106 bytes fills sun_path's 107 usable bytes.
    let base = abstract_name("max");
    let longest = format!("{base}{}", "y".repeat(107 - base.len()));
    assert_eq!(longest.len(), 107);
    listen_unix(&h, &longest, 0);
    let id = connect_unix_out(&h, &longest, 0, &p);
    let p2 = p.clone();
    h.run_until("connected over the longest abstract name", move |_| {
        p2.is_up(id)
    });
    let too_long = format!("{longest}z");
    assert_eq!(
        try_listen_unix(&h, &too_long, 0, 0),
        -i64::from(libc::ENAMETOOLONG)
    );
    assert_eq!(close(h.lp, id), 0);
    run_until_peer_closed(&h, &p, id);
    h.finish();
    p.check(id);
}

/// Connect failures on Unix sockets are one on_close with the errno: no such file (ENOENT), a
/// socket file nobody listens on (ECONNREFUSED), a listener whose backlog is full (EAGAIN,
/// immediately: Linux does not queue Unix connects, so there is nothing to time out).
#[test]
fn unix_connect_failures() {
    let dir = Scratch::new();
    let p = Peer::new();
    let h = Harness::new();

    let missing = connect_unix_out(&h, &dir.path("missing.sock"), 0, &p);
    assert_eq!(
        run_until_peer_closed(&h, &p, missing),
        (ERROR, libc::ENOENT)
    );

    let stale = dir.path("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let refused = connect_unix_out(&h, &stale, 0, &p);
    assert_eq!(
        run_until_peer_closed(&h, &p, refused),
        (ERROR, libc::ECONNREFUSED)
    );

    let full = dir.path("full.sock");
    let listener = UnixListener::bind(&full).unwrap();
    // SAFETY: listen() on our own socket, to shrink its backlog to 0.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let mut fill = Vec::new();
    for _ in 0..64 {
        match nonblocking_unix_connect(&full) {
            Ok(fd) => fill.push(fd),
            Err(e) if e == libc::EAGAIN => break,
            Err(e) => panic!("filling the unix backlog: errno {e}"),
        }
    }
    assert!(
        matches!(nonblocking_unix_connect(&full), Err(libc::EAGAIN)),
        "backlog never filled"
    );
    let started = Instant::now();
    let busy = try_connect_unix(&h, &full, 2000, 0, &p);
    assert!(busy > 0, "ep_connect_unix: {busy}");
    let busy = busy as u64;
    assert_eq!(run_until_peer_closed(&h, &p, busy), (ERROR, libc::EAGAIN));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "EAGAIN was not reported at once"
    );
    for id in [missing, refused, busy] {
        assert!(!p.is_up(id), "{id:#x} reported up: {:?}", p.events(id));
        p.check(id);
    }
    drop((fill, listener));
    h.finish();
}

fn nonblocking_unix_connect(path: &str) -> Result<OwnedFd, c_int> {
    // SAFETY: plain socket calls on a fresh fd; the sockaddr_un is filled within its bounds.
    unsafe {
        let fd = libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0);
        let owned = OwnedFd::from_raw_fd(fd);
        let mut sun: libc::sockaddr_un = std::mem::zeroed();
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in sun.sun_path.iter_mut().zip(path.as_bytes()) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(fd, &sun as *const _ as *const libc::sockaddr, len) == 0 {
            Ok(owned)
        } else {
            Err(*libc::__errno_location())
        }
    }
}
