//! TCP urgent data (MSG_OOB, as telnet sends on an interrupt): a read stops short at the urgent
//! mark with bytes after it. Edge-triggered, that short read once passed for "drained", and the
//! bytes after the mark waited for the peer's next write (for ever, if it waited for an answer).
//! Both modes must deliver everything in-band (the urgent byte itself is out of band: skipped),
//! without more data from the peer, and without a busy loop.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::ptr;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn send_urgent(client: &TcpStream, byte: u8) {
    // SAFETY: a connected socket and a one-byte buffer that outlives the call.
    let sent = unsafe {
        libc::send(
            client.as_raw_fd(),
            (&byte as *const u8).cast(),
            1,
            libc::MSG_OOB,
        )
    };
    assert_eq!(sent, 1);
}

/// Polls for `wait`, collecting the connection's bytes; returns them and the steps taken.
fn collect(lp: *mut ep_loop, wait: Duration, got: &mut Vec<u8>) -> usize {
    let mut args = ep_poll_args {
        lp,
        timeout_ms: 20,
        commands: ptr::null(),
        result: ep_poll_result::default(),
    };
    let (deadline, mut steps) = (Instant::now() + wait, 0);
    while Instant::now() < deadline {
        // SAFETY: `args` is readable and writable, its loop live.
        assert_eq!(unsafe { ep_poll_with(&mut args) }, 0);
        steps += 1;
        for i in 0..args.result.count {
            // SAFETY: ep_poll_with wrote `count` events; their data is in `result.data`.
            let e = unsafe { *args.result.events.add(i) };
            if e.kind == EP_EVENT_DATA {
                // SAFETY: as above.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        args.result.data.add(e.offset as usize),
                        e.len as usize,
                    )
                };
                got.extend_from_slice(bytes);
            }
        }
    }
    steps
}

fn bytes_after_the_mark_arrive(flags: u32) {
    let lp = ep_loop_new();
    assert!(!lp.is_null());
    let (_listener, port) = listen_queued(lp, flags);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_nodelay(true).unwrap();
    let mut got = Vec::new();
    collect(lp, Duration::from_millis(100), &mut got); // (the accept)

    client.write_all(b"abc").unwrap();
    send_urgent(&client, b'!');
    client.write_all(b"def").unwrap();
    std::thread::sleep(Duration::from_millis(100)); // all of it in the kernel before the step
    collect(lp, Duration::from_millis(500), &mut got);
    assert_eq!(
        got, b"abcdef",
        "in-band bytes, the urgent one skipped, none left waiting"
    );

    // No busy loop once it is read: a quiet half second takes few steps (20 ms waits).
    let steps = collect(lp, Duration::from_millis(500), &mut got);
    assert!(
        steps < 40,
        "{steps} steps in 0.5 s: the urgent data keeps the loop awake"
    );
    assert_eq!(got, b"abcdef");
    // SAFETY: live loop, freed once.
    unsafe { ep_loop_free(lp) };
}

#[test]
fn level_triggered_reads_past_the_urgent_mark() {
    bytes_after_the_mark_arrive(0);
}

#[test]
fn edge_triggered_reads_past_the_urgent_mark() {
    bytes_after_the_mark_arrive(EP_EDGE);
}
