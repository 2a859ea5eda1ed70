//! ep_poll_with(): ep_poll()'s step with its arguments and result in one block a binding keeps
//! (one argument for an FFI that converts each on each call), on real sockets; and the accept
//! event's fd, which spares such a binding an ep_fd() call per connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ptr;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn args_for(lp: *mut ep_loop, timeout_ms: i32) -> ep_poll_args {
    ep_poll_args {
        lp,
        timeout_ms,
        commands: ptr::null(),
        result: ep_poll_result::default(),
    }
}

/// The events of the last step, copied out of the loop's arrays.
fn events_of(args: &ep_poll_args) -> Vec<ep_event> {
    if args.result.count == 0 {
        return Vec::new();
    }
    // SAFETY: ep_poll_with wrote `count` events at `events`, valid until the next step.
    unsafe { std::slice::from_raw_parts(args.result.events, args.result.count) }.to_vec()
}

#[test]
fn null_arguments_are_refused() {
    // SAFETY: NULL is allowed and refused.
    assert_eq!(unsafe { ep_poll_with(ptr::null_mut()) }, EP_ENULL);
    let mut args = args_for(ptr::null_mut(), 0);
    // SAFETY: `args` is readable and writable; its NULL loop is refused.
    assert_eq!(unsafe { ep_poll_with(&mut args) }, EP_ENULL);
}

#[test]
fn a_step_through_the_block_serves_a_connection() {
    let lp = ep_loop_new();
    assert!(!lp.is_null());
    let (listener, port) = listen_queued(lp, 0);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"ping").unwrap();

    // A wait with nothing to report honours the timeout in the block... once the client is in.
    let mut args = args_for(lp, 1000);
    let (mut conn, mut fd, mut got) = (0, -1, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while got != b"ping" {
        assert!(Instant::now() < deadline, "no data");
        // SAFETY: `args` is readable and writable, its loop live.
        assert_eq!(unsafe { ep_poll_with(&mut args) }, 0);
        assert_eq!(args.result.state, EP_RUN_MORE);
        for e in events_of(&args) {
            match e.kind {
                EP_EVENT_ACCEPT => {
                    assert_eq!(e.listener, listener);
                    (conn, fd) = (e.id, e.err);
                    // SAFETY: live loop.
                    let by_call = unsafe { ep_fd(lp, conn) };
                    assert_eq!(fd, by_call, "the accept carries the fd");
                    assert_eq!(e.queued, 0);
                }
                EP_EVENT_DATA => {
                    assert_eq!(e.id, conn);
                    // SAFETY: the step's data holds `len` bytes at `offset`.
                    let bytes = unsafe {
                        std::slice::from_raw_parts(
                            args.result.data.add(e.offset as usize),
                            e.len as usize,
                        )
                    };
                    got.extend_from_slice(bytes);
                }
                other => panic!("unexpected event {other}"),
            }
        }
    }
    assert!(fd > 2);
    // SAFETY: live loop, live connection.
    assert_eq!(unsafe { ep_send(lp, conn, b"pong".as_ptr().cast(), 4) }, 0);
    let mut reply = [0u8; 4];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong");

    // Nothing more comes: the timeout set in the block bounds the wait.
    args.timeout_ms = 50;
    let start = Instant::now();
    // SAFETY: as above.
    assert_eq!(unsafe { ep_poll_with(&mut args) }, 0);
    assert_eq!(args.result.count, 0);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(40) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // SAFETY: live loop, freed once.
    unsafe { ep_loop_free(lp) };
}
