//! Vectored and no-copy sends, and EP_AUTO_PAUSE, on real sockets in both trigger modes: bytes
//! leave in call order across every kind of segment; a no-copy buffer's release runs exactly
//! once in every ending, never inside the call that queued it, and may call back into the loop.

mod common;

use common::*;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Counts the releases of the no-copy buffers of one test. Each buffer's `user` is a Token in
/// `tokens`, which outlives the loop.
struct Releases {
    lp: Cell<*mut ep_loop>,
    counts: RefCell<Vec<u32>>,
    /// What ep_run_once returned when called from inside a release (it must be refused: a
    /// release is a callback).
    nested_run: RefCell<Vec<i32>>,
    /// Boxed: each token keeps its address (a release's user pointer) while the Vec grows.
    #[allow(clippy::vec_box)]
    tokens: RefCell<Vec<Box<Token>>>,
}

struct Token {
    log: *const Releases,
    index: usize,
}

impl Releases {
    fn new(lp: *mut ep_loop) -> Rc<Releases> {
        Rc::new(Releases {
            lp: Cell::new(lp),
            counts: RefCell::new(Vec::new()),
            nested_run: RefCell::new(Vec::new()),
            tokens: RefCell::new(Vec::new()),
        })
    }

    /// A user pointer for one more buffer, and its index.
    fn token(&self) -> (*mut c_void, usize) {
        let index = self.counts.borrow().len();
        self.counts.borrow_mut().push(0);
        let token = Box::new(Token {
            log: self as *const Releases,
            index,
        });
        let ptr = &*token as *const Token as *mut c_void;
        self.tokens.borrow_mut().push(token);
        (ptr, index)
    }

    fn count(&self, index: usize) -> u32 {
        self.counts.borrow()[index]
    }

    /// ep_send_nocopy of `data` (kept alive by the caller until its release).
    fn send(&self, lp: *mut ep_loop, conn: u64, data: &[u8]) -> (i32, usize) {
        let (user, index) = self.token();
        // SAFETY: `data` outlives the loop in every test; the token outlives the loop.
        let r = unsafe {
            ep_send_nocopy(
                lp,
                conn,
                data.as_ptr().cast(),
                data.len(),
                Some(on_release),
                user,
            )
        };
        (r, index)
    }
}

unsafe extern "C" fn on_release(user: *mut c_void) {
    // SAFETY: `user` is a Token of a Releases that outlives the loop.
    let token = unsafe { &*(user as *const Token) };
    // SAFETY: as above.
    let log = unsafe { &*token.log };
    log.counts.borrow_mut()[token.index] += 1;
    let lp = log.lp.get();
    if !lp.is_null() {
        // SAFETY: the loop is alive while it runs this release.
        let r = unsafe { ep_run_once(lp, 0) };
        log.nested_run.borrow_mut().push(r);
    }
}

fn sendv(lp: *mut ep_loop, conn: u64, parts: &[&[u8]]) -> i32 {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: `iov` describes live buffers.
    unsafe { ep_sendv(lp, conn, iov.as_ptr().cast(), iov.len() as i32) }
}

/// A file with `len` bytes of pattern `seed`, unlinked at once (the fd keeps it).
fn temp_file(seed: u64, len: usize) -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "eploop-sendv-{}-{seed}-{len}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(&pattern(seed, 0, len)).unwrap();
    f
}

both_modes!(mixed_segments_keep_call_order);
/// send, sendv, no-copy and file segments interleaved, some written at once and some queued
/// behind a large one: the peer receives exactly their concatenation, in call order.
fn mixed_segments_keep_call_order(flags: u32) {
    let h = Harness::new();
    let rel = Releases::new(h.lp);
    let big = pattern(1, 0, 8 * MIB);
    let small = pattern(2, 0, 1000);
    let file = temp_file(3, 3 * MIB + 7);
    let parts: Vec<Vec<u8>> = (0..100)
        .map(|i| pattern(4 + i, 0, 1 + i as usize * 37))
        .collect();
    let mut expected = Vec::new();
    expected.extend_from_slice(b"head;");
    expected.extend_from_slice(&small);
    for p in &parts {
        expected.extend_from_slice(p);
    }
    expected.extend_from_slice(&big);
    expected.extend_from_slice(b"between;");
    expected.extend_from_slice(&pattern(3, 5, 3 * MIB));
    for p in &parts[..3] {
        expected.extend_from_slice(p);
    }
    expected.extend_from_slice(&small);
    expected.extend_from_slice(&pattern(3, 0, 3 * MIB + 7));
    expected.extend_from_slice(b"tail");
    let results = Rc::new(RefCell::new(Vec::new()));
    {
        let (rel, res) = (rel.clone(), results.clone());
        let (big, small, parts) = (big.clone(), small.clone(), parts.clone());
        let file_fd = file.as_raw_fd();
        // Leaked on purpose: no-copy buffers must outlive the loop's use of them.
        let big: &'static [u8] = Box::leak(big.into_boxed_slice());
        let small: &'static [u8] = Box::leak(small.into_boxed_slice());
        h.rec.set_hook(move |_, lp, ev| {
            if let Event::Accept { conn, .. } = *ev {
                let mut res = res.borrow_mut();
                res.push(send(lp, conn, b"head;"));
                res.push(rel.send(lp, conn, small).0);
                let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
                res.push(sendv(lp, conn, &refs));
                res.push(rel.send(lp, conn, big).0);
                res.push(send(lp, conn, b"between;"));
                // SAFETY: plain call; the file stays open for the test.
                res.push(unsafe { ep_send_file(lp, conn, file_fd, 5, 3 * MIB as u64) });
                res.push(sendv(lp, conn, &refs[..3]));
                res.push(rel.send(lp, conn, small).0);
                // SAFETY: as above; length 0 = to the end of the file.
                res.push(unsafe { ep_send_file(lp, conn, file_fd, 0, 0) });
                res.push(send(lp, conn, b"tail"));
                res.push(close(lp, conn));
                // Nothing released from inside the calls, even what went out at once.
                assert_eq!(*rel.counts.borrow(), vec![0, 0, 0]);
            }
        });
    }
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    let done = flag();
    let reader = spawn_reader(c, done.clone());
    h.run_until("client EOF", |r| is_set(&done) && r.is_closed(conn));
    let got = reader
        .join()
        .unwrap()
        .expect("client: error instead of EOF");
    assert_eq!(got.len(), expected.len(), "byte count");
    assert!(
        got == expected,
        "stream differs from the concatenation of the sends"
    );
    let res = results.borrow();
    assert!(
        res.iter().all(|r| *r == 0 || *r == 1),
        "send results {res:?}"
    );
    assert_eq!(h.rec.close_of(conn), Some((LOCAL, 0)));
    assert_eq!(
        *rel.counts.borrow(),
        vec![1, 1, 1],
        "each buffer released once"
    );
    assert!(
        rel.nested_run.borrow().iter().all(|r| *r == EP_EBUSY),
        "a release runs as a callback: {:?}",
        rel.nested_run.borrow()
    );
    h.finish();
    assert_eq!(
        *rel.counts.borrow(),
        vec![1, 1, 1],
        "no release after the loop was freed"
    );
}

/// How the connection holding a queued no-copy buffer ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Flushed,
    Abort,
    PeerReset,
    LoopFree,
}

fn release_once(flags: u32, ending: Ending) {
    let mut h = Harness::new();
    let rel = Releases::new(h.lp);
    let big: &'static [u8] = Box::leak(pattern(9, 0, 32 * MIB).into_boxed_slice());
    let tiny: &'static [u8] = b"tiny";
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    let (r, tiny_index) = rel.send(h.lp, conn, tiny);
    assert_eq!(r, 0);
    assert_eq!(rel.count(tiny_index), 0, "released inside ep_send_nocopy");
    let (r, big_index) = rel.send(h.lp, conn, big);
    assert_eq!(
        r, 1,
        "32 MiB to a client not reading is queued above high water"
    );
    h.run_until("the tiny buffer released", |_| rel.count(tiny_index) == 1);
    assert_eq!(rel.count(big_index), 0, "released while still queued");
    match ending {
        Ending::Flushed => {
            assert_eq!(close(h.lp, conn), 0);
            let done = flag();
            let reader = spawn_reader(c, done.clone());
            h.run_until("closed", |r| is_set(&done) && r.is_closed(conn));
            let got = reader.join().unwrap().expect("reader");
            assert_eq!(got.len(), tiny.len() + big.len());
            assert!(got[tiny.len()..] == *big);
        }
        Ending::Abort => {
            assert_eq!(abort(h.lp, conn), 0);
            assert_eq!(rel.count(big_index), 0, "released inside ep_abort");
            h.run_until_closed(conn);
        }
        Ending::PeerReset => {
            rst(c);
            std::thread::sleep(Duration::from_millis(50));
            // The RST arrived: a send finds the peer gone; until on_close (one channel) a
            // no-copy send then returns 1, sends nothing and is released once, later.
            assert_eq!(send(h.lp, conn, b"x"), 1);
            let (r, late) = rel.send(h.lp, conn, tiny);
            assert_eq!(r, 1);
            assert_eq!(rel.count(late), 0, "released inside the call");
            h.run_until_closed(conn);
        }
        Ending::LoopFree => {
            rel.lp.set(std::ptr::null_mut());
            h.free();
        }
    }
    if !matches!(ending, Ending::LoopFree) {
        h.run_until("released", |_| rel.count(big_index) == 1);
    }
    assert!(
        rel.counts.borrow().iter().all(|n| *n == 1),
        "{ending:?}: {:?}",
        rel.counts.borrow()
    );
    h.finish();
    assert!(
        rel.counts.borrow().iter().all(|n| *n == 1),
        "{ending:?}: {:?}",
        rel.counts.borrow()
    );
}

both_modes!(release_once_when_flushed);
fn release_once_when_flushed(flags: u32) {
    release_once(flags, Ending::Flushed)
}
both_modes!(release_once_on_abort);
fn release_once_on_abort(flags: u32) {
    release_once(flags, Ending::Abort)
}
both_modes!(release_once_on_peer_reset);
fn release_once_on_peer_reset(flags: u32) {
    release_once(flags, Ending::PeerReset)
}
both_modes!(release_once_on_loop_free);
fn release_once_on_loop_free(flags: u32) {
    release_once(flags, Ending::LoopFree)
}

both_modes!(refused_sends_keep_the_buffer_and_queue_nothing);
/// Negative returns are the caller's mistakes: nothing is queued and a no-copy buffer is never
/// released (it stays the caller's).
fn refused_sends_keep_the_buffer_and_queue_nothing(flags: u32) {
    let h = Harness::new();
    let rel = Releases::new(h.lp);
    let (listener, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    let data: &'static [u8] = b"data";
    assert_eq!(rel.send(h.lp, listener, data).0, EP_EKIND);
    assert_eq!(rel.send(h.lp, 0xdead_0000_0001, data).0, EP_ESTALE);
    // SAFETY: plain calls with deliberately bad arguments.
    unsafe {
        assert_eq!(
            ep_send_nocopy(h.lp, conn, std::ptr::null(), 1, None, std::ptr::null_mut()),
            EP_ENULL
        );
        assert_eq!(ep_sendv(h.lp, conn, std::ptr::null(), 1), EP_ENULL);
        assert_eq!(ep_sendv(h.lp, conn, std::ptr::null(), -1), -libc::EINVAL);
        assert_eq!(ep_sendv(h.lp, conn, std::ptr::null(), 0), 0);
        let bad = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 3,
        }];
        assert_eq!(ep_sendv(h.lp, conn, bad.as_ptr().cast(), 1), EP_ENULL);
    }
    assert_eq!(shutdown(h.lp, conn), 0);
    assert_eq!(rel.send(h.lp, conn, data).0, -libc::ESHUTDOWN);
    assert_eq!(sendv(h.lp, conn, &[b"a", b"b"]), -libc::ESHUTDOWN);
    h.run_for(Duration::from_millis(30));
    assert!(
        rel.counts.borrow().iter().all(|n| *n == 0),
        "a refused buffer was released"
    );
    let mut c = c;
    let mut got = Vec::new();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "refused sends wrote {got:?}");
    drop(c);
    h.run_until_closed(conn);
    h.finish();
    assert!(rel.counts.borrow().iter().all(|n| *n == 0));
}

/// The request/response server of the auto-pause tests: each "GET <key>\n" line is answered
/// with `reply_len` bytes starting with the key; parsing stops while ep_send says "stop
/// producing" and goes on from on_writable, the leftover input kept by the application.
struct KeyServer {
    reply_len: usize,
    input: RefCell<Vec<u8>>,
    stopped: Cell<bool>,
    max_input: Cell<usize>,
    replies: Cell<u64>,
}

impl KeyServer {
    fn new(reply_len: usize) -> Rc<Self> {
        Rc::new(KeyServer {
            reply_len,
            input: RefCell::new(Vec::new()),
            stopped: Cell::new(false),
            max_input: Cell::new(0),
            replies: Cell::new(0),
        })
    }

    fn on_event(&self, lp: *mut ep_loop, ev: &Event<'_>) {
        match *ev {
            Event::Data { conn, data } => {
                self.input.borrow_mut().extend_from_slice(data);
                let held = self.input.borrow().len();
                self.max_input.set(self.max_input.get().max(held));
                self.process(lp, conn);
            }
            Event::Writable { conn } => {
                self.stopped.set(false);
                self.process(lp, conn);
            }
            _ => {}
        }
    }

    fn process(&self, lp: *mut ep_loop, conn: u64) {
        let mut input = self.input.borrow_mut();
        let mut used = 0;
        while !self.stopped.get() {
            let Some(nl) = input[used..].iter().position(|b| *b == b'\n') else {
                break;
            };
            let key = &input[used + 4..used + nl];
            let mut reply = vec![b'.'; self.reply_len];
            reply[..key.len()].copy_from_slice(key);
            reply[self.reply_len - 1] = b'\n';
            used += nl + 1;
            self.replies.set(self.replies.get() + 1);
            match send(lp, conn, &reply) {
                0 => {}
                1 => self.stopped.set(true),
                r => panic!("send: {r}"),
            }
        }
        input.drain(..used);
    }
}

fn stats(lp: *mut ep_loop) -> ep_stats {
    // SAFETY: all-zero is a valid ep_stats; the pointer and size describe it.
    let mut s: ep_stats = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { ep_get_stats(lp, &mut s, std::mem::size_of::<ep_stats>()) };
    assert_eq!(r, 0);
    s
}

/// A pipelining client that never reads floods "GET" requests for 1 MiB values for a while.
/// Returns (bytes the server read, the largest leftover input the server held, bytes queued by
/// the server's sends).
fn flood(flags: u32) -> (u64, usize, u64) {
    let h = Harness::new();
    let server = KeyServer::new(MIB);
    {
        let server = server.clone();
        h.rec.set_hook(move |_, lp, ev| server.on_event(lp, ev));
    }
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    let mut wc = c.try_clone().unwrap();
    wc.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        let mut i = 0u64;
        let mut sent = 0usize;
        while started.elapsed() < Duration::from_millis(1500) {
            let line = format!("GET {i:08}\n");
            match wc.write(line.as_bytes()) {
                Ok(n) => sent += n,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            i += 1;
        }
        sent
    });
    h.run_for(Duration::from_millis(2000));
    let client_sent = writer.join().unwrap();
    let st = stats(h.lp);
    let replies = server.replies.get();
    let max_input = server.max_input.get();
    assert!(
        client_sent >= 64 * 1024,
        "the client flooded only {client_sent} bytes"
    );
    assert!(!h.rec.is_closed(conn));
    drop(c);
    h.run_until_closed(conn);
    h.finish();
    (
        st.bytes_in,
        max_input,
        replies * MIB as u64 - st.bytes_out.min(replies * MIB as u64),
    )
}

both_modes!(auto_pause_bounds_a_pipelining_flood);
/// With EP_AUTO_PAUSE the server stops reading while its replies are queued: what it read, holds
/// and queues stays within a few MiB. Without it (the control), reading goes on and the
/// application's leftover input grows with the flood.
fn auto_pause_bounds_a_pipelining_flood(flags: u32) {
    let (read, held, queued) = flood(flags | EP_AUTO_PAUSE);
    eprintln!("auto-pause: read {read} B, held {held} B, queued {queued} B");
    assert!(
        read <= 256 * 1024,
        "read {read} bytes of requests while paused"
    );
    assert!(held <= 256 * 1024, "held {held} bytes of input");
    assert!(queued <= 4 * MIB as u64, "queued {queued} bytes");
    let (read, held, _) = flood(flags);
    eprintln!("control: read {read} B, held {held} B");
    assert!(
        held > 1024 * 1024,
        "without EP_AUTO_PAUSE the input should pile up ({held} B)"
    );
}

both_modes!(auto_pause_resumes_and_answers_everything);
/// EP_AUTO_PAUSE resumes reading at the low-water mark: every one of 20000 pipelined requests
/// (more than one read's worth) is answered, in order.
fn auto_pause_resumes_and_answers_everything(flags: u32) {
    const REQUESTS: u64 = 20_000;
    const REPLY: usize = 2048;
    let h = Harness::new();
    let server = KeyServer::new(REPLY);
    {
        let server = server.clone();
        h.rec.set_hook(move |_, lp, ev| server.on_event(lp, ev));
    }
    let (_, port) = h.listen("127.0.0.1", flags | EP_AUTO_PAUSE);
    let c = connect(port);
    let conn = h.accept_for(&c);
    let mut wc = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..REQUESTS {
            all.extend_from_slice(format!("GET {i:08}\n").as_bytes());
        }
        wc.write_all(&all).unwrap();
    });
    let done = flag();
    let reader = spawn_exact_reader(&c, REQUESTS as usize * REPLY, done.clone());
    h.run_until("every reply read", |_| is_set(&done));
    writer.join().unwrap();
    let got = reader.join().unwrap().expect("reader");
    for (i, reply) in got.chunks(REPLY).enumerate() {
        assert_eq!(
            &reply[..8],
            format!("{i:08}").as_bytes(),
            "reply {i} out of order"
        );
    }
    assert!(
        server.max_input.get() <= 512 * 1024,
        "held {} B",
        server.max_input.get()
    );
    drop(c);
    h.run_until_closed(conn);
    h.finish();
}
