//! Writes never block, never lose or reorder bytes; watermarks and read pausing work in both
//! trigger modes.

mod common;

use common::*;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

both_modes!(echo_64_mib);
/// 64 MiB through an echo server (writer and reader threads), checked by FNV-1a on all sides.
fn echo_64_mib(flags: u32) {
    const TOTAL: usize = 64 * MIB;
    const CHUNK: usize = 64 * 1024;
    let h = Harness::new();
    h.rec.set_keep_data(false);
    h.rec.set_hook(echo);
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    let mut wc = c.try_clone().unwrap();
    let started = Instant::now();
    let writer = thread::spawn(move || -> std::io::Result<u64> {
        let mut hash = Fnv::new();
        for off in (0..TOTAL).step_by(CHUNK) {
            let chunk = pattern(12, off as u64, CHUNK);
            hash.update(&chunk);
            wc.write_all(&chunk)?;
        }
        wc.shutdown(std::net::Shutdown::Write)?;
        Ok(hash.finish())
    });
    let done = flag();
    let reader = spawn_hashing_reader(c, done.clone());
    h.run_until("64 MiB echoed and the connection closed", |r| {
        is_set(&done) && r.is_closed(conn)
    });
    let elapsed = started.elapsed();
    let sent_hash = writer.join().unwrap().expect("client writer");
    let (n, got_hash) = reader.join().unwrap().expect("client reader");
    assert_eq!(n, TOTAL as u64, "bytes echoed back");
    assert_eq!(got_hash, sent_hash, "echoed stream differs");
    assert_eq!(h.rec.bytes(conn), TOTAL as u64);
    assert_eq!(
        h.rec.with(conn, |l| l.hash.finish()),
        sent_hash,
        "stream seen by on_data differs"
    );
    assert_eq!(h.rec.close_of(conn), Some((PEER_EOF, 0)));
    eprintln!(
        "echo 64 MiB ({}): {:?}, {:.0} MiB/s",
        if flags & EP_EDGE != 0 {
            "edge"
        } else {
            "level"
        },
        elapsed,
        64.0 / elapsed.as_secs_f64()
    );
    h.finish();
}

both_modes!(small_writes_after_large_queued_write);
/// One 16 MiB send (mostly queued), then 20000 small sends: the client reads them in call order.
fn small_writes_after_large_queued_write(flags: u32) {
    const LARGE: usize = 16 * MIB;
    const SMALL: u64 = 20_000;
    let h = Harness::new();
    let results = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let res = results.clone();
    h.rec.set_hook(move |_, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            let mut res = res.borrow_mut();
            res.push(send(lp, conn, &pattern(14, 0, LARGE)));
            for i in 0..SMALL {
                res.push(send(lp, conn, &i.to_le_bytes()));
            }
            res.push(close(lp, conn));
        }
    });
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
    let res = results.borrow();
    assert_eq!(
        res[0], 1,
        "a 16 MiB send to a client not reading yet must be queued"
    );
    assert!(
        res[1..=SMALL as usize].iter().all(|r| *r == 1),
        "small sends while above high water"
    );
    assert_eq!(*res.last().unwrap(), 0);
    assert_eq!(got.len(), LARGE + 8 * SMALL as usize);
    assert!(
        got[..LARGE] == pattern(14, 0, LARGE),
        "large write corrupted"
    );
    for (i, chunk) in got[LARGE..].chunks(8).enumerate() {
        let v = u64::from_le_bytes(chunk.try_into().unwrap());
        assert_eq!(v, i as u64, "small write {i} out of order");
    }
    assert_eq!(h.rec.close_of(conn), Some((LOCAL, 0)));
    h.finish();
}

both_modes!(watermarks_fire_once_per_crossing);
/// ep_send returns 1 above high; on_writable fires exactly once each time the queue then drains
/// to low, never while it is still above, never without a crossing.
fn watermarks_fire_once_per_crossing(flags: u32) {
    let h = Harness::new();
    h.rec.set_hook(|_, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            // SAFETY: live loop (inside its callback).
            let fd = unsafe { ep_fd(lp, conn) };
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 4096);
            // SAFETY: as above.
            let r = unsafe { ep_set_watermarks(lp, conn, 16 * 1024, 64 * 1024) };
            assert_eq!(r, 0);
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    // A fixed receive buffer: autotuning would let the kernel absorb later megabytes.
    setsockopt_int(
        std::os::fd::AsRawFd::as_raw_fd(&c),
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        64 * 1024,
    );
    let conn = h.accept_for(&c);
    let mut offset = 0u64;
    for crossing in 1..=3usize {
        assert_eq!(
            send(h.lp, conn, &pattern(13, offset, MIB)),
            1,
            "crossing {crossing}: 1 MiB must exceed high"
        );
        assert_eq!(
            send(h.lp, conn, &pattern(13, offset + MIB as u64, 10)),
            1,
            "still above high"
        );
        h.run_for(Duration::from_millis(60));
        assert_eq!(
            h.rec.writables(conn),
            crossing - 1,
            "on_writable before the peer read anything"
        );
        let done = flag();
        let reader = spawn_exact_reader(&c, MIB + 10, done.clone());
        h.run_until(&format!("crossing {crossing}"), |r| {
            is_set(&done) && r.writables(conn) >= crossing
        });
        let got = reader.join().unwrap().expect("client read");
        assert!(
            got == pattern(13, offset, MIB + 10),
            "crossing {crossing}: data corrupted"
        );
        offset += (MIB + 10) as u64;
        h.run_for(Duration::from_millis(60));
        assert_eq!(
            h.rec.writables(conn),
            crossing,
            "on_writable must fire exactly once per crossing"
        );
    }
    // Staying at or below high water: 0, and no on_writable.
    let small = pattern(13, offset, 1000);
    assert_eq!(send(h.lp, conn, &small), 0);
    let done = flag();
    let reader = spawn_exact_reader(&c, 1000, done.clone());
    h.run_until("small read", |_| is_set(&done));
    assert!(reader.join().unwrap().unwrap() == small);
    h.run_for(Duration::from_millis(60));
    assert_eq!(h.rec.writables(conn), 3, "on_writable without a crossing");
    h.finish();
}

both_modes!(watermarks_inherited_from_listener);
fn watermarks_inherited_from_listener(flags: u32) {
    let h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", flags);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_set_watermarks(h.lp, listener, 100, 200) }, 0);
    let c = connect(port);
    let conn = h.accept_for(&c);
    // 150 bytes: the kernel takes them at once, so the queue stays empty: 0.
    assert_eq!(send(h.lp, conn, &[1u8; 150]), 0);
    // Fill the socket until a send queues more than 200 bytes.
    let mut queued_above = false;
    for _ in 0..2000 {
        if send(h.lp, conn, &[2u8; 64 * 1024]) == 1 {
            queued_above = true;
            break;
        }
    }
    assert!(
        queued_above,
        "ep_send never reported the queue above the inherited high mark"
    );
    drop(c);
    h.run_until_closed(conn);
    h.finish();
}

both_modes!(pause_and_resume_reading);
/// No on_data while paused (from the test thread or from inside on_data); everything that came
/// meanwhile is delivered after resume — in edge mode too, where no new edge will come.
fn pause_and_resume_reading(flags: u32) {
    let h = Harness::new();
    let pause_on_next_data = std::rc::Rc::new(std::cell::Cell::new(false));
    let p = pause_on_next_data.clone();
    h.rec.set_hook(move |_, lp, ev| match *ev {
        Event::Accept { conn, .. } => {
            // SAFETY: live loop, inside its callback.
            assert_eq!(unsafe { ep_pause_reading(lp, conn) }, 0);
        }
        Event::Data { conn, .. } if p.get() => {
            p.set(false);
            // SAFETY: live loop, inside its callback.
            assert_eq!(unsafe { ep_pause_reading(lp, conn) }, 0);
        }
        _ => {}
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    let quiet = |h: &Harness, expect: u64, what: &str| {
        // Give the bytes time to arrive, then the paused connection must leave the loop idle.
        thread::sleep(Duration::from_millis(20));
        h.assert_idle(&format!("paused ({what})"));
        assert_eq!(h.rec.bytes(conn), expect, "on_data while paused ({what})");
    };
    let resume = |h: &Harness| {
        // SAFETY: live loop.
        assert_eq!(unsafe { ep_resume_reading(h.lp, conn) }, 0);
    };
    // Paused in on_accept.
    c.write_all(&[1u8; 1000]).unwrap();
    quiet(&h, 0, "paused in on_accept");
    resume(&h);
    h.run_until("1000 bytes after resume", |r| r.bytes(conn) == 1000);
    // Paused from the test thread.
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_pause_reading(h.lp, conn) }, 0);
    c.write_all(&[2u8; 500]).unwrap();
    quiet(&h, 1000, "paused by the test");
    resume(&h);
    h.run_until("1500 bytes", |r| r.bytes(conn) == 1500);
    // Paused from inside on_data.
    pause_on_next_data.set(true);
    c.write_all(&[3u8; 100]).unwrap();
    h.run_until("1600 bytes", |r| r.bytes(conn) == 1600);
    assert!(!pause_on_next_data.get());
    c.write_all(&[4u8; 100]).unwrap();
    quiet(&h, 1600, "paused in on_data");
    resume(&h);
    h.run_until("1700 bytes", |r| r.bytes(conn) == 1700);
    // Paused while the peer sends its last bytes and FIN: data first, then PEER_EOF.
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_pause_reading(h.lp, conn) }, 0);
    c.write_all(&[5u8; 50]).unwrap();
    drop(c);
    h.run_for(Duration::from_millis(100));
    assert_eq!(
        h.rec.bytes(conn),
        1700,
        "on_data while paused (peer closed)"
    );
    if !h.rec.is_closed(conn) {
        resume(&h);
    }
    assert_eq!(h.run_until_closed(conn), (PEER_EOF, 0));
    let data = h.rec.data(conn);
    assert_eq!(data.len(), 1750);
    assert!(data[1700..].iter().all(|b| *b == 5));
    h.finish();
}

both_modes!(pause_listener_stops_accepting);
fn pause_listener_stops_accepting(flags: u32) {
    let h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", flags);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_pause_reading(h.lp, listener) }, 0);
    let c = connect(port);
    thread::sleep(Duration::from_millis(20));
    h.assert_idle("paused listener with a pending connection");
    assert_eq!(h.rec.accepted_count(), 0, "accepted while paused");
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_resume_reading(h.lp, listener) }, 0);
    h.accept_for(&c);
    h.finish();
}

#[test]
fn send_copies_the_buffer() {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", 0);
    let c = connect(port);
    let conn = h.accept_for(&c);
    let mut buf = pattern(15, 0, 8 * MIB);
    assert_eq!(send(h.lp, conn, &buf), 1);
    let expected = buf.clone();
    buf.iter_mut().for_each(|b| *b = 0);
    drop(buf);
    let done = flag();
    let reader = spawn_exact_reader(&c, 8 * MIB, done.clone());
    h.run_until("8 MiB read", |_| is_set(&done));
    assert!(
        reader.join().unwrap().unwrap() == expected,
        "queued bytes changed after ep_send returned"
    );
    drop(c);
    h.finish();
}
