//! One flooding peer cannot starve the others (a read budget per connection per wakeup), and
//! in edge mode the budget never loses readiness (the flood is still consumed to the end).

mod common;

use common::*;
use std::cell::Cell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The two tests are timing-sensitive: never run them concurrently.
static SERIAL: Mutex<()> = Mutex::new(());

const MIN_FLOOD: u64 = 64 << 20;
const MAX_FLOOD: u64 = 1 << 30;
const ROUND_TRIPS: usize = 100;

both_modes!(ping_pong_not_starved_by_flood);
/// Client A floods (at least 64 MiB, and on until B is done, at most 1 GiB); client B does 100
/// ping-pong round trips meanwhile. B must finish while A is still flooding, within a bounded
/// time, and afterwards every flooded byte must still be consumed (no lost readiness).
fn ping_pong_not_starved_by_flood(flags: u32) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::new();
    h.rec.set_keep_data(false);
    let ping_id = Rc::new(Cell::new(0u64));
    let pid = ping_id.clone();
    h.rec.set_hook(move |_, lp, ev| {
        if let Event::Data { conn, data } = *ev {
            if conn == pid.get() {
                assert_eq!(send(lp, conn, data), 0);
            }
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);

    let mut pinger = connect(port);
    ping_id.set(h.accept_for(&pinger));
    let flooder = connect(port);
    setsockopt_int(
        std::os::fd::AsRawFd::as_raw_fd(&flooder),
        libc::SOL_SOCKET,
        libc::SO_SNDBUF,
        4 << 20,
    );
    let flood_id = h.accept_for(&flooder);

    let ping_done = flag();
    let flood_written = Arc::new(AtomicU64::new(0));
    let flood_at_ping_done = Arc::new(AtomicU64::new(u64::MAX));

    let flood_thread = {
        let (ping_done, written) = (ping_done.clone(), flood_written.clone());
        let mut s = flooder;
        thread::spawn(move || -> std::io::Result<u64> {
            let chunk = vec![0xF1u8; 256 * 1024];
            let mut total = 0u64;
            while total < MAX_FLOOD && (total < MIN_FLOOD || !is_set(&ping_done)) {
                s.write_all(&chunk)?;
                total += chunk.len() as u64;
                written.store(total, Ordering::SeqCst);
            }
            s.shutdown(std::net::Shutdown::Write)?;
            Ok(total)
        })
    };
    // Start pinging once the flood is under way.
    let started = Instant::now();
    while flood_written.load(Ordering::SeqCst) < (4 << 20) {
        assert!(started.elapsed() < LIMIT, "flood did not start");
        h.run_once(1);
    }
    let ping_thread = {
        let (ping_done, written, at_done) = (
            ping_done.clone(),
            flood_written.clone(),
            flood_at_ping_done.clone(),
        );
        thread::spawn(move || -> std::io::Result<(Duration, Duration)> {
            let start = Instant::now();
            let mut worst = Duration::ZERO;
            for i in 0..ROUND_TRIPS as u64 {
                let t = Instant::now();
                pinger.write_all(&i.to_le_bytes())?;
                let mut buf = [0u8; 8];
                pinger.read_exact(&mut buf)?;
                assert_eq!(u64::from_le_bytes(buf), i);
                worst = worst.max(t.elapsed());
            }
            at_done.store(written.load(Ordering::SeqCst), Ordering::SeqCst);
            ping_done.store(true, Ordering::SeqCst);
            Ok((start.elapsed(), worst))
        })
    };

    let consumed_at_ping_done = Rc::new(Cell::new(None));
    let c = consumed_at_ping_done.clone();
    h.run_until("100 round trips, then the whole flood consumed", |r| {
        if c.get().is_none() && is_set(&ping_done) {
            c.set(Some(r.bytes(flood_id)));
        }
        is_set(&ping_done) && r.is_closed(flood_id)
    });
    let (ping_time, worst_rtt) = ping_thread.join().unwrap().expect("pinger");
    let flood_total = flood_thread.join().unwrap().expect("flooder");
    let consumed = consumed_at_ping_done.get().unwrap_or(0);
    eprintln!(
        "{}: 100 round trips in {ping_time:?} (worst {worst_rtt:?}) while the server had consumed {} MiB \
         of the flood; flood total {} MiB",
        if flags & EP_EDGE != 0 { "edge" } else { "level" },
        consumed >> 20,
        flood_total >> 20
    );
    assert!(
        flood_at_ping_done.load(Ordering::SeqCst) < MAX_FLOOD,
        "the ping-pong client finished only after the flooder gave up ({} MiB): starved",
        MAX_FLOOD >> 20
    );
    assert!(
        consumed < flood_total,
        "ping-pong finished only after the flood was fully consumed"
    );
    assert!(
        ping_time < Duration::from_secs(5),
        "100 round trips took {ping_time:?}"
    );
    assert_eq!(h.rec.bytes(flood_id), flood_total, "flood bytes delivered");
    assert_eq!(h.rec.close_of(flood_id), Some((PEER_EOF, 0)));
    assert_eq!(h.rec.bytes(ping_id.get()), 8 * ROUND_TRIPS as u64);
    h.finish();
}

both_modes!(many_floods_all_progress);
/// Eight clients each send 8 MiB at once and shut down: all are consumed completely, and each
/// gets on_data before any single one is finished (interleaving, not one-at-a-time).
fn many_floods_all_progress(flags: u32) {
    const CLIENTS: usize = 8;
    const EACH: usize = 8 << 20;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::new();
    h.rec.set_keep_data(false);
    let (_, port) = h.listen("127.0.0.1", flags);
    let clients: Vec<_> = (0..CLIENTS).map(|_| connect(port)).collect();
    let ids: Vec<u64> = clients.iter().map(|c| h.accept_for(c)).collect();
    let barrier = Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let barrier = barrier.clone();
            thread::spawn(move || -> std::io::Result<()> {
                barrier.wait();
                let chunk = vec![0xABu8; 128 * 1024];
                for _ in 0..EACH / chunk.len() {
                    c.write_all(&chunk)?;
                }
                c.shutdown(std::net::Shutdown::Write)
            })
        })
        .collect();
    let first_finished_with_others_started = Rc::new(Cell::new(None::<bool>));
    let f = first_finished_with_others_started.clone();
    h.run_until("all floods consumed", |r| {
        if f.get().is_none() && ids.iter().any(|id| r.bytes(*id) == EACH as u64) {
            f.set(Some(ids.iter().all(|id| r.bytes(*id) > 0)));
        }
        ids.iter().all(|id| r.is_closed(*id))
    });
    for t in threads {
        t.join().unwrap().expect("flooder");
    }
    for id in &ids {
        assert_eq!(h.rec.bytes(*id), EACH as u64);
        assert_eq!(h.rec.close_of(*id), Some((PEER_EOF, 0)));
    }
    assert_eq!(
        first_finished_with_others_started.get(),
        Some(true),
        "one flood was consumed completely before some other connection got any data"
    );
    h.finish();
}

both_modes!(accept_burst);
/// 200 clients connect at once, each sends one byte and closes: every one is accepted and
/// closed exactly once with its byte (bounded accepts per wakeup must not lose any).
fn accept_burst(flags: u32) {
    const CLIENTS: usize = 200;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", flags);
    for i in 0..CLIENTS {
        connect(port).write_all(&[i as u8]).unwrap();
    }
    h.run_until("every client accepted and closed", |r| {
        r.accepted_count() == CLIENTS && r.closes() == CLIENTS
    });
    assert_eq!(h.rec.accepted().len(), CLIENTS);
    for id in h.rec.accepted() {
        assert_eq!(h.rec.bytes(id), 1);
        assert_eq!(h.rec.close_of(id), Some((PEER_EOF, 0)));
    }
    assert!(!h.rec.is_closed(listener));
    h.finish();
}
