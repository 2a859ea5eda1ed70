//! ep_send_file on real sockets in both trigger modes: files of 0 B, 1 B, 1 MiB and 100 MiB
//! arrive byte for byte, in order with what was sent around them; the caller's descriptor stays
//! its own; a file that shrinks while queued fails the connection exactly once (ENODATA).

mod common;

use common::*;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// A file in the temp directory, removed when dropped.
struct TempFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl TempFile {
    /// `len` bytes of pattern `seed`, written in 1 MiB chunks.
    fn new(seed: u64, len: usize) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "eploop-sendfile-{}-{seed}-{len}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        for off in (0..len).step_by(MIB) {
            file.write_all(&pattern(seed, off as u64, MIB.min(len - off)))
                .unwrap();
        }
        TempFile { path, file }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn send_file(lp: *mut ep_loop, conn: u64, fd: i32, offset: u64, length: u64) -> i32 {
    // SAFETY: plain call.
    unsafe { ep_send_file(lp, conn, fd, offset, length) }
}

/// Serves "<len>:" + the file + "end" and closes; the client checks every byte and the time.
fn serve_file(flags: u32, len: usize) {
    let h = Harness::new();
    h.rec.set_keep_data(false);
    let seed = 40 + len as u64;
    let tmp = TempFile::new(seed, len);
    let results = Rc::new(RefCell::new(Vec::new()));
    {
        let res = results.clone();
        let path = tmp.path.clone();
        h.rec.set_hook(move |_, lp, ev| {
            if let Event::Accept { conn, .. } = *ev {
                // The caller's descriptor is closed right after the call: the loop sends from
                // its own duplicate.
                let f = std::fs::File::open(&path).unwrap();
                let mut res = res.borrow_mut();
                res.push(send(lp, conn, format!("{len}:").as_bytes()));
                res.push(send_file(lp, conn, f.as_raw_fd(), 0, 0));
                drop(f);
                res.push(send(lp, conn, b"end"));
                res.push(close(lp, conn));
            }
        });
    }
    let (_, port) = h.listen("127.0.0.1", flags);
    let started = Instant::now();
    let c = connect(port);
    let conn = h.accept_for(&c);
    let done = flag();
    let reader = spawn_hashing_reader(c, done.clone());
    h.run_until_for("file served", Duration::from_secs(60), |r| {
        is_set(&done) && r.is_closed(conn)
    });
    let (n, got) = reader.join().unwrap().expect("client reader");
    let mut want = Fnv::new();
    want.update(format!("{len}:").as_bytes());
    for off in (0..len).step_by(MIB) {
        want.update(&pattern(seed, off as u64, MIB.min(len - off)));
    }
    want.update(b"end");
    let header = format!("{len}:").len() as u64;
    assert_eq!(n, header + len as u64 + 3, "bytes received");
    assert_eq!(
        got,
        want.finish(),
        "received stream differs from header + file + trailer"
    );
    assert_eq!(h.rec.close_of(conn), Some((LOCAL, 0)));
    let res = results.borrow();
    assert!(res.iter().all(|r| *r == 0 || *r == 1), "results {res:?}");
    // Beyond what the kernel's socket buffers take at once (up to 32 MiB on loopback).
    if len > 64 * MIB {
        assert_eq!(
            res[1], 1,
            "a file beyond the high-water mark counts for the watermarks"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    drop(tmp);
    h.finish();
}

both_modes!(file_of_0_bytes);
fn file_of_0_bytes(flags: u32) {
    serve_file(flags, 0)
}
both_modes!(file_of_1_byte);
fn file_of_1_byte(flags: u32) {
    serve_file(flags, 1)
}
both_modes!(file_of_1_mib);
fn file_of_1_mib(flags: u32) {
    serve_file(flags, MIB)
}
both_modes!(file_of_100_mib);
fn file_of_100_mib(flags: u32) {
    serve_file(flags, 100 * MIB)
}

both_modes!(ranges_and_queued_order);
/// Ranges of one file queued behind a large copied send and before more sends: in order, each
/// exactly its range.
fn ranges_and_queued_order(flags: u32) {
    let h = Harness::new();
    let tmp = TempFile::new(7, 3 * MIB);
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    let fd = tmp.file.as_raw_fd();
    let big = pattern(8, 0, 16 * MIB);
    assert_eq!(send(h.lp, conn, &big), 1);
    assert!(send_file(h.lp, conn, fd, 10, 100) >= 0);
    assert!(send(h.lp, conn, b"|") >= 0);
    assert!(send_file(h.lp, conn, fd, 2 * MIB as u64, 0) >= 0);
    assert!(send_file(h.lp, conn, fd, 0, 1) >= 0);
    assert_eq!(close(h.lp, conn), 0);
    let done = flag();
    let reader = spawn_reader(c, done.clone());
    h.run_until("all read", |r| is_set(&done) && r.is_closed(conn));
    let got = reader.join().unwrap().expect("reader");
    let mut want = big;
    want.extend_from_slice(&pattern(7, 10, 100));
    want.push(b'|');
    want.extend_from_slice(&pattern(7, 2 * MIB as u64, MIB));
    want.extend_from_slice(&pattern(7, 0, 1));
    assert_eq!(got.len(), want.len());
    assert!(got == want, "stream differs");
    h.finish();
}

both_modes!(truncated_while_queued_fails_once);
/// The file shrinks while its range is queued (the client is not reading): the connection ends
/// exactly once, on_close(EP_CLOSE_ERROR, ENODATA), and no hang, no crash.
fn truncated_while_queued_fails_once(flags: u32) {
    let h = Harness::new();
    h.rec.set_keep_data(false);
    let tmp = TempFile::new(11, 64 * MIB);
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    assert_eq!(send_file(h.lp, conn, tmp.file.as_raw_fd(), 0, 0), 1);
    tmp.file.set_len(MIB as u64).unwrap();
    let done = flag();
    let reader = spawn_hashing_reader(c, done.clone());
    let (reason, err) = h.run_until_closed(conn);
    assert_eq!(
        (reason, err),
        (ERROR, libc::ENODATA),
        "close of a truncated file"
    );
    h.run_until("client done", |_| is_set(&done));
    let received = reader.join().unwrap().map(|(n, _)| n).unwrap_or(0);
    assert!(
        received < 64 * MIB as u64,
        "received the whole untruncated file"
    );
    h.finish();
}

both_modes!(refused_files_queue_nothing);
/// A bad descriptor, a pipe, an offset past the end: the caller's mistakes, reported with a
/// code, nothing queued, the connection unharmed.
fn refused_files_queue_nothing(flags: u32) {
    let h = Harness::new();
    let tmp = TempFile::new(12, 100);
    let (listener, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    let (r, w) = pipe();
    let wo = std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp.path)
        .unwrap();
    assert_eq!(send_file(h.lp, conn, -1, 0, 0), -libc::EBADF);
    assert_eq!(send_file(h.lp, conn, r, 0, 0), -libc::EINVAL);
    assert_eq!(send_file(h.lp, conn, wo.as_raw_fd(), 0, 0), -libc::EBADF);
    assert_eq!(
        send_file(h.lp, conn, tmp.file.as_raw_fd(), 101, 0),
        -libc::EINVAL
    );
    assert_eq!(
        send_file(h.lp, conn, tmp.file.as_raw_fd(), u64::MAX, 2),
        -libc::EINVAL
    );
    assert_eq!(
        send_file(h.lp, listener, tmp.file.as_raw_fd(), 0, 0),
        EP_EKIND
    );
    assert_eq!(
        send_file(h.lp, conn, tmp.file.as_raw_fd(), 100, 0),
        0,
        "an empty range"
    );
    assert_eq!(send_file(h.lp, conn, tmp.file.as_raw_fd(), 90, 0), 0);
    // SAFETY: the test's own pipe ends, closed once.
    unsafe {
        libc::close(r);
        libc::close(w);
    }
    drop(wo);
    assert_eq!(close(h.lp, conn), 0);
    h.run_until_closed(conn);
    let mut got = Vec::new();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, pattern(12, 90, 10), "only the valid range was sent");
    h.finish();
}
