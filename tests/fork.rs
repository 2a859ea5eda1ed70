//! After fork(), nothing the child does disturbs the parent's loop: the child's calls on the
//! inherited loop are refused with EP_EFORK, and its ep_loop_free closes only its own copies.
//! One test in its own binary (its own process): the child of a fork should find no other test
//! thread in the middle of something.

mod common;

use common::*;
use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ptr::null_mut;

unsafe extern "C" fn echo_data(
    lp: *mut ep_loop,
    conn: u64,
    data: *const u8,
    len: usize,
    _u: *mut c_void,
) {
    // SAFETY: live loop inside its callback; `data` is valid for `len` bytes.
    unsafe { ep_send(lp, conn, data.cast(), len) };
}

unsafe extern "C" fn child_close(
    _lp: *mut ep_loop,
    _conn: u64,
    _r: ep_close_reason,
    _e: i32,
    _u: *mut c_void,
) {
}

static ECHO: ep_callbacks = ep_callbacks {
    on_accept: None,
    on_data: Some(echo_data),
    on_writable: None,
    on_close: Some(child_close),
};

fn round_trip(lp: *mut ep_loop, client: &mut TcpStream, text: &[u8]) {
    client.write_all(text).unwrap();
    client.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + LIMIT;
    while got.len() < text.len() {
        assert!(std::time::Instant::now() < deadline, "no echo");
        // SAFETY: live loop, on its thread.
        assert!(unsafe { ep_run_once(lp, 10) } >= 0);
        let mut buf = [0u8; 64];
        if let Ok(n) = client.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    client.set_nonblocking(false).unwrap();
    assert_eq!(got, text);
}

#[test]
fn a_child_never_disturbs_the_parents_loop() {
    let lp = OwnedLoop::new();
    // SAFETY: live loop, static callbacks and string.
    let listener = unsafe { ep_listen(lp.0, c"127.0.0.1".as_ptr(), 0, 0, 0, &ECHO, null_mut()) };
    assert!(listener > 0);
    // SAFETY: live loop and id.
    let port = unsafe { ep_local_port(lp.0, listener as u64) } as u16;
    let mut before = TcpStream::connect(("127.0.0.1", port)).unwrap();
    round_trip(lp.0, &mut before, b"before the fork");

    // SAFETY: fork in a process whose other threads are idle; the child only calls eploop and
    // _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the inherited loop; every call but ep_loop_free must be refused.
        let status = unsafe {
            let refused = ep_send(lp.0, listener as u64, b"x".as_ptr().cast(), 1) == EP_EFORK
                && ep_close(lp.0, listener as u64) == EP_EFORK
                && ep_run_once(lp.0, 0) == EP_EFORK
                && ep_stop(lp.0) == EP_EFORK;
            ep_loop_free(lp.0);
            if refused {
                0
            } else {
                1
            }
        };
        // SAFETY: leave the child at once, running no destructor of the parent's state.
        unsafe { libc::_exit(status) };
    }
    let mut status = 0;
    // SAFETY: our child's pid, a valid status pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );

    // The parent's connection and listener still work: nothing was removed from the shared
    // epoll set, nothing was shut down or reset.
    round_trip(lp.0, &mut before, b"after the child freed its copy");
    let mut after = TcpStream::connect(("127.0.0.1", port)).unwrap();
    round_trip(lp.0, &mut after, b"a new client");
}
