//! Misuse returns the documented codes and touches nothing.

mod common;

use common::*;
use std::ffi::{c_void, CStr, CString};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::ptr::{null, null_mut};
use std::time::Duration;

/// Every function taking an id, applied to `id`; ep_get_user reported as 0 (NULL) or 1.
fn all_id_calls(lp: *mut ep_loop, id: u64) -> Vec<(&'static str, i32)> {
    let mut buf = [0u8; 4];
    // SAFETY: live loop (or NULL, which every function must reject); valid buffers.
    unsafe {
        vec![
            (
                "ep_send",
                ep_send(lp, id, buf.as_mut_ptr() as *const c_void, buf.len()),
            ),
            ("ep_shutdown", ep_shutdown(lp, id)),
            ("ep_close", ep_close(lp, id)),
            ("ep_abort", ep_abort(lp, id)),
            (
                "ep_set_user",
                ep_set_user(lp, id, std::ptr::dangling_mut::<c_void>()),
            ),
            ("ep_get_user!=NULL", (!ep_get_user(lp, id).is_null()) as i32),
            ("ep_fd", ep_fd(lp, id)),
            ("ep_local_port", ep_local_port(lp, id)),
            ("ep_pause_reading", ep_pause_reading(lp, id)),
            ("ep_resume_reading", ep_resume_reading(lp, id)),
            ("ep_set_watermarks", ep_set_watermarks(lp, id, 1, 2)),
        ]
    }
}

fn assert_all_stale(lp: *mut ep_loop, id: u64) {
    for (name, r) in all_id_calls(lp, id) {
        let want = if name == "ep_get_user!=NULL" {
            0
        } else {
            EP_ESTALE
        };
        assert_eq!(r, want, "{name}(id {id:#x}) returned {r} ({})", strerror(r));
    }
}

#[test]
fn null_loop_is_rejected() {
    for (name, r) in all_id_calls(null_mut(), 1) {
        let want = if name == "ep_get_user!=NULL" {
            0
        } else {
            EP_ENULL
        };
        assert_eq!(r, want, "{name}(NULL loop) returned {r}");
    }
    let host = CString::new("127.0.0.1").unwrap();
    // SAFETY: NULL loop must be rejected without being dereferenced.
    unsafe {
        assert_eq!(
            ep_register(null_mut(), 0, 0, &CALLBACKS, null_mut()),
            EP_ENULL as i64
        );
        assert_eq!(
            ep_listen(null_mut(), host.as_ptr(), 0, 0, 0, &CALLBACKS, null_mut()),
            EP_ENULL as i64
        );
        assert_eq!(ep_run(null_mut()), EP_ENULL);
        assert_eq!(ep_run_once(null_mut(), 0), EP_ENULL);
        assert_eq!(ep_stop(null_mut()), EP_ENULL);
        assert_eq!(ep_set_linger(null_mut(), 10), EP_ENULL);
        ep_loop_free(null_mut());
    }
}

#[test]
fn null_callbacks_host_and_buffer_are_rejected() {
    let h = Harness::new();
    let (r, w) = pipe();
    let host = CString::new("127.0.0.1").unwrap();
    // SAFETY: live loop; NULL pointers must be rejected.
    unsafe {
        assert_eq!(ep_register(h.lp, r, 0, null(), h.user()), EP_ENULL as i64);
        assert_eq!(
            ep_listen(h.lp, host.as_ptr(), 0, 0, 0, null(), h.user()),
            EP_ENULL as i64
        );
        assert_eq!(
            ep_listen(h.lp, null(), 0, 0, 0, &CALLBACKS, h.user()),
            EP_ENULL as i64
        );
    }
    let wid = h.register_ok(w, 0);
    // SAFETY: NULL buffer with len > 0 must be rejected; with len 0 it is an empty send.
    unsafe {
        assert_eq!(ep_send(h.lp, wid, null(), 5), EP_ENULL);
        assert_eq!(ep_send(h.lp, wid, null(), 0), 0);
    }
    // The rejected calls registered nothing: the read end can still be registered.
    let rid = h.register_ok(r, 0);
    assert_eq!(send(h.lp, wid, b"hi"), 0);
    h.run_until("data through the pipe", |rec| rec.bytes(rid) == 2);
    h.finish();
}

#[test]
fn stale_ids_are_rejected() {
    let h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", 0);
    for id in [
        0,
        1,
        2,
        0xdead_beef_0000_0001,
        u64::MAX,
        listener + 1,
        listener ^ (1 << 32),
        listener ^ (1 << 63),
    ] {
        if id != listener {
            assert_all_stale(h.lp, id);
        }
    }
    // A connection after its on_close.
    let c = connect(port);
    let conn = h.accept_for(&c);
    drop(c);
    h.run_until_closed(conn);
    assert_all_stale(h.lp, conn);
    // A pipe after its on_close; a new registration that may reuse the slot gets a new id.
    let (r, w) = pipe();
    let old = h.register_ok(r, 0);
    close_fd(w);
    h.run_until_closed(old);
    assert_all_stale(h.lp, old);
    let (r2, w2) = pipe();
    let new = h.register_ok(r2, 0);
    assert_ne!(new, old, "an id was reused");
    assert_all_stale(h.lp, old);
    // SAFETY: live loop.
    assert!(unsafe { ep_fd(h.lp, new) } >= 0);
    close_fd(w2);
    h.run_until_closed(new);
    h.finish();
}

#[test]
fn double_close_and_send_after_close() {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", 0);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    assert_eq!(close(h.lp, conn), 0);
    assert_eq!(close(h.lp, conn), EP_ECLOSING);
    assert_eq!(send(h.lp, conn, b"late"), EP_ECLOSING);
    assert_eq!(shutdown(h.lp, conn), EP_ECLOSING);
    assert_eq!(h.run_until_closed(conn), (LOCAL, 0));
    assert_eq!(close(h.lp, conn), EP_ESTALE);
    assert_eq!(send(h.lp, conn, b"later"), EP_ESTALE);
    assert_eq!(abort(h.lp, conn), EP_ESTALE);
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty(), "bytes sent after ep_close reached the peer");
    h.finish();
}

#[test]
fn send_after_abort() {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", 0);
    let c = connect(port);
    let conn = h.accept_for(&c);
    assert_eq!(abort(h.lp, conn), 0);
    let r = send(h.lp, conn, b"late");
    assert!(r < 0, "ep_send after ep_abort returned {r}");
    let r = close(h.lp, conn);
    assert!(r < 0, "ep_close after ep_abort returned {r}");
    assert_eq!(h.run_until_closed(conn).0, ABORT);
    assert_eq!(send(h.lp, conn, b"later"), EP_ESTALE);
    drop(c);
    h.finish();
}

#[test]
fn abort_while_closing_gracefully() {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", 0);
    let c = connect(port);
    let conn = h.accept_for(&c);
    send_until_queued(h.lp, conn, &[0u8; 1 << 20]);
    assert_eq!(close(h.lp, conn), 0);
    assert_eq!(abort(h.lp, conn), 0);
    assert_eq!(h.run_until_closed(conn).0, ABORT);
    drop(c);
    h.finish();
}

#[test]
fn connection_calls_on_listener() {
    let h = Harness::new();
    let (listener, _) = h.listen("127.0.0.1", 0);
    assert_eq!(send(h.lp, listener, b"x"), EP_EKIND);
    assert_eq!(shutdown(h.lp, listener), EP_EKIND);
    h.finish();
}

#[test]
fn bad_fds() {
    let h = Harness::new();
    assert_eq!(h.register(-1, 0), -libc::EBADF as i64);
    // An fd number far above anything open (fd numbers are shared with parallel tests).
    assert_eq!(h.register(987_654, 0), -libc::EBADF as i64);
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let r = h.register(file.as_raw_fd(), EP_BORROW);
    assert_eq!(
        r,
        -libc::EPERM as i64,
        "regular file: {r} ({})",
        strerror(r as i32)
    );
    h.finish();
}

#[test]
fn same_fd_twice() {
    let h = Harness::new();
    let (r, w) = pipe();
    let id = h.register_ok(r, 0);
    assert_eq!(h.register(r, 0), -libc::EEXIST as i64);
    assert_eq!(h.register(r, EP_BORROW | EP_EDGE), -libc::EEXIST as i64);
    // The first registration is unharmed.
    assert_eq!(write_fd(w, b"ok"), 2);
    h.run_until("data", |rec| rec.bytes(id) == 2);
    close_fd(w);
    assert_eq!(h.run_until_closed(id), (PEER_EOF, 0));
    h.finish();
}

#[test]
fn unknown_flags() {
    let h = Harness::new();
    let (r, w) = pipe();
    for bad in [0x100u32, 1 << 20, 1 << 31, u32::MAX] {
        assert_eq!(h.register(r, bad), -libc::EINVAL as i64, "flags {bad:#x}");
        assert_eq!(
            h.try_listen("127.0.0.1", bad),
            -libc::EINVAL as i64,
            "flags {bad:#x}"
        );
    }
    // Nothing was registered: the fd can still be registered (and is still open).
    let id = h.register_ok(r, 0);
    close_fd(w);
    h.run_until_closed(id);
    h.finish();
}

#[test]
fn oversized_send_checked_before_reading() {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", 0);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    let tiny = [0xAAu8; 16];
    for len in [(1usize << 30) + 1, usize::MAX / 2, usize::MAX] {
        // SAFETY: deliberately claims more bytes than `tiny` has: the library must refuse from
        // the length alone, before touching the buffer.
        let r = unsafe { ep_send(h.lp, conn, tiny.as_ptr() as *const c_void, len) };
        assert_eq!(r, -libc::ENOBUFS, "len {len}");
    }
    assert_eq!(send(h.lp, conn, b"small"), 0);
    assert_eq!(close(h.lp, conn), 0);
    h.run_until_closed(conn);
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"small", "something of the refused sends was queued");
    h.finish();
}

#[test]
fn strerror_names_every_code() {
    let lib = [
        EP_ESTALE,
        EP_ENULL,
        EP_EBUSY,
        EP_ECLOSING,
        EP_EKIND,
        EP_EPANIC,
    ];
    let mut seen = std::collections::HashSet::new();
    for code in lib {
        let s = strerror(code);
        assert!(!s.is_empty() && s != "<NULL>", "{code}");
        assert!(
            seen.insert(s.clone()),
            "ep_strerror({code}) = {s:?} is not distinct"
        );
    }
    let common = [
        0,
        -libc::EINVAL,
        -libc::EBADF,
        -libc::EEXIST,
        -libc::ENOBUFS,
        -libc::ESHUTDOWN,
        -libc::ENOTSOCK,
        -libc::EINTR,
        -libc::EADDRINUSE,
        -libc::EPIPE,
        -libc::ECONNRESET,
    ];
    for code in common {
        let s = strerror(code);
        assert!(!s.is_empty() && s != "<NULL>", "{code}");
        assert!(
            seen.insert(s.clone()),
            "ep_strerror({code}) = {s:?} is not distinct"
        );
    }
    for code in [1, 12345, -4000, -4007, -99999, i32::MIN, i32::MAX] {
        let s = strerror(code);
        assert!(!s.is_empty() && s != "<NULL>", "ep_strerror({code})");
    }
    // SAFETY: static string.
    let v = unsafe { CStr::from_ptr(ep_version()) }.to_str().unwrap();
    assert_eq!(v.split('.').count(), 3, "version {v:?}");
}

#[test]
fn close_reason_values_match_the_contract() {
    assert_eq!(ep_close_reason::EP_CLOSE_PEER_EOF as i32, PEER_EOF);
    assert_eq!(ep_close_reason::EP_CLOSE_PEER_RESET as i32, PEER_RESET);
    assert_eq!(ep_close_reason::EP_CLOSE_ERROR as i32, ERROR);
    assert_eq!(ep_close_reason::EP_CLOSE_LOCAL as i32, LOCAL);
    assert_eq!(ep_close_reason::EP_CLOSE_ABORT as i32, ABORT);
    assert_eq!(ep_close_reason::EP_CLOSE_TIMEOUT as i32, TIMEOUT);
    assert_eq!(ep_close_reason::EP_CLOSE_LOOP_FREED as i32, LOOP_FREED);
}

#[test]
fn bad_watermarks() {
    let h = Harness::new();
    let (r, w) = pipe();
    let wid = h.register_ok(w, 0);
    // SAFETY: live loop.
    unsafe {
        assert_eq!(ep_set_watermarks(h.lp, wid, 100, 10), -libc::EINVAL);
        assert_eq!(ep_set_watermarks(h.lp, wid, 10, 100), 0);
        assert_eq!(ep_set_watermarks(h.lp, wid, 100, 100), 0);
    }
    close_fd(r);
    h.finish();
}

#[test]
fn shutdown_on_pipe_and_send_after_shutdown() {
    let h = Harness::new();
    let (r, w) = pipe();
    let wid = h.register_ok(w, 0);
    assert_eq!(shutdown(h.lp, wid), -libc::ENOTSOCK);
    assert_eq!(
        send(h.lp, wid, b"fine"),
        0,
        "a refused shutdown must not change the pipe"
    );
    let (_, port) = h.listen("127.0.0.1", 0);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    assert_eq!(send(h.lp, conn, b"before"), 0);
    assert_eq!(shutdown(h.lp, conn), 0);
    assert_eq!(send(h.lp, conn, b"after"), -libc::ESHUTDOWN);
    let mut got = Vec::new();
    h.run_for(Duration::from_millis(50));
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"before");
    // Reading continues after our FIN.
    c.write_all(b"reply").unwrap();
    drop(c);
    h.run_until_closed(conn);
    assert_eq!(h.rec.data(conn), b"reply");
    close_fd(r);
    h.finish();
}

#[test]
fn listen_errors() {
    let h = Harness::new();
    for host in [
        "not-a-host",
        "1.2.3.4.5",
        "::zz",
        "127.0.0.1:80",
        " 127.0.0.1",
        "999.0.0.1",
    ] {
        let r = h.try_listen(host, 0);
        assert_eq!(
            r,
            -libc::EINVAL as i64,
            "host {host:?}: {r} ({})",
            strerror(r as i32)
        );
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let host = CString::new("127.0.0.1").unwrap();
    // SAFETY: live loop; valid arguments.
    let r = unsafe { ep_listen(h.lp, host.as_ptr(), port, 0, 0, &CALLBACKS, h.user()) };
    assert_eq!(r, -libc::EADDRINUSE as i64);
    h.finish();
}

#[test]
fn run_on_empty_loop_returns_empty() {
    let h = Harness::new();
    let dog = Watchdog::new(h.lp, Duration::from_secs(5));
    // SAFETY: live loop.
    let r = unsafe { ep_run(h.lp) };
    assert!(!dog.disarm(), "ep_run on an empty loop blocked");
    assert_eq!(r, EP_RUN_EMPTY);
    assert_eq!(h.run_once(0), EP_RUN_EMPTY);
    h.finish();
}

#[test]
fn adopted_listener_fd_number_is_not_ours_after_failure() {
    // A registration that fails leaves the caller's fd open and untouched.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let fd = l.into_raw_fd();
    let ident = identity(fd).unwrap();
    let h = Harness::new();
    assert_eq!(h.register(fd, 0x8000_0000), -libc::EINVAL as i64);
    assert!(still_open(fd, ident));
    assert!(
        !is_nonblocking(fd),
        "a failed ep_register changed the fd's mode"
    );
    close_fd(fd);
    h.finish();
}

/// The event-log names of the close reasons, for any int (out-of-range values are safe).
#[test]
fn close_reason_names() {
    let name = |reason: i32| {
        // SAFETY: the function returns a static NUL-terminated string for any int.
        unsafe { std::ffi::CStr::from_ptr(ep_close_reason_name(reason)) }
            .to_str()
            .unwrap()
            .to_owned()
    };
    let expected = [
        "peer_eof",
        "peer_reset",
        "error",
        "local",
        "abort",
        "timeout",
        "loop_freed",
    ];
    for (reason, want) in (1..=7).zip(expected) {
        assert_eq!(name(reason), want);
    }
    assert_eq!(
        name(ep_close_reason::EP_CLOSE_LOOP_FREED as i32),
        "loop_freed"
    );
    for bad in [0, 8, -1, i32::MIN, i32::MAX] {
        assert_eq!(name(bad), "unknown");
    }
}
