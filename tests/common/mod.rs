//! Shared harness for the tests that drive eploop's C ABI from Rust.
//!
//! A [`Harness`] owns one loop and one [`Recorder`]; every registration made through the
//! harness passes the recorder as `user` and the recording callbacks in [`CALLBACKS`]. The
//! recorder keeps, per id, the ordered events, and notes every contract violation it can see
//! while the loop runs (a callback nested in another, an event for an unknown id or after its
//! `on_close`, a wrong loop pointer, a test hook that panicked). [`Harness::finish`] frees the
//! loop and applies the oracle to every id: accept → data* → exactly one close, nothing after.
//!
//! Test-specific behaviour lives in a hook closure, called after each event is recorded.
//! Callbacks are `extern "C"`, so a panic there would abort the whole test binary: the hook is
//! run under `catch_unwind` and a panic becomes a recorded violation instead.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::{c_int, c_void, CString};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub use eploop::*;

/// Close reasons as fixed by the C contract (include/eploop.h), independent of how the crate
/// spells its enum in Rust.
pub const PEER_EOF: i32 = 1;
pub const PEER_RESET: i32 = 2;
pub const ERROR: i32 = 3;
pub const LOCAL: i32 = 4;
pub const ABORT: i32 = 5;
pub const TIMEOUT: i32 = 6;
pub const LOOP_FREED: i32 = 7;

/// Both trigger modes, for tests that must behave identically in each.
pub const MODES: [(&str, u32); 2] = [("level", 0), ("edge", EP_EDGE)];

/// Upper bound for any single wait in a test.
pub const LIMIT: Duration = Duration::from_secs(10);

/// `both_modes!(f)` next to `fn f(flags: u32)` generates the tests `f::level` and `f::edge`.
#[macro_export]
macro_rules! both_modes {
    ($name:ident) => {
        mod $name {
            #[test]
            fn level() {
                super::$name(0)
            }
            #[test]
            fn edge() {
                super::$name(eploop::EP_EDGE)
            }
        }
    };
}

pub fn reason_name(reason: i32) -> &'static str {
    match reason {
        PEER_EOF => "peer_eof",
        PEER_RESET => "peer_reset",
        ERROR => "error",
        LOCAL => "local",
        ABORT => "abort",
        TIMEOUT => "timeout",
        LOOP_FREED => "loop_freed",
        _ => "INVALID",
    }
}

// ---------------------------------------------------------------------------------------------
// Recorder

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Created by the test through `ep_listen` / `ep_register`.
    Registered,
    /// Created by the loop and announced through `on_accept`.
    Accepted { listener: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ev {
    Accept,
    Data(usize),
    /// `on_data(conn, NULL, 0)`: peer EOF under `EP_HALF_CLOSE`.
    Eof,
    Writable,
    Close {
        reason: i32,
        err: i32,
    },
}

#[derive(Debug)]
pub struct ConnLog {
    pub kind: Kind,
    pub events: Vec<Ev>,
    pub bytes: u64,
    /// Every byte delivered, when the recorder keeps data.
    pub data: Vec<u8>,
    /// FNV-1a of every byte delivered.
    pub hash: Fnv,
    pub peer_port: Option<u16>,
}

impl ConnLog {
    fn new(kind: Kind) -> Self {
        ConnLog {
            kind,
            events: Vec::new(),
            bytes: 0,
            data: Vec::new(),
            hash: Fnv::new(),
            peer_port: None,
        }
    }

    pub fn close(&self) -> Option<(i32, i32)> {
        self.events.iter().find_map(|e| match *e {
            Ev::Close { reason, err } => Some((reason, err)),
            _ => None,
        })
    }

    pub fn count(&self, want: Ev) -> usize {
        self.events.iter().filter(|e| **e == want).count()
    }

    pub fn writables(&self) -> usize {
        self.count(Ev::Writable)
    }

    pub fn saw_eof(&self) -> bool {
        self.events.contains(&Ev::Eof)
    }
}

/// What a callback saw, handed to the test's hook after it is recorded.
#[derive(Debug)]
pub enum Event<'a> {
    Accept { listener: u64, conn: u64 },
    Data { conn: u64, data: &'a [u8] },
    Eof { conn: u64 },
    Writable { conn: u64 },
    Close { conn: u64, reason: i32, err: i32 },
}

impl Event<'_> {
    pub fn id(&self) -> u64 {
        match *self {
            Event::Accept { conn, .. }
            | Event::Data { conn, .. }
            | Event::Eof { conn }
            | Event::Writable { conn }
            | Event::Close { conn, .. } => conn,
        }
    }
}

pub type Hook = Box<dyn FnMut(&Recorder, *mut ep_loop, &Event<'_>)>;

pub struct Recorder {
    lp: Cell<*mut ep_loop>,
    logs: RefCell<BTreeMap<u64, ConnLog>>,
    accepted: RefCell<Vec<u64>>,
    violations: RefCell<Vec<String>>,
    hook: RefCell<Option<Hook>>,
    keep_data: Cell<bool>,
    freed: Cell<bool>,
    callbacks: Cell<u64>,
}

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

impl Recorder {
    /// A second recorder for `lp` (e.g. to hand to ep_set_user); it must outlive the loop.
    pub fn for_loop(lp: *mut ep_loop) -> Self {
        let rec = Self::new();
        rec.lp.set(lp);
        rec
    }

    fn new() -> Self {
        Recorder {
            lp: Cell::new(std::ptr::null_mut()),
            logs: RefCell::new(BTreeMap::new()),
            accepted: RefCell::new(Vec::new()),
            violations: RefCell::new(Vec::new()),
            hook: RefCell::new(None),
            keep_data: Cell::new(true),
            freed: Cell::new(false),
            callbacks: Cell::new(0),
        }
    }

    pub fn violate(&self, what: String) {
        self.violations.borrow_mut().push(what);
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.borrow().clone()
    }

    pub fn set_keep_data(&self, keep: bool) {
        self.keep_data.set(keep);
    }

    pub fn set_hook(&self, hook: impl FnMut(&Recorder, *mut ep_loop, &Event<'_>) + 'static) {
        *self.hook.borrow_mut() = Some(Box::new(hook));
    }

    /// Note an id the test created (ep_listen, ep_register), before any event for it.
    pub fn registered(&self, id: u64) {
        let mut logs = self.logs.borrow_mut();
        if logs.contains_key(&id) {
            drop(logs);
            self.violate(format!(
                "id {id:#x} returned twice (ids must never be reused)"
            ));
            return;
        }
        logs.insert(id, ConnLog::new(Kind::Registered));
    }

    pub fn with<R>(&self, id: u64, f: impl FnOnce(&ConnLog) -> R) -> R {
        let logs = self.logs.borrow();
        let log = logs
            .get(&id)
            .unwrap_or_else(|| panic!("no events recorded for id {id:#x}"));
        f(log)
    }

    pub fn known(&self, id: u64) -> bool {
        self.logs.borrow().contains_key(&id)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.logs.borrow().keys().copied().collect()
    }

    /// Connections in the order `on_accept` announced them.
    pub fn accepted(&self) -> Vec<u64> {
        self.accepted.borrow().clone()
    }

    pub fn accepted_count(&self) -> usize {
        self.accepted.borrow().len()
    }

    pub fn close_of(&self, id: u64) -> Option<(i32, i32)> {
        self.logs.borrow().get(&id).and_then(|l| l.close())
    }

    pub fn is_closed(&self, id: u64) -> bool {
        self.close_of(id).is_some()
    }

    pub fn bytes(&self, id: u64) -> u64 {
        self.logs.borrow().get(&id).map_or(0, |l| l.bytes)
    }

    pub fn data(&self, id: u64) -> Vec<u8> {
        self.logs
            .borrow()
            .get(&id)
            .map_or_else(Vec::new, |l| l.data.clone())
    }

    pub fn events(&self, id: u64) -> Vec<Ev> {
        self.logs
            .borrow()
            .get(&id)
            .map_or_else(Vec::new, |l| l.events.clone())
    }

    pub fn writables(&self, id: u64) -> usize {
        self.logs.borrow().get(&id).map_or(0, |l| l.writables())
    }

    pub fn closes(&self) -> usize {
        self.logs
            .borrow()
            .values()
            .filter(|l| l.close().is_some())
            .count()
    }

    pub fn callbacks(&self) -> u64 {
        self.callbacks.get()
    }

    /// The accepted connection whose peer (the test's client) has this local port.
    pub fn conn_for_port(&self, port: u16) -> Option<u64> {
        self.logs
            .borrow()
            .iter()
            .find(|(_, l)| l.peer_port == Some(port))
            .map(|(id, _)| *id)
    }

    /// One line per id, for failure messages.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (id, log) in self.logs.borrow().iter() {
            let mut evs: Vec<String> = Vec::new();
            let mut data_run = (0usize, 0usize);
            let flush = |evs: &mut Vec<String>, run: &mut (usize, usize)| {
                if run.0 > 0 {
                    evs.push(format!("data x{} ({} B)", run.0, run.1));
                    *run = (0, 0);
                }
            };
            for e in &log.events {
                match *e {
                    Ev::Data(n) => {
                        data_run.0 += 1;
                        data_run.1 += n;
                    }
                    other => {
                        flush(&mut evs, &mut data_run);
                        evs.push(match other {
                            Ev::Close { reason, err } => {
                                format!("close {} {}", reason_name(reason), err)
                            }
                            o => format!("{o:?}").to_lowercase(),
                        });
                    }
                }
            }
            flush(&mut evs, &mut data_run);
            out.push_str(&format!("\n  {id:#x} {:?}: {}", log.kind, evs.join(", ")));
        }
        for v in self.violations.borrow().iter() {
            out.push_str(&format!("\n  VIOLATION: {v}"));
        }
        out
    }

    /// The per-id oracle: accept → data* → exactly one close, nothing after it.
    /// `require_closed`: every id must have its close (true once the loop is freed).
    pub fn check(&self, require_closed: bool) {
        let mut problems = self.violations();
        for (id, log) in self.logs.borrow().iter() {
            let accepts = log.count(Ev::Accept);
            match log.kind {
                Kind::Accepted { .. } => {
                    if log.events.first() != Some(&Ev::Accept) || accepts != 1 {
                        problems.push(format!(
                            "{id:#x}: accepted id must start with one on_accept"
                        ));
                    }
                }
                Kind::Registered => {
                    if accepts != 0 {
                        problems.push(format!(
                            "{id:#x}: registered id got on_accept as a connection"
                        ));
                    }
                }
            }
            let closes = log
                .events
                .iter()
                .filter(|e| matches!(e, Ev::Close { .. }))
                .count();
            if closes > 1 {
                problems.push(format!("{id:#x}: {closes} on_close calls"));
            }
            if closes == 1 && !matches!(log.events.last(), Some(Ev::Close { .. })) {
                problems.push(format!("{id:#x}: events after on_close"));
            }
            if require_closed && closes == 0 {
                problems.push(format!("{id:#x}: never got on_close"));
            }
            if let Some(pos) = log.events.iter().position(|e| *e == Ev::Eof) {
                if log.events[pos + 1..]
                    .iter()
                    .any(|e| matches!(e, Ev::Data(_) | Ev::Eof))
                {
                    problems.push(format!("{id:#x}: data after the EOF on_data(NULL, 0)"));
                }
            }
            if let Some((reason, _)) = log.close() {
                if !(PEER_EOF..=LOOP_FREED).contains(&reason) {
                    problems.push(format!("{id:#x}: close reason {reason} out of range"));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "oracle failed:\n  {}\nlog:{}",
            problems.join("\n  "),
            self.summary()
        );
    }

    // --- recording, called from the extern "C" callbacks ---

    fn enter(&self, lp: *mut ep_loop, what: &str, id: u64) {
        self.callbacks.set(self.callbacks.get() + 1);
        let depth = DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        if depth > 1 {
            self.violate(format!(
                "nested callback: {what} for {id:#x} at depth {depth}"
            ));
        }
        if lp != self.lp.get() {
            self.violate(format!(
                "{what} for {id:#x}: loop pointer {lp:p} is not this loop's"
            ));
        }
        if self.freed.get() {
            self.violate(format!("{what} for {id:#x} after ep_loop_free returned"));
        }
    }

    fn leave(&self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }

    /// Append `ev` to `id`'s log; false (and a violation) if the id is unknown or closed.
    fn push(&self, id: u64, ev: Ev) -> bool {
        let mut logs = self.logs.borrow_mut();
        let problem = match logs.get_mut(&id) {
            None => Some(format!("{ev:?} for unknown id {id:#x}")),
            Some(log) if log.close().is_some() => {
                log.events.push(ev);
                Some(format!("{ev:?} for {id:#x} after its on_close"))
            }
            Some(log) => {
                log.events.push(ev);
                None
            }
        };
        drop(logs);
        match problem {
            Some(p) => {
                self.violate(p);
                false
            }
            None => true,
        }
    }

    fn call_hook(&self, lp: *mut ep_loop, ev: &Event<'_>) {
        let Some(mut hook) = self.hook.borrow_mut().take() else {
            return;
        };
        let result = catch_unwind(AssertUnwindSafe(|| hook(self, lp, ev)));
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
            self.violate(format!("hook panicked on {ev:?}: {msg}"));
        }
    }
}

/// # Safety
/// `user` must be a live `Recorder` (the harness guarantees it for its own registrations).
unsafe fn recorder<'a>(user: *mut c_void) -> &'a Recorder {
    // SAFETY: the harness passes a pointer to a Recorder it keeps alive longer than the loop.
    unsafe { &*(user as *const Recorder) }
}

fn peer_port_of(lp: *mut ep_loop, conn: u64) -> Option<u16> {
    // SAFETY: lp is the live loop calling us; ep_fd validates the id.
    let fd = unsafe { ep_fd(lp, conn) };
    if fd < 0 {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data; getpeername writes at most `len` bytes into it.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
            return None;
        }
        match ss.ss_family as i32 {
            libc::AF_INET => {
                let sin = &*(&ss as *const _ as *const libc::sockaddr_in);
                Some(u16::from_be(sin.sin_port))
            }
            libc::AF_INET6 => {
                let sin6 = &*(&ss as *const _ as *const libc::sockaddr_in6);
                Some(u16::from_be(sin6.sin6_port))
            }
            _ => None,
        }
    }
}

unsafe extern "C" fn rec_on_accept(
    lp: *mut ep_loop,
    listener: ep_id,
    conn: ep_id,
    user: *mut c_void,
) {
    // SAFETY: see `recorder`.
    let rec = unsafe { recorder(user) };
    rec.enter(lp, "on_accept", conn);
    {
        let mut logs = rec.logs.borrow_mut();
        let listener_ok = logs
            .get(&listener)
            .is_some_and(|l| l.kind == Kind::Registered && l.close().is_none());
        let fresh = !logs.contains_key(&conn);
        if fresh {
            let mut log = ConnLog::new(Kind::Accepted { listener });
            log.events.push(Ev::Accept);
            logs.insert(conn, log);
        }
        drop(logs);
        if !listener_ok {
            rec.violate(format!(
                "on_accept {conn:#x} from unknown/closed listener {listener:#x}"
            ));
        }
        if !fresh {
            rec.violate(format!("on_accept reused id {conn:#x}"));
        }
        if conn == 0 {
            rec.violate("on_accept with id 0".into());
        }
    }
    rec.accepted.borrow_mut().push(conn);
    let port = peer_port_of(lp, conn);
    if let Some(log) = rec.logs.borrow_mut().get_mut(&conn) {
        log.peer_port = port;
    }
    rec.call_hook(lp, &Event::Accept { listener, conn });
    rec.leave();
}

unsafe extern "C" fn rec_on_data(
    lp: *mut ep_loop,
    conn: ep_id,
    data: *const u8,
    len: usize,
    user: *mut c_void,
) {
    // SAFETY: see `recorder`.
    let rec = unsafe { recorder(user) };
    rec.enter(lp, "on_data", conn);
    if len > 0 && data.is_null() {
        rec.violate(format!("on_data {conn:#x}: NULL data with len {len}"));
        rec.leave();
        return;
    }
    let bytes: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: the library lends `len` readable bytes at `data` for the callback's duration.
        unsafe { std::slice::from_raw_parts(data, len) }
    };
    let ev = if len == 0 { Ev::Eof } else { Ev::Data(len) };
    if rec.push(conn, ev) && len > 0 {
        let keep = rec.keep_data.get();
        if let Some(log) = rec.logs.borrow_mut().get_mut(&conn) {
            log.bytes += len as u64;
            log.hash.update(bytes);
            if keep {
                log.data.extend_from_slice(bytes);
            }
        }
    }
    let event = if len == 0 {
        Event::Eof { conn }
    } else {
        Event::Data { conn, data: bytes }
    };
    rec.call_hook(lp, &event);
    rec.leave();
}

unsafe extern "C" fn rec_on_writable(lp: *mut ep_loop, conn: ep_id, user: *mut c_void) {
    // SAFETY: see `recorder`.
    let rec = unsafe { recorder(user) };
    rec.enter(lp, "on_writable", conn);
    rec.push(conn, Ev::Writable);
    rec.call_hook(lp, &Event::Writable { conn });
    rec.leave();
}

unsafe extern "C" fn rec_on_close(
    lp: *mut ep_loop,
    conn: ep_id,
    reason: ep_close_reason,
    err: c_int,
    user: *mut c_void,
) {
    // SAFETY: see `recorder`.
    let rec = unsafe { recorder(user) };
    rec.enter(lp, "on_close", conn);
    let reason = reason as i32;
    rec.push(conn, Ev::Close { reason, err });
    rec.call_hook(lp, &Event::Close { conn, reason, err });
    rec.leave();
}

/// The recording callbacks; every registration made through the harness uses them.
pub static CALLBACKS: ep_callbacks = ep_callbacks {
    on_accept: Some(rec_on_accept),
    on_data: Some(rec_on_data),
    on_writable: Some(rec_on_writable),
    on_close: Some(rec_on_close),
};

// ---------------------------------------------------------------------------------------------
// Harness

pub struct Harness {
    pub lp: *mut ep_loop,
    pub rec: Box<Recorder>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        let rec = Box::new(Recorder::new());
        let lp = ep_loop_new();
        assert!(!lp.is_null(), "ep_loop_new returned NULL");
        rec.lp.set(lp);
        Harness { lp, rec }
    }

    pub fn user(&self) -> *mut c_void {
        &*self.rec as *const Recorder as *mut c_void
    }

    /// `ep_listen` on `host`, port 0; returns (id, bound port).
    pub fn listen(&self, host: &str, flags: u32) -> (u64, u16) {
        let id = self.try_listen(host, flags);
        assert!(
            id > 0,
            "ep_listen({host}) failed: {id} ({})",
            strerror(id as i32)
        );
        let id = id as u64;
        // SAFETY: live loop; id just returned.
        let port = unsafe { ep_local_port(self.lp, id) };
        assert!(port > 0, "ep_local_port failed: {port}");
        (id, port as u16)
    }

    pub fn try_listen(&self, host: &str, flags: u32) -> i64 {
        let c = CString::new(host).unwrap();
        // SAFETY: live loop; valid C string; static callbacks; user outlives the loop.
        let id = unsafe { ep_listen(self.lp, c.as_ptr(), 0, 0, flags, &CALLBACKS, self.user()) };
        if id > 0 {
            self.rec.registered(id as u64);
        }
        id
    }

    /// `ep_register` with the recording callbacks; the raw result.
    pub fn register(&self, fd: RawFd, flags: u32) -> i64 {
        // SAFETY: live loop; static callbacks; user outlives the loop.
        let id = unsafe { ep_register(self.lp, fd, flags, &CALLBACKS, self.user()) };
        if id > 0 {
            self.rec.registered(id as u64);
        }
        id
    }

    pub fn register_ok(&self, fd: RawFd, flags: u32) -> u64 {
        let id = self.register(fd, flags);
        assert!(
            id > 0,
            "ep_register({fd}, {flags:#x}) failed: {id} ({})",
            strerror(id as i32)
        );
        id as u64
    }

    pub fn run_once(&self, timeout_ms: i32) -> i32 {
        // SAFETY: live loop, called from the test thread that owns it.
        let r = unsafe { ep_run_once(self.lp, timeout_ms) };
        assert!(
            r >= 0 || r == -libc::EINTR,
            "ep_run_once returned {r} ({}){}",
            strerror(r),
            self.rec.summary()
        );
        r
    }

    /// Run the loop until `cond` holds; fail the test after [`LIMIT`].
    pub fn run_until(&self, what: &str, cond: impl FnMut(&Recorder) -> bool) {
        self.run_until_for(what, LIMIT, cond)
    }

    pub fn run_until_for(
        &self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&Recorder) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            if cond(&self.rec) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for: {what}\nlog:{}",
                self.rec.summary()
            );
            if self.run_once(10) == EP_RUN_EMPTY {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Run the loop for `dur` regardless of what happens.
    pub fn run_for(&self, dur: Duration) {
        let deadline = Instant::now() + dur;
        while Instant::now() < deadline {
            if self.run_once(5) == EP_RUN_EMPTY {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Assert the loop has nothing to do: five `ep_run_once(50)` calls must really wait (one
    /// early wake-up is tolerated), not return at once because some fd stays ready (a
    /// level-triggered busy loop). No callback may run meanwhile.
    pub fn assert_idle(&self, what: &str) {
        let started = Instant::now();
        let callbacks = self.rec.callbacks();
        for _ in 0..5 {
            self.run_once(50);
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(150),
            "{what}: 5 x ep_run_once(50) returned after {elapsed:?}: the loop spins"
        );
        assert_eq!(
            self.rec.callbacks(),
            callbacks,
            "{what}: unexpected callbacks"
        );
    }

    pub fn run_until_closed(&self, id: u64) -> (i32, i32) {
        self.run_until(&format!("on_close of {id:#x}"), |r| r.is_closed(id));
        self.rec.close_of(id).unwrap()
    }

    pub fn run_until_accepted(&self, n: usize) -> Vec<u64> {
        self.run_until(&format!("{n} accepts"), |r| r.accepted_count() >= n);
        self.rec.accepted()
    }

    /// Accept the connection whose client is `client` and return its id.
    pub fn accept_for(&self, client: &TcpStream) -> u64 {
        let port = client.local_addr().unwrap().port();
        self.run_until(&format!("accept of client port {port}"), |r| {
            r.conn_for_port(port).is_some()
        });
        self.rec.conn_for_port(port).unwrap()
    }

    /// `ep_loop_free`; afterwards no callback may arrive (checked by the recorder).
    pub fn free(&mut self) {
        if !self.lp.is_null() {
            // SAFETY: live loop, freed once.
            unsafe { ep_loop_free(self.lp) };
            self.rec.freed.set(true);
            self.lp = std::ptr::null_mut();
        }
    }

    /// Free the loop and apply the oracle to every id.
    pub fn finish(mut self) {
        self.free();
        self.rec.check(true);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Free before the recorder (a field) is dropped: on_close(LOOP_FREED) still uses it.
        self.free();
    }
}

pub fn strerror(code: i32) -> String {
    let p = ep_strerror(code);
    if p.is_null() {
        return "<NULL>".into();
    }
    // SAFETY: non-NULL, NUL-terminated, static.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------------------------
// Calling the API with less noise (the loop pointer is always the test's own live loop).

pub fn send(lp: *mut ep_loop, id: u64, data: &[u8]) -> i32 {
    // SAFETY: valid buffer of data.len() bytes.
    unsafe { ep_send(lp, id, data.as_ptr() as *const c_void, data.len()) }
}

/// Sends `chunk` over and over until ep_send says the queue is above its high-water mark (how
/// much the kernel takes at once depends on its buffer sizes: tcp_rmem's maximum is 32 MiB on
/// recent kernels). Returns the number of chunks sent; fails after 1 GiB.
#[allow(dead_code)]
pub fn send_until_queued(lp: *mut ep_loop, id: u64, chunk: &[u8]) -> usize {
    for sent in 1..=(1usize << 30) / chunk.len().max(1) {
        match send(lp, id, chunk) {
            1 => return sent,
            0 => continue,
            err => panic!("ep_send: {err}"),
        }
    }
    panic!("1 GiB went out without ever queueing");
}

pub fn close(lp: *mut ep_loop, id: u64) -> i32 {
    // SAFETY: plain call.
    unsafe { ep_close(lp, id) }
}

pub fn abort(lp: *mut ep_loop, id: u64) -> i32 {
    // SAFETY: plain call.
    unsafe { ep_abort(lp, id) }
}

pub fn shutdown(lp: *mut ep_loop, id: u64) -> i32 {
    // SAFETY: plain call.
    unsafe { ep_shutdown(lp, id) }
}

// ---------------------------------------------------------------------------------------------
// Clients

pub fn connect(port: u16) -> TcpStream {
    connect_to(&format!("127.0.0.1:{port}"))
}

pub fn connect6(port: u16) -> TcpStream {
    connect_to(&format!("[::1]:{port}"))
}

fn connect_to(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

pub fn setsockopt_int(fd: RawFd, level: c_int, opt: c_int, val: c_int) {
    // SAFETY: passes a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &val as *const c_int as *const c_void,
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt({fd}, {level}, {opt}, {val}): {}",
        std::io::Error::last_os_error()
    );
}

/// Arrange for the next close of `s` to send an RST (SO_LINGER {1, 0}).
pub fn set_linger_zero(s: &TcpStream) {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a pointer to a live linger struct and its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lg as *const libc::linger as *const c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Close `s` with an RST.
pub fn rst(s: TcpStream) {
    set_linger_zero(&s);
    drop(s);
}

/// Bytes written to `s` that the peer has not acknowledged yet (SIOCOUTQ).
pub fn unacked(s: &TcpStream) -> i32 {
    let mut n: c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(r, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    n
}

/// Wait until everything written to `s` sits in the peer's receive queue.
pub fn wait_delivered(s: &TcpStream) {
    let deadline = Instant::now() + LIMIT;
    while unacked(s) > 0 {
        assert!(
            Instant::now() < deadline,
            "peer never acknowledged our bytes"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Write all of `data` without the loop running: fails if the kernel buffers cannot hold it.
pub fn write_buffered(s: &TcpStream, data: &[u8]) {
    s.set_nonblocking(true).unwrap();
    let mut off = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while off < data.len() {
        match (&*s).write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "kernel buffers took only {off} of {} bytes",
                    data.len()
                );
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
}

/// Read until EOF; Err carries the bytes read so far and the error.
pub fn read_to_eof(s: &mut TcpStream) -> Result<Vec<u8>, (Vec<u8>, std::io::Error)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err((out, e)),
        }
    }
}

/// Read until EOF on a thread; the join handle gives what `read_to_eof` gave.
pub type Reader = thread::JoinHandle<Result<Vec<u8>, (Vec<u8>, std::io::ErrorKind)>>;

pub fn spawn_reader(mut s: TcpStream, done: Arc<AtomicBool>) -> Reader {
    thread::spawn(move || {
        let r = read_to_eof(&mut s).map_err(|(v, e)| (v, e.kind()));
        done.store(true, Ordering::SeqCst);
        r
    })
}

/// Counting reader for large streams: (bytes, hash) until EOF.
pub fn spawn_hashing_reader(
    mut s: TcpStream,
    done: Arc<AtomicBool>,
) -> thread::JoinHandle<std::io::Result<(u64, u64)>> {
    thread::spawn(move || {
        let mut h = Fnv::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        let r = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok((total, h.finish())),
                Ok(n) => {
                    total += n as u64;
                    h.update(&buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        done.store(true, Ordering::SeqCst);
        r
    })
}

/// Read exactly `n` bytes on a thread (the loop keeps running on the test thread).
pub fn spawn_exact_reader(
    s: &TcpStream,
    n: usize,
    done: Arc<AtomicBool>,
) -> thread::JoinHandle<std::io::Result<Vec<u8>>> {
    let mut s = s.try_clone().unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; n];
        let r = s.read_exact(&mut buf).map(|_| buf);
        done.store(true, Ordering::SeqCst);
        r
    })
}

/// The echo server every echo test uses, with flow control: a send that leaves the queue above
/// high water pauses reading until on_writable.
pub fn echo(_: &Recorder, lp: *mut ep_loop, ev: &Event<'_>) {
    match *ev {
        Event::Data { conn, data } => {
            let r = send(lp, conn, data);
            assert!(r == 0 || r == 1, "echo send: {r} ({})", strerror(r));
            if r == 1 {
                // SAFETY: live loop (inside its callback).
                assert_eq!(unsafe { ep_pause_reading(lp, conn) }, 0);
            }
        }
        Event::Writable { conn } => {
            // SAFETY: live loop (inside its callback).
            assert_eq!(unsafe { ep_resume_reading(lp, conn) }, 0);
        }
        _ => {}
    }
}

pub fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

pub fn is_set(f: &Arc<AtomicBool>) -> bool {
    f.load(Ordering::SeqCst)
}

pub fn shut_write(s: &TcpStream) {
    s.shutdown(Shutdown::Write).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Data

/// FNV-1a, 64-bit.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

pub fn fnv(data: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.update(data);
    h.finish()
}

/// Deterministic, non-repeating-looking bytes: byte `i` of stream `seed`.
pub fn pattern(seed: u64, start: u64, len: usize) -> Vec<u8> {
    (start..start + len as u64)
        .map(|i| {
            let x =
                (i ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0x2545_f491_4f6c_dd1d);
            (x >> 56) as u8 ^ (i >> 16) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// File descriptors

pub fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

pub fn write_fd(fd: RawFd, data: &[u8]) -> isize {
    // SAFETY: valid buffer.
    unsafe { libc::write(fd, data.as_ptr() as *const c_void, data.len()) }
}

pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> isize {
    // SAFETY: valid buffer.
    unsafe { libc::read(fd, buf.as_mut_ptr() as *mut c_void, buf.len()) }
}

pub fn close_fd(fd: RawFd) {
    // SAFETY: the test owns fd.
    unsafe { libc::close(fd) };
}

/// (st_dev, st_ino) of an open fd, to tell later whether the same number still names it.
pub fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat writes a stat struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return None;
        }
        Some((st.st_dev, st.st_ino))
    }
}

/// Whether `fd` still refers to the file whose identity was `id` (fd numbers are shared by the
/// tests running in parallel, so a closed number may already name something else).
pub fn still_open(fd: RawFd, id: (u64, u64)) -> bool {
    identity(fd) == Some(id)
}

pub fn is_nonblocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL takes no pointer.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(
        fl >= 0,
        "F_GETFL({fd}): {}",
        std::io::Error::last_os_error()
    );
    fl & libc::O_NONBLOCK != 0
}

/// Stop the loop from another thread if the test has not finished within `limit`.
pub struct Watchdog {
    fired: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(lp: *mut ep_loop, limit: Duration) -> Self {
        let fired = flag();
        let done = flag();
        let lp_addr = lp as usize;
        let (f, d) = (fired.clone(), done.clone());
        let handle = thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if d.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
            f.store(true, Ordering::SeqCst);
            // ep_stop is documented as callable from any thread; the loop outlives the
            // watchdog because `disarm` joins this thread before the test frees it.
            // SAFETY: see above.
            unsafe { ep_stop(lp_addr as *mut ep_loop) };
        });
        Watchdog {
            fired,
            done,
            handle: Some(handle),
        }
    }

    /// Stop watching; true if the watchdog had to stop the loop.
    pub fn disarm(mut self) -> bool {
        self.done.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A loop the test owns; freed on drop (also when an assertion fails).
pub struct OwnedLoop(pub *mut ep_loop);

impl OwnedLoop {
    pub fn new() -> Self {
        let lp = ep_loop_new();
        assert!(!lp.is_null(), "ep_loop_new returned NULL");
        OwnedLoop(lp)
    }
}

impl Drop for OwnedLoop {
    fn drop(&mut self) {
        // SAFETY: live loop, freed once.
        unsafe { ep_loop_free(self.0) };
    }
}

/// `ep_run` bounded by a watchdog that stops it after `limit` (which fails the test).
pub fn run_bounded(lp: *mut ep_loop, limit: Duration) -> i32 {
    let dog = Watchdog::new(lp, limit);
    // SAFETY: live loop, run on the thread that owns it.
    let r = unsafe { ep_run(lp) };
    assert!(
        !dog.disarm(),
        "ep_run still running after {limit:?}: the watchdog stopped it"
    );
    r
}

/// A listener on 127.0.0.1 (a port the kernel picks) whose events come back from ep_poll
/// (EP_QUEUE, plus `flags`): its id and port.
pub fn listen_queued(lp: *mut ep_loop, flags: u32) -> (u64, u16) {
    // SAFETY: a live loop (the caller's); NULL callbacks are allowed with EP_QUEUE.
    let id = unsafe {
        ep_listen(
            lp,
            c"127.0.0.1".as_ptr(),
            0,
            16,
            EP_QUEUE | flags,
            std::ptr::null(),
            std::ptr::null_mut(),
        )
    };
    assert!(id > 0, "ep_listen: {id}");
    // SAFETY: a live loop.
    let port = unsafe { ep_local_port(lp, id as u64) };
    (id as u64, port as u16)
}
