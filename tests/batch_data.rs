//! The step's data of the batch interface (EP_QUEUE + ep_poll) under floods: a stream's bytes are
//! read straight into the step's data when it has room (no copy out of the loop's read buffer),
//! else copied there; either way every byte arrives once, in order, and the arrays keep the
//! address a binding mapped until they grow past every size handed out before.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, TcpStream};
use std::ptr;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A client's bytes: its index first (so the server side can tell the streams apart), then a
/// pattern that a lost, repeated or misplaced chunk breaks.
fn stream_of(index: u8, len: usize) -> Vec<u8> {
    let mut bytes = vec![index];
    bytes.extend((1..len).map(|i| ((i * 31 + usize::from(index) * 7) % 251) as u8));
    bytes
}

struct Client {
    sock: TcpStream,
    bytes: Vec<u8>,
    sent: usize,
    /// Largest write at once (small writes: many short reads, the copy path).
    chunk: usize,
    done: bool,
}

/// The views a binding keeps over ep_poll's arrays: rebuilt only when a size outgrows them.
#[derive(Default)]
struct Mapped {
    events: (*const ep_event, usize),
    data: (*const u8, usize),
    remaps: usize,
}

impl Mapped {
    fn check(&mut self, out: &ep_poll_result) {
        self.remaps += usize::from(remap(&mut self.events, out.events, out.count, "events"));
        self.remaps += usize::from(remap(&mut self.data, out.data, out.data_len, "data"));
    }
}

/// Checks one array against the view kept over it; true when the view had to be rebuilt.
fn remap<T>(view: &mut (*const T, usize), at: *const T, len: usize, what: &str) -> bool {
    if len == 0 {
        return false;
    }
    if len <= view.1 {
        assert_eq!(at, view.0, "{what} moved without growing");
        return false;
    }
    *view = (at, len);
    true
}

#[test]
fn floods_arrive_whole_and_in_order_and_the_arrays_move_only_when_they_grow() {
    let lp = ep_loop_new();
    assert!(!lp.is_null());
    let (_listener, port) = listen_queued(lp, 0);

    // Two floods of several MiB in large writes, and one stream of 100-byte writes.
    let plan = [
        (0u8, 6 << 20, 1 << 20),
        (1, 3 << 20, 1 << 20),
        (2, 200_000, 100),
    ];
    let mut clients: Vec<Client> = plan
        .iter()
        .map(|&(index, len, chunk)| {
            let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            sock.set_nonblocking(true).expect("nonblocking");
            Client {
                sock,
                bytes: stream_of(index, len),
                sent: 0,
                chunk,
                done: false,
            }
        })
        .collect();

    let mut received: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut closed = 0;
    let mut mapped = Mapped::default();
    let mut steps = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while closed < clients.len() {
        assert!(Instant::now() < deadline, "timed out after {steps} steps");
        for c in clients.iter_mut().filter(|c| !c.done) {
            let end = (c.sent + c.chunk).min(c.bytes.len());
            match c.sock.write(&c.bytes[c.sent..end]) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("client write: {e}"),
            }
            if c.sent == c.bytes.len() {
                c.sock.shutdown(Shutdown::Write).expect("shutdown");
                c.done = true;
            }
        }
        let mut out = ep_poll_result::default();
        // SAFETY: live loop; no commands; `out` is writable.
        let rc = unsafe { ep_poll(lp, 10, ptr::null(), &mut out) };
        assert!(rc == 0 || rc == -libc::EINTR, "ep_poll: {rc}");
        steps += 1;
        mapped.check(&out);
        if out.count == 0 {
            continue;
        }
        // SAFETY: ep_poll handed out `count` events and `data_len` bytes, valid until the next call.
        let (events, data) = unsafe {
            (
                std::slice::from_raw_parts(out.events, out.count),
                if out.data_len == 0 {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(out.data, out.data_len)
                },
            )
        };
        let mut next_offset = 0;
        for e in events {
            match e.kind {
                EP_EVENT_DATA => {
                    // The step's data holds the events' bytes one after the other.
                    assert_eq!(e.offset, next_offset, "data events out of order");
                    next_offset = e.offset + e.len;
                    let bytes = &data[e.offset as usize..next_offset as usize];
                    received.entry(e.id).or_default().extend_from_slice(bytes);
                }
                EP_EVENT_CLOSE => {
                    assert_eq!(
                        e.reason,
                        ep_close_reason::EP_CLOSE_PEER_EOF as u32,
                        "close of {}",
                        e.id
                    );
                    closed += 1;
                }
                EP_EVENT_ACCEPT | EP_EVENT_WRITABLE => {}
                other => panic!("unexpected event kind {other}"),
            }
        }
        assert_eq!(
            next_offset as usize, out.data_len,
            "bytes not claimed by an event"
        );
    }
    // SAFETY: the loop is freed once.
    unsafe { ep_loop_free(lp) };

    assert_eq!(received.len(), clients.len());
    for got in received.values() {
        let index = usize::from(got[0]);
        let want = &clients[index].bytes;
        assert_eq!(got.len(), want.len(), "stream {index}: length");
        assert!(got == want, "stream {index}: bytes differ");
    }
    // The floods made the step's data grow (remapped a few times) but not at every step.
    assert!(
        mapped.remaps >= 2 && mapped.remaps < steps / 2,
        "{} remaps in {steps} steps",
        mapped.remaps
    );
}
