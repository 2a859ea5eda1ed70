//! Listener and connection roles: on_accept gives a connection callbacks and a user pointer of
//! its own (ep_set_callbacks), and TCP_NODELAY is on by default for accepted and connected TCP
//! sockets (EP_NAGLE keeps Nagle's algorithm).

mod common;

use common::*;
use std::cell::RefCell;
use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::ptr::null_mut;
use std::time::Instant;

thread_local! {
    /// (role, event, id) in order.
    static LOG: RefCell<Vec<(&'static str, &'static str, u64)>> = const { RefCell::new(Vec::new()) };
}

fn log(role: &'static str, event: &'static str, id: u64) {
    LOG.with(|l| l.borrow_mut().push((role, event, id)));
}

fn logged() -> Vec<(&'static str, &'static str, u64)> {
    LOG.with(|l| l.borrow().clone())
}

/// The per-connection state a real server would allocate in on_accept.
struct ConnState {
    bytes: usize,
}

unsafe extern "C" fn listener_accept(lp: *mut ep_loop, _l: u64, conn: u64, _u: *mut c_void) {
    log("listener", "accept", conn);
    let state = Box::into_raw(Box::new(ConnState { bytes: 0 }));
    // SAFETY: live loop inside its callback; static callbacks; the box is freed in conn_close.
    let rc = unsafe { ep_set_callbacks(lp, conn, &CONN, state.cast()) };
    assert_eq!(rc, 0);
}

unsafe extern "C" fn listener_data(
    _lp: *mut ep_loop,
    conn: u64,
    _d: *const u8,
    _n: usize,
    _u: *mut c_void,
) {
    log("listener", "data", conn);
}

unsafe extern "C" fn listener_close(
    _lp: *mut ep_loop,
    id: u64,
    _r: ep_close_reason,
    _e: i32,
    _u: *mut c_void,
) {
    log("listener", "close", id);
}

unsafe extern "C" fn conn_data(
    lp: *mut ep_loop,
    conn: u64,
    data: *const u8,
    len: usize,
    user: *mut c_void,
) {
    log("conn", "data", conn);
    // SAFETY: `user` is the ConnState set in listener_accept, alive until conn_close.
    unsafe { (*user.cast::<ConnState>()).bytes += len };
    // SAFETY: live loop; `data` valid for `len` bytes.
    unsafe { ep_send(lp, conn, data.cast(), len) };
}

unsafe extern "C" fn conn_close(
    _lp: *mut ep_loop,
    id: u64,
    _r: ep_close_reason,
    _e: i32,
    user: *mut c_void,
) {
    log("conn", "close", id);
    // SAFETY: the box made in listener_accept, freed once: on_close comes once.
    let state = unsafe { Box::from_raw(user.cast::<ConnState>()) };
    assert!(state.bytes > 0, "the connection's own state saw its bytes");
}

static LISTENER: ep_callbacks = ep_callbacks {
    on_accept: Some(listener_accept),
    on_data: Some(listener_data),
    on_writable: None,
    on_close: Some(listener_close),
};

static CONN: ep_callbacks = ep_callbacks {
    on_accept: None,
    on_data: Some(conn_data),
    on_writable: None,
    on_close: Some(conn_close),
};

fn roles_are_separate(flags: u32) {
    LOG.with(|l| l.borrow_mut().clear());
    let lp = OwnedLoop::new();
    // SAFETY: live loop, static callbacks and string.
    let listener = unsafe {
        ep_listen(
            lp.0,
            c"127.0.0.1".as_ptr(),
            0,
            0,
            flags,
            &LISTENER,
            null_mut(),
        )
    } as u64;
    // SAFETY: live loop and id.
    let port = unsafe { ep_local_port(lp.0, listener) } as u16;
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(b"ping").unwrap();
    client.set_nonblocking(true).unwrap();
    let mut echoed = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while echoed.len() < 4 {
        assert!(Instant::now() < deadline, "no echo: {:?}", logged());
        // SAFETY: live loop on its thread.
        assert!(unsafe { ep_run_once(lp.0, 10) } >= 0);
        let mut buf = [0u8; 16];
        if let Ok(n) = client.read(&mut buf) {
            echoed.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(echoed, b"ping");
    // SAFETY: live loop and ids.
    assert_eq!(unsafe { ep_close(lp.0, listener) }, 0);
    drop(client);
    let deadline = Instant::now() + LIMIT;
    while logged().iter().filter(|(_, e, _)| *e == "close").count() < 2 {
        assert!(Instant::now() < deadline, "closes missing: {:?}", logged());
        // SAFETY: as above.
        assert!(unsafe { ep_run_once(lp.0, 10) } >= 0);
    }
    let log = logged();
    let conn = log.iter().find(|(_, e, _)| *e == "accept").unwrap().2;
    assert!(
        !log.contains(&("listener", "data", conn)),
        "the listener's on_data saw a connection's bytes"
    );
    assert!(log.contains(&("conn", "data", conn)));
    assert!(log.contains(&("listener", "close", listener)));
    assert!(log.contains(&("conn", "close", conn)));
    assert!(
        !log.contains(&("listener", "close", conn)),
        "the listener's on_close saw a connection"
    );
}
both_modes!(roles_are_separate);

#[test]
fn set_callbacks_codes() {
    let lp = OwnedLoop::new();
    // SAFETY: live loop, static callbacks.
    let listener =
        unsafe { ep_listen(lp.0, c"127.0.0.1".as_ptr(), 0, 0, 0, &LISTENER, null_mut()) } as u64;
    unsafe extern "C" fn tick(_lp: *mut ep_loop, _t: u64, _u: *mut c_void) {}
    // SAFETY: live loop and callbacks; each misuse must be refused and change nothing.
    unsafe {
        let timer = ep_timer_start(lp.0, 60_000, 0, Some(tick), null_mut()) as u64;
        assert_eq!(
            ep_set_callbacks(lp.0, listener, std::ptr::null(), null_mut()),
            EP_ENULL
        );
        assert_eq!(ep_set_callbacks(lp.0, timer, &CONN, null_mut()), EP_EKIND);
        assert_eq!(ep_set_callbacks(lp.0, 12345, &CONN, null_mut()), EP_ESTALE);
        assert_eq!(
            ep_set_callbacks(null_mut(), listener, &CONN, null_mut()),
            EP_ENULL
        );
        let queued = ep_listen(
            lp.0,
            c"127.0.0.1".as_ptr(),
            0,
            0,
            EP_QUEUE,
            std::ptr::null(),
            null_mut(),
        ) as u64;
        assert_eq!(ep_set_callbacks(lp.0, queued, &CONN, null_mut()), EP_EKIND);
        assert_eq!(
            ep_set_callbacks(lp.0, listener, &LISTENER, 7 as *mut c_void),
            0
        );
        assert_eq!(ep_get_user(lp.0, listener) as usize, 7);
    }
}

fn nodelay(fd: i32) -> i32 {
    let mut value: i32 = -1;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: an int-sized out buffer and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&mut value as *mut i32).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    value
}

thread_local! {
    static ACCEPTED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

unsafe extern "C" fn keep(_lp: *mut ep_loop, listener: u64, conn: u64, _u: *mut c_void) {
    if listener != 0 {
        ACCEPTED.with(|a| a.borrow_mut().push(conn));
    }
}

static KEEP: ep_callbacks = ep_callbacks {
    on_accept: Some(keep),
    on_data: None,
    on_writable: None,
    on_close: None,
};

#[test]
fn tcp_nodelay_is_the_default_and_ep_nagle_keeps_nagle() {
    for (flags, want) in [(0, 1), (EP_NAGLE, 0)] {
        ACCEPTED.with(|a| a.borrow_mut().clear());
        let lp = OwnedLoop::new();
        // SAFETY: live loop, static callbacks.
        let listener =
            unsafe { ep_listen(lp.0, c"127.0.0.1".as_ptr(), 0, 0, flags, &KEEP, null_mut()) }
                as u64;
        // SAFETY: live loop and id.
        let port = unsafe { ep_local_port(lp.0, listener) } as u16;
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // SAFETY: live loop, static callbacks and string.
        let out = unsafe {
            ep_connect(
                lp.0,
                c"127.0.0.1".as_ptr(),
                port,
                0,
                flags,
                &KEEP,
                null_mut(),
            )
        } as u64;
        let deadline = Instant::now() + LIMIT;
        while ACCEPTED.with(|a| a.borrow().is_empty()) {
            assert!(Instant::now() < deadline, "no accept");
            // SAFETY: live loop on its thread.
            assert!(unsafe { ep_run_once(lp.0, 10) } >= 0);
        }
        let accepted = ACCEPTED.with(|a| a.borrow()[0]);
        // SAFETY: live loop and ids.
        let (accepted_fd, out_fd) = unsafe { (ep_fd(lp.0, accepted), ep_fd(lp.0, out)) };
        assert!(accepted_fd >= 0 && out_fd >= 0);
        assert_eq!(nodelay(accepted_fd), want, "accepted, flags {flags:#x}");
        assert_eq!(nodelay(out_fd), want, "connected, flags {flags:#x}");
        assert_eq!(
            nodelay(client.as_raw_fd()),
            0,
            "the test's own client is untouched"
        );
    }
}
