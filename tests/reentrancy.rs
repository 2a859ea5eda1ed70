//! Callbacks may call any ep_* function on any id — closing themselves or others, opening new
//! fds, stopping the loop — and callbacks never nest (the recorder flags any nesting).

mod common;

use common::*;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ffi::c_void;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

fn expect_reset(c: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => panic!("client saw EOF, expected a reset"),
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
                return;
            }
        }
    }
}

fn expect_eof(c: &mut TcpStream) -> Vec<u8> {
    read_to_eof(c)
        .map_err(|(_, e)| e)
        .expect("client: error instead of EOF")
}

both_modes!(close_self_in_on_accept);
fn close_self_in_on_accept(flags: u32) {
    let h = Harness::new();
    let results = Rc::new(RefCell::new(Vec::new()));
    let res = results.clone();
    h.rec.set_hook(move |rec, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            let mut r = res.borrow_mut();
            r.push(send(lp, conn, b"bye"));
            r.push(close(lp, conn));
            r.push(rec.is_closed(conn) as i32);
            r.push(close(lp, conn));
            r.push(send(lp, conn, b"more"));
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    assert_eq!(h.run_until_closed(conn), (LOCAL, 0));
    assert_eq!(*results.borrow(), [0, 0, 0, EP_ECLOSING, EP_ECLOSING]);
    assert_eq!(expect_eof(&mut c), b"bye");
    h.finish();
}

both_modes!(abort_self_in_on_accept);
fn abort_self_in_on_accept(flags: u32) {
    let h = Harness::new();
    h.rec.set_hook(|rec, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            assert_eq!(abort(lp, conn), 0);
            assert!(!rec.is_closed(conn), "on_close ran inside ep_abort");
            assert!(send(lp, conn, b"x") < 0, "send after abort succeeded");
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    assert_eq!(h.run_until_closed(conn).0, ABORT);
    expect_reset(&mut c);
    h.finish();
}

both_modes!(close_other_in_on_accept);
/// Accepting the second client aborts the first one.
fn close_other_in_on_accept(flags: u32) {
    let h = Harness::new();
    h.rec.set_hook(|rec, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            let accepted = rec.accepted();
            if accepted.len() == 2 {
                assert_eq!(accepted[1], conn);
                assert_eq!(abort(lp, accepted[0]), 0);
                assert!(!rec.is_closed(accepted[0]), "on_close ran inside ep_abort");
            }
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut a = connect(port);
    let first = h.accept_for(&a);
    let mut b = connect(port);
    let second = h.accept_for(&b);
    assert_eq!(h.run_until_closed(first).0, ABORT);
    expect_reset(&mut a);
    b.write_all(b"still here").unwrap();
    h.run_until("data on the second", |r| r.bytes(second) == 10);
    assert!(!h.rec.is_closed(second));
    h.finish();
}

both_modes!(close_self_in_on_data);
fn close_self_in_on_data(flags: u32) {
    let h = Harness::new();
    h.rec.set_hook(|_, lp, ev| {
        if let Event::Data { conn, data } = *ev {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(data);
            assert_eq!(send(lp, conn, &reply), 0);
            assert_eq!(close(lp, conn), 0);
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    c.write_all(b"ping").unwrap();
    assert_eq!(h.run_until_closed(conn), (LOCAL, 0));
    assert_eq!(expect_eof(&mut c), b"echo:ping");
    h.finish();
}

both_modes!(first_on_data_aborts_all_others);
/// All clients send at once; the first on_data aborts every other connection. Their pending
/// events in the same batch must be dropped: each other id sees exactly accept, close(ABORT).
fn first_on_data_aborts_all_others(flags: u32) {
    const N: usize = 12;
    let h = Harness::new();
    let winner = Rc::new(Cell::new(0u64));
    let w = winner.clone();
    h.rec.set_hook(move |rec, lp, ev| {
        if let Event::Data { conn, .. } = *ev {
            if w.get() == 0 {
                w.set(conn);
                for other in rec.accepted() {
                    if other != conn {
                        assert_eq!(abort(lp, other), 0);
                    }
                }
            }
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut clients: Vec<TcpStream> = (0..N).map(|_| connect(port)).collect();
    h.run_until_accepted(N);
    for c in &mut clients {
        c.write_all(b"go").unwrap();
    }
    thread::sleep(Duration::from_millis(30));
    h.run_until("all others closed", |r| r.closes() == N - 1);
    let winner = winner.get();
    for id in h.rec.accepted() {
        if id == winner {
            assert!(!h.rec.is_closed(id));
            assert_eq!(h.rec.data(id), b"go");
        } else {
            assert_eq!(
                h.rec.events(id),
                [
                    Ev::Accept,
                    Ev::Close {
                        reason: ABORT,
                        err: 0
                    }
                ],
                "{id:#x}:{}",
                h.rec.summary()
            );
        }
    }
    h.finish();
}

both_modes!(fd_reuse_within_one_batch);
/// Many connections are ready in one batch. The first on_data aborts all the others and
/// immediately opens pipes (registered with the loop) and new client sockets, which take the
/// lowest free fd numbers — the ones just released. No event from an old id may reach a new id,
/// and each new id sees exactly its own bytes.
fn fd_reuse_within_one_batch(flags: u32) {
    const N: usize = 16;
    let h = Harness::new();
    struct State {
        done: bool,
        old_fds: HashSet<i32>,
        pipes: Vec<(u64, i32, i32, Vec<u8>)>,
        new_clients: Vec<TcpStream>,
        reused: usize,
    }
    let state = Rc::new(RefCell::new(State {
        done: false,
        old_fds: HashSet::new(),
        pipes: Vec::new(),
        new_clients: Vec::new(),
        reused: 0,
    }));
    let st = state.clone();
    let (listener, port) = h.listen("127.0.0.1", flags);
    h.rec.set_hook(move |rec, lp, ev| {
        let Event::Data { conn, .. } = *ev else {
            return;
        };
        let mut s = st.borrow_mut();
        if s.done {
            return;
        }
        s.done = true;
        for other in rec.accepted() {
            if other != conn {
                // SAFETY: live loop (we are inside its callback).
                let fd = unsafe { ep_fd(lp, other) };
                assert!(fd >= 0);
                s.old_fds.insert(fd);
                assert_eq!(abort(lp, other), 0);
            }
        }
        for k in 0..N / 2 {
            let (r, w) = pipe();
            let content = format!("pipe-{k}").into_bytes();
            assert_eq!(write_fd(w, &content), content.len() as isize);
            if s.old_fds.contains(&r) {
                s.reused += 1;
            }
            let user = rec as *const Recorder as *mut c_void;
            // SAFETY: live loop; static callbacks; the recorder outlives the loop.
            let id = unsafe { ep_register(lp, r, flags, &CALLBACKS, user) };
            assert!(id > 0, "ep_register from a callback: {id}");
            rec.registered(id as u64);
            s.pipes.push((id as u64, r, w, content));
        }
        for _ in 0..N / 2 {
            let c = connect(port);
            if s.old_fds.contains(&c.as_raw_fd()) {
                s.reused += 1;
            }
            s.new_clients.push(c);
        }
    });
    let mut clients: Vec<TcpStream> = (0..N).map(|_| connect(port)).collect();
    h.run_until_accepted(N);
    let old: Vec<u64> = h.rec.accepted();
    for c in &mut clients {
        c.write_all(b"old").unwrap();
    }
    thread::sleep(Duration::from_millis(30));
    h.run_until("the first on_data", |_| state.borrow().done);
    for (i, c) in state.borrow_mut().new_clients.iter_mut().enumerate() {
        c.write_all(format!("new-{i}").as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
    }
    for (_, _, w, _) in &state.borrow().pipes {
        close_fd(*w);
    }
    let pipe_ids: Vec<u64> = state.borrow().pipes.iter().map(|p| p.0).collect();
    h.run_until("pipes and new connections closed", |r| {
        pipe_ids.iter().all(|p| r.is_closed(*p))
            && r.accepted_count() == N + N / 2
            && r.closes() >= (N - 1) + N / 2 + N / 2
    });
    let s = state.borrow();
    eprintln!("fd numbers reused within the batch: {} of {}", s.reused, N);
    for (id, _, _, content) in &s.pipes {
        assert_eq!(
            h.rec.data(*id),
            *content,
            "pipe {id:#x}:{}",
            h.rec.summary()
        );
        assert_eq!(h.rec.close_of(*id), Some((PEER_EOF, 0)));
    }
    let winner = old
        .iter()
        .copied()
        .find(|id| !h.rec.is_closed(*id))
        .expect("winner");
    for id in &old {
        if *id != winner {
            assert_eq!(
                h.rec.events(*id),
                [
                    Ev::Accept,
                    Ev::Close {
                        reason: ABORT,
                        err: 0
                    }
                ],
                "{id:#x}"
            );
        }
    }
    for (i, c) in s.new_clients.iter().enumerate() {
        let id = h
            .rec
            .conn_for_port(c.local_addr().unwrap().port())
            .expect("new client accepted");
        assert!(!old.contains(&id), "new connection got an old id");
        assert_eq!(h.rec.data(id), format!("new-{i}").as_bytes());
        assert_eq!(h.rec.close_of(id), Some((PEER_EOF, 0)));
    }
    assert!(!h.rec.is_closed(listener));
    drop(s);
    h.finish();
}

both_modes!(close_self_and_other_in_on_writable);
/// on_writable of A closes A (gracefully: the client still gets everything) and aborts B.
fn close_self_and_other_in_on_writable(flags: u32) {
    let h = Harness::new();
    let payload = pattern(11, 0, 4 << 20);
    let p = payload.clone();
    let (_, port) = h.listen("127.0.0.1", flags);
    let idle = connect(port);
    let idle_id = h.accept_for(&idle);
    h.rec.set_hook(move |rec, lp, ev| match *ev {
        Event::Accept { conn, .. } => {
            // A small kernel buffer, so that most of the payload waits in the loop's queue.
            // SAFETY: live loop.
            let fd = unsafe { ep_fd(lp, conn) };
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 8192);
            // SAFETY: live loop.
            assert_eq!(unsafe { ep_set_watermarks(lp, conn, 1024, 8192) }, 0);
            assert_eq!(send(lp, conn, &p), 1);
        }
        Event::Writable { conn } => {
            assert_eq!(close(lp, conn), 0);
            assert_eq!(abort(lp, idle_id), 0);
            assert!(
                !rec.is_closed(conn) && !rec.is_closed(idle_id),
                "on_close ran synchronously"
            );
        }
        _ => {}
    });
    let c = connect(port);
    let conn = h.accept_for(&c);
    let done = flag();
    let reader = spawn_reader(c, done.clone());
    h.run_until("client EOF and both closed", |r| {
        is_set(&done) && r.is_closed(conn) && r.is_closed(idle_id)
    });
    let got = reader
        .join()
        .unwrap()
        .expect("client: error instead of EOF");
    assert!(
        got == payload,
        "got {} of {} bytes",
        got.len(),
        payload.len()
    );
    assert_eq!(h.rec.close_of(conn), Some((LOCAL, 0)));
    assert_eq!(h.rec.close_of(idle_id).map(|c| c.0), Some(ABORT));
    assert_eq!(h.rec.writables(conn), 1);
    h.finish();
}

both_modes!(calls_from_on_close);
/// In A's on_close: calls on A fail without a second close; B is closed, C aborted; both
/// get their own on_close later, once.
fn calls_from_on_close(flags: u32) {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut a = connect(port);
    let a_id = h.accept_for(&a);
    let mut b = connect(port);
    let b_id = h.accept_for(&b);
    let mut c = connect(port);
    let c_id = h.accept_for(&c);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    h.rec.set_hook(move |_, lp, ev| {
        if let Event::Close { conn, .. } = *ev {
            if conn == a_id {
                let mut s = s.borrow_mut();
                s.push(send(lp, a_id, b"x"));
                s.push(close(lp, a_id));
                s.push(abort(lp, a_id));
                s.push(send(lp, b_id, b"from a's on_close"));
                s.push(close(lp, b_id));
                s.push(abort(lp, c_id));
            }
        }
    });
    a.write_all(b"bye").unwrap();
    drop(a);
    assert_eq!(h.run_until_closed(a_id), (PEER_EOF, 0));
    h.run_until("b and c closed", |r| r.is_closed(b_id) && r.is_closed(c_id));
    let s = seen.borrow().clone();
    for (i, what) in ["send", "close", "abort"].iter().enumerate() {
        assert!(
            s[i] < 0,
            "ep_{what} on the id being closed returned {}",
            s[i]
        );
    }
    assert_eq!(&s[3..], [0, 0, 0]);
    assert_eq!(h.rec.close_of(b_id), Some((LOCAL, 0)));
    assert_eq!(h.rec.close_of(c_id).map(|c| c.0), Some(ABORT));
    assert_eq!(expect_eof(&mut b), b"from a's on_close");
    expect_reset(&mut c);
    h.finish();
}

#[test]
fn stop_from_callback() {
    let h = Harness::new();
    let stop_result = Rc::new(Cell::new(i32::MIN));
    let sr = stop_result.clone();
    h.rec.set_hook(move |_, lp, ev| {
        if let Event::Data { .. } = ev {
            // SAFETY: live loop.
            sr.set(unsafe { ep_stop(lp) });
        }
    });
    let (_, port) = h.listen("127.0.0.1", 0);
    let mut c = connect(port);
    c.write_all(b"stop please").unwrap();
    let dog = Watchdog::new(h.lp, Duration::from_secs(8));
    // SAFETY: live loop, test thread.
    let r = unsafe { ep_run(h.lp) };
    assert!(!dog.disarm(), "ep_stop from a callback did not stop ep_run");
    assert_eq!(r, EP_RUN_STOPPED);
    assert_eq!(stop_result.get(), 0);
    // The loop is still usable.
    c.write_all(b"more").unwrap();
    let conn = h.accept_for(&c);
    h.run_until("more data", |r| r.bytes(conn) == 15);
    h.finish();
}

#[test]
fn stop_from_another_thread() {
    let h = Harness::new();
    let _listener = h.listen("127.0.0.1", 0);
    let lp = h.lp as usize;
    let dog = Watchdog::new(h.lp, Duration::from_secs(8));
    let stopper = thread::spawn(move || {
        thread::sleep(Duration::from_millis(150));
        // SAFETY: ep_stop may be called from any thread; the loop lives until joined.
        unsafe { ep_stop(lp as *mut ep_loop) }
    });
    let started = Instant::now();
    // SAFETY: live loop, test thread.
    let r = unsafe { ep_run(h.lp) };
    let elapsed = started.elapsed();
    assert_eq!(stopper.join().unwrap(), 0);
    assert!(
        !dog.disarm(),
        "ep_stop from another thread did not wake ep_run"
    );
    assert_eq!(r, EP_RUN_STOPPED);
    assert!(
        elapsed >= Duration::from_millis(140),
        "ep_run returned after {elapsed:?}"
    );
    h.finish();
}

#[test]
fn stop_before_run_is_remembered_once() {
    let h = Harness::new();
    let _listener = h.listen("127.0.0.1", 0);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_stop(h.lp) }, 0);
    let dog = Watchdog::new(h.lp, Duration::from_secs(5));
    // SAFETY: live loop, test thread.
    let r = unsafe { ep_run(h.lp) };
    assert!(!dog.disarm(), "a stop requested before ep_run was lost");
    assert_eq!(r, EP_RUN_STOPPED);
    assert_eq!(
        h.run_once(0),
        EP_RUN_MORE,
        "the stop request must be consumed"
    );
    h.finish();
}

#[test]
fn run_from_callback_is_busy() {
    let h = Harness::new();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    h.rec.set_hook(move |_, lp, ev| {
        if let Event::Data { .. } = ev {
            // SAFETY: live loop; the calls must refuse to run from inside a callback.
            unsafe {
                g.borrow_mut().push(ep_run(lp));
                g.borrow_mut().push(ep_run_once(lp, 0));
                g.borrow_mut().push(ep_run_once(lp, -1));
            }
        }
    });
    let (_, port) = h.listen("127.0.0.1", 0);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    c.write_all(b"x").unwrap();
    h.run_until("data", |r| r.bytes(conn) == 1);
    assert_eq!(*got.borrow(), [EP_EBUSY, EP_EBUSY, EP_EBUSY]);
    h.finish();
}

#[test]
fn loop_free_from_callback_is_noop() {
    let h = Harness::new();
    h.rec.set_hook(|_, lp, ev| {
        if let Event::Data { conn, .. } = *ev {
            // SAFETY: documented as a no-op from inside a callback of this loop.
            unsafe { ep_loop_free(lp) };
            assert_eq!(send(lp, conn, b"still alive"), 0);
        }
    });
    let (_, port) = h.listen("127.0.0.1", 0);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    c.write_all(b"x").unwrap();
    h.run_until("data", |r| r.bytes(conn) == 1);
    let mut buf = [0u8; 11];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still alive");
    assert!(!h.rec.is_closed(conn));
    h.finish();
}
