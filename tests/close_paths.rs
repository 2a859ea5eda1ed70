//! Every way a connection can end produces exactly one `on_close` with the right reason,
//! after every byte the peer sent — in both trigger modes.

mod common;

use common::*;
use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

both_modes!(fin);
fn fin(flags: u32) {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    c.write_all(b"hello, loop").unwrap();
    drop(c);
    assert_eq!(h.run_until_closed(conn), (PEER_EOF, 0));
    assert_eq!(h.rec.data(conn), b"hello, loop");
    h.finish();
}

both_modes!(fin_with_data_unread);
/// 256 KiB and the FIN are all in the kernel before the loop accepts or reads anything.
fn fin_with_data_unread(flags: u32) {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    setsockopt_int(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 1 << 20);
    let sent = pattern(1, 0, 256 * 1024);
    write_buffered(&c, &sent);
    let cport = c.local_addr().unwrap().port();
    drop(c);
    thread::sleep(Duration::from_millis(20));
    h.run_until("accept", |r| r.conn_for_port(cport).is_some());
    let conn = h.rec.conn_for_port(cport).unwrap();
    assert_eq!(h.run_until_closed(conn), (PEER_EOF, 0));
    let got = h.rec.data(conn);
    assert_eq!(got.len(), sent.len(), "bytes delivered before on_close");
    assert!(got == sent, "data corrupted");
    h.finish();
}

both_modes!(fin_after_more_than_a_read_budget);
/// Each request (a few read buffers more than the loop reads per wakeup, with odd tails) and its
/// FIN are all in the socket before the loop first looks at it. After the budget pass no new edge
/// will ever come: the loop must still read on to the EOF, in edge mode too.
fn fin_after_more_than_a_read_budget(flags: u32) {
    const KIB64: usize = 64 * 1024;
    let h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", flags);
    // SAFETY: live loop.
    let lfd = unsafe { ep_fd(h.lp, listener) };
    // Accepted sockets inherit it: room for each whole request in the receive queue.
    setsockopt_int(lfd, libc::SOL_SOCKET, libc::SO_RCVBUF, 2 << 20);
    let mut expected = Vec::new();
    for k in [1usize, 2, 4, 5, 6, 9] {
        for tail in [0usize, 100, KIB64 - 1] {
            let c = connect(port);
            let sent = pattern((k * 1000 + tail) as u64, 0, k * KIB64 + tail);
            setsockopt_int(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 2 << 20);
            write_buffered(&c, &sent);
            wait_delivered(&c);
            shut_write(&c);
            expected.push((c, sent));
        }
    }
    thread::sleep(Duration::from_millis(20));
    let n = expected.len();
    h.run_until("every request read to its EOF", |r| {
        r.accepted_count() == n && r.accepted().iter().all(|id| r.is_closed(*id))
    });
    for (c, sent) in &expected {
        let id = h.rec.conn_for_port(c.local_addr().unwrap().port()).unwrap();
        assert_eq!(h.rec.bytes(id) as usize, sent.len());
        assert!(h.rec.data(id) == *sent, "data corrupted");
        assert_eq!(h.rec.close_of(id), Some((PEER_EOF, 0)));
    }
    h.finish();
}

both_modes!(rst);
fn rst(flags: u32) {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    h.run_for(Duration::from_millis(20));
    common::rst(c);
    assert_eq!(h.run_until_closed(conn), (PEER_RESET, libc::ECONNRESET));
    assert_eq!(h.rec.bytes(conn), 0);
    h.finish();
}

both_modes!(rst_with_data_unread);
/// Bytes acknowledged by the kernel before the RST are still delivered, then PEER_RESET.
fn rst_with_data_unread(flags: u32) {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    let sent = pattern(2, 0, 32 * 1024);
    c.write_all(&sent).unwrap();
    wait_delivered(&c);
    common::rst(c);
    thread::sleep(Duration::from_millis(20));
    assert_eq!(h.run_until_closed(conn), (PEER_RESET, libc::ECONNRESET));
    assert!(
        h.rec.data(conn) == sent,
        "got {} of {} bytes",
        h.rec.bytes(conn),
        sent.len()
    );
    h.finish();
}

both_modes!(rst_before_accept_with_data);
/// The client fills the window, then resets before the loop even accepted: exactly the bytes
/// the kernel acknowledged arrive, then PEER_RESET.
fn rst_before_accept_with_data(flags: u32) {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    setsockopt_int(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 1 << 20);
    let sent = pattern(3, 0, 256 * 1024);
    write_buffered(&c, &sent);
    // Wait until the receive window is full (nothing more gets acknowledged).
    let mut last = unacked(&c);
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + LIMIT;
    while stable_since.elapsed() < Duration::from_millis(60) {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
        let now = unacked(&c);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    let delivered = sent.len() - last as usize;
    common::rst(c);
    thread::sleep(Duration::from_millis(20));
    // getpeername fails on a reset socket: identify the only connection by order.
    let conn = h.run_until_accepted(1)[0];
    assert_eq!(h.run_until_closed(conn), (PEER_RESET, libc::ECONNRESET));
    assert_eq!(
        h.rec.bytes(conn) as usize,
        delivered,
        "acknowledged bytes lost"
    );
    assert!(h.rec.data(conn) == sent[..delivered], "data corrupted");
    h.finish();
}

both_modes!(peer_half_close_gets_reply);
/// Client sends a request and SHUT_WR; the reply queued from on_data (1 MiB, more than the
/// kernel takes at once) still reaches it in full before the FIN; the server sees PEER_EOF.
fn peer_half_close_gets_reply(flags: u32) {
    const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
    let h = Harness::new();
    let reply = pattern(4, 0, 1 << 20);
    let reply_for_hook = reply.clone();
    h.rec.set_hook(move |rec, lp, ev| {
        if let Event::Data { conn, .. } = *ev {
            if rec.bytes(conn) == REQUEST.len() as u64 {
                assert!(send(lp, conn, &reply_for_hook) >= 0);
            }
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    c.write_all(REQUEST).unwrap();
    shut_write(&c);
    let conn = h.accept_for(&c);
    let done = flag();
    let reader = spawn_reader(c, done.clone());
    h.run_until("client read to EOF", |r| is_set(&done) && r.is_closed(conn));
    let got = reader
        .join()
        .unwrap()
        .expect("client read failed instead of EOF");
    assert_eq!(got.len(), reply.len());
    assert!(got == reply, "reply corrupted");
    assert_eq!(h.rec.close_of(conn), Some((PEER_EOF, 0)));
    assert_eq!(h.rec.data(conn), REQUEST);
    h.finish();
}

both_modes!(half_close_flag);
/// With EP_HALF_CLOSE, peer EOF is on_data(NULL, 0); the connection stays open for writing
/// (without spinning the CPU) until the app answers and closes it.
fn half_close_flag(flags: u32) {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", flags | EP_HALF_CLOSE);
    let mut c = connect(port);
    c.write_all(b"question").unwrap();
    shut_write(&c);
    let conn = h.accept_for(&c);
    h.run_until("on_data(NULL, 0)", |r| r.with(conn, |l| l.saw_eof()));
    assert_eq!(h.rec.data(conn), b"question");
    let started = Instant::now();
    for _ in 0..4 {
        h.run_once(50);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "ep_run_once(50) returned early {}x in {:?}: the half-closed socket keeps waking the loop",
        4,
        started.elapsed()
    );
    assert!(
        !h.rec.is_closed(conn),
        "closed although EP_HALF_CLOSE keeps it open"
    );
    let reply = pattern(5, 0, 1 << 20);
    assert!(send(h.lp, conn, &reply) >= 0);
    assert_eq!(close(h.lp, conn), 0);
    let done = flag();
    let reader = spawn_reader(c, done.clone());
    h.run_until("client EOF and on_close", |r| {
        is_set(&done) && r.is_closed(conn)
    });
    let got = reader
        .join()
        .unwrap()
        .expect("client read failed instead of EOF");
    assert!(
        got == reply,
        "reply: got {} of {} bytes",
        got.len(),
        reply.len()
    );
    assert_eq!(h.rec.close_of(conn), Some((LOCAL, 0)));
    h.finish();
}

both_modes!(half_close_flag_reply_from_eof_callback);
fn half_close_flag_reply_from_eof_callback(flags: u32) {
    let h = Harness::new();
    h.rec.set_hook(|rec, lp, ev| {
        if let Event::Eof { conn } = *ev {
            let n = rec.bytes(conn);
            assert_eq!(send(lp, conn, format!("got {n} bytes").as_bytes()), 0);
            assert_eq!(close(lp, conn), 0);
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags | EP_HALF_CLOSE);
    let mut c = connect(port);
    c.write_all(&[7u8; 3000]).unwrap();
    shut_write(&c);
    let conn = h.accept_for(&c);
    let done = flag();
    let reader = spawn_reader(c, done.clone());
    h.run_until("client EOF and on_close", |r| {
        is_set(&done) && r.is_closed(conn)
    });
    let got = reader
        .join()
        .unwrap()
        .expect("client read failed instead of EOF");
    assert_eq!(got, b"got 3000 bytes");
    let evs = h.rec.events(conn);
    assert_eq!(
        evs[evs.len() - 2..],
        [
            Ev::Eof,
            Ev::Close {
                reason: LOCAL,
                err: 0
            }
        ]
    );
    h.finish();
}

/// A server that answers a request with 8 MiB (queued: the client does not read yet).
fn big_reply_server(h: &Harness, request_len: u64) -> Vec<u8> {
    let reply = pattern(17, 0, 8 << 20);
    let r = reply.clone();
    h.rec.set_hook(move |rec, lp, ev| {
        if let Event::Data { conn, .. } = *ev {
            if rec.bytes(conn) == request_len {
                assert_eq!(send(lp, conn, &r), 1);
            }
        }
    });
    reply
}

both_modes!(peer_fin_with_reply_stuck_does_not_spin);
/// The peer sends its request and FIN but does not read yet: while the reply waits in the
/// queue the loop must not spin on the readable EOF; then the peer gets all of it, and the
/// server PEER_EOF.
fn peer_fin_with_reply_stuck_does_not_spin(flags: u32) {
    let h = Harness::new();
    let reply = big_reply_server(&h, 5);
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    c.write_all(b"hello").unwrap();
    shut_write(&c);
    let conn = h.accept_for(&c);
    h.run_until("request", |r| r.bytes(conn) == 5);
    h.run_for(Duration::from_millis(30));
    h.assert_idle("peer EOF seen, reply stuck in the queue");
    assert!(
        !h.rec.is_closed(conn),
        "closed before the reply was flushed"
    );
    let done = flag();
    let reader = spawn_reader(c, done.clone());
    h.run_until("client EOF", |r| is_set(&done) && r.is_closed(conn));
    let got = reader
        .join()
        .unwrap()
        .expect("client: error instead of EOF");
    assert!(got == reply, "got {} of {} bytes", got.len(), reply.len());
    assert_eq!(h.rec.close_of(conn), Some((PEER_EOF, 0)));
    h.finish();
}

both_modes!(rst_after_fin_while_flushing);
/// Peer FIN, then RST while the reply is still queued: exactly one on_close, PEER_RESET.
fn rst_after_fin_while_flushing(flags: u32) {
    let h = Harness::new();
    big_reply_server(&h, 5);
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    c.write_all(b"hello").unwrap();
    shut_write(&c);
    let conn = h.accept_for(&c);
    h.run_until("request", |r| r.bytes(conn) == 5);
    h.run_for(Duration::from_millis(30));
    common::rst(c);
    let (reason, err) = h.run_until_closed(conn);
    assert_eq!(reason, PEER_RESET, "err {err}");
    assert!(err == libc::ECONNRESET || err == libc::EPIPE, "err {err}");
    h.run_for(Duration::from_millis(30));
    h.finish();
}

both_modes!(rst_after_half_close_eof);
/// EP_HALF_CLOSE: the peer's EOF was delivered as on_data(NULL, 0); its later RST still ends
/// the connection, once, with PEER_RESET.
fn rst_after_half_close_eof(flags: u32) {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", flags | EP_HALF_CLOSE);
    let mut c = connect(port);
    c.write_all(b"x").unwrap();
    shut_write(&c);
    let conn = h.accept_for(&c);
    h.run_until("EOF", |r| r.with(conn, |l| l.saw_eof()));
    common::rst(c);
    // Linux reports an RST in CLOSE_WAIT as EPIPE (tcp_reset), elsewhere as ECONNRESET.
    let (reason, err) = h.run_until_closed(conn);
    assert_eq!(reason, PEER_RESET, "err {err}");
    assert!(err == libc::ECONNRESET || err == libc::EPIPE, "err {err}");
    h.finish();
}

#[test]
fn loop_free_ends_lingering_sockets() {
    let mut h = Harness::new();
    h.rec.set_hook(|_, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            assert_eq!(send(lp, conn, b"goodbye"), 0);
            assert_eq!(close(lp, conn), 0);
        }
    });
    let (listener, port) = h.listen("127.0.0.1", 0);
    let mut c = connect(port);
    c.write_all(b"request the server never reads").unwrap();
    let conn = h.accept_for(&c);
    assert_eq!(h.run_until_closed(conn), (LOCAL, 0));
    assert_eq!(close(h.lp, listener), 0);
    h.run_until_closed(listener);
    // Nothing is registered, but the closed connection lingers until the peer's EOF.
    assert_eq!(
        h.run_once(10),
        EP_RUN_MORE,
        "a lingering socket must keep the loop running"
    );
    let started = Instant::now();
    h.free();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "ep_loop_free waited for the linger"
    );
    let mut buf = [0u8; 7];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"goodbye");
    let mut rest = [0u8; 16];
    let end = c.read(&mut rest);
    assert!(
        matches!(end, Ok(0)) || matches!(&end, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "after ep_loop_free the lingering socket must be closed, got {end:?}"
    );
    h.rec.check(true);
}

both_modes!(shutdown_then_peer_eof);
/// ep_shutdown: our queued bytes, then FIN; reading goes on; the peer's EOF then ends the
/// connection with EP_CLOSE_LOCAL (as ep_shutdown documents).
fn shutdown_then_peer_eof(flags: u32) {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    let reply = pattern(18, 0, 2 << 20);
    assert!(send(h.lp, conn, &reply) >= 0);
    assert_eq!(shutdown(h.lp, conn), 0);
    let done = flag();
    let reader = spawn_exact_reader(&c, reply.len(), done.clone());
    h.run_until("reply read", |_| is_set(&done));
    assert!(reader.join().unwrap().unwrap() == reply);
    let mut end = [0u8; 1];
    h.run_for(Duration::from_millis(20));
    assert_eq!(
        c.read(&mut end).unwrap(),
        0,
        "no FIN after the flushed reply"
    );
    assert!(!h.rec.is_closed(conn), "closed before the peer's EOF");
    c.write_all(b"after your FIN").unwrap();
    drop(c);
    assert_eq!(h.run_until_closed(conn), (LOCAL, 0));
    assert_eq!(h.rec.data(conn), b"after your FIN");
    h.finish();
}

both_modes!(half_close_then_shutdown);
/// EP_HALF_CLOSE: the peer's EOF first, then the app answers and calls ep_shutdown: the reply
/// and our FIN go out and the connection ends once (EP_CLOSE_LOCAL, as for ep_shutdown).
fn half_close_then_shutdown(flags: u32) {
    let h = Harness::new();
    h.rec.set_hook(|_, lp, ev| {
        if let Event::Eof { conn } = *ev {
            assert_eq!(send(lp, conn, b"answer"), 0);
            assert_eq!(shutdown(lp, conn), 0);
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags | EP_HALF_CLOSE);
    let mut c = connect(port);
    c.write_all(b"question").unwrap();
    shut_write(&c);
    let conn = h.accept_for(&c);
    let (reason, err) = h.run_until_closed(conn);
    assert_eq!(expect_eof(&mut c), b"answer");
    assert_eq!((reason_name(reason), err), (reason_name(LOCAL), 0));
    h.finish();
}

fn expect_eof(c: &mut std::net::TcpStream) -> Vec<u8> {
    read_to_eof(c)
        .map_err(|(_, e)| e)
        .expect("client: error instead of EOF")
}

both_modes!(reset_while_output_queued);
/// The client never reads; the server has MiBs queued; the client resets: one PEER_RESET.
fn reset_while_output_queued(flags: u32) {
    let h = Harness::new();
    let first_send = Rc::new(Cell::new(None));
    let fs = first_send.clone();
    h.rec.set_hook(move |_, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            fs.set(Some(send_until_queued(lp, conn, &[0x55u8; 1 << 20])));
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    assert!(first_send.get().is_some(), "the accept hook queued output");
    h.run_for(Duration::from_millis(50));
    assert!(!h.rec.is_closed(conn));
    common::rst(c);
    let (reason, err) = h.run_until_closed(conn);
    assert_eq!(reason, PEER_RESET, "err {err}");
    assert!(err == libc::ECONNRESET || err == libc::EPIPE, "err {err}");
    h.run_for(Duration::from_millis(30));
    h.finish();
}

both_modes!(send_after_peer_reset);
/// Sending into a connection whose RST arrived but was not yet noticed: one PEER_RESET.
fn send_after_peer_reset(flags: u32) {
    let h = Harness::new();
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    common::rst(c);
    thread::sleep(Duration::from_millis(20));
    // The loop has not seen the RST yet; the first send meets EPIPE/ECONNRESET.
    let r = send(h.lp, conn, &[1u8; 100_000]);
    assert!(
        r >= 0 || r == -libc::EPIPE || r == -libc::ECONNRESET,
        "ep_send into a reset connection returned {r} ({})",
        strerror(r)
    );
    let (reason, err) = h.run_until_closed(conn);
    assert_eq!(reason, PEER_RESET, "err {err}");
    h.finish();
}

both_modes!(epollerr_connect_refused);
/// A registered socket whose connect() fails (EPOLLERR, SO_ERROR = ECONNREFUSED).
fn epollerr_connect_refused(flags: u32) {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    assert!(fd >= 0);
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid sockaddr_in and its size.
    let r = unsafe {
        libc::connect(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let e = std::io::Error::last_os_error().raw_os_error();
    assert!(r == -1 && (e == Some(libc::EINPROGRESS) || e == Some(libc::ECONNREFUSED)));
    let h = Harness::new();
    let id = h.register_ok(fd, flags);
    assert_eq!(h.run_until_closed(id), (ERROR, libc::ECONNREFUSED));
    assert_eq!(h.rec.bytes(id), 0);
    h.finish();
}

both_modes!(pipe_writer_closes);
fn pipe_writer_closes(flags: u32) {
    let h = Harness::new();
    let (r, w) = pipe();
    let id = h.register_ok(r, flags);
    let sent = pattern(6, 0, 40_000);
    assert_eq!(write_fd(w, &sent), sent.len() as isize);
    h.run_until("first bytes", |rec| rec.bytes(id) > 0);
    assert_eq!(write_fd(w, b"tail"), 4);
    close_fd(w);
    assert_eq!(h.run_until_closed(id), (PEER_EOF, 0));
    let mut want = sent.clone();
    want.extend_from_slice(b"tail");
    assert!(
        h.rec.data(id) == want,
        "got {} of {} bytes",
        h.rec.bytes(id),
        want.len()
    );
    h.finish();
}

both_modes!(pipe_writer_closes_before_register);
fn pipe_writer_closes_before_register(flags: u32) {
    let h = Harness::new();
    let (r, w) = pipe();
    assert_eq!(write_fd(w, b"last words"), 10);
    close_fd(w);
    let id = h.register_ok(r, flags);
    assert_eq!(h.run_until_closed(id), (PEER_EOF, 0));
    assert_eq!(h.rec.data(id), b"last words");
    h.finish();
}

both_modes!(close_graceful_flushes);
/// ep_close right after queueing 4 MiB: the client receives all of it, then EOF; LOCAL.
fn close_graceful_flushes(flags: u32) {
    let h = Harness::new();
    let reply = pattern(7, 0, 4 << 20);
    let reply_for_hook = reply.clone();
    h.rec.set_hook(move |_, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            assert!(send(lp, conn, &reply_for_hook) >= 0);
            assert_eq!(close(lp, conn), 0);
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let conn = h.accept_for(&c);
    let done = flag();
    let reader = spawn_reader(c, done.clone());
    h.run_until("client EOF and on_close", |r| {
        is_set(&done) && r.is_closed(conn)
    });
    let got = reader
        .join()
        .unwrap()
        .expect("client got an error instead of EOF");
    assert_eq!(got.len(), reply.len());
    assert!(got == reply, "data corrupted");
    assert_eq!(h.rec.close_of(conn), Some((LOCAL, 0)));
    h.finish();
}

both_modes!(close_with_request_unread);
/// The server closes without reading the client's request. The client, reading late, still
/// gets the whole reply and a FIN (no RST); the lingering socket then ends by itself.
fn close_with_request_unread(flags: u32) {
    let h = Harness::new();
    let reply = pattern(8, 0, 1 << 20);
    let reply_for_hook = reply.clone();
    h.rec.set_hook(move |_, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            assert!(send(lp, conn, &reply_for_hook) >= 0);
            assert_eq!(close(lp, conn), 0);
        }
    });
    let (listener, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    setsockopt_int(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 16 * 1024);
    write_buffered(&c, &pattern(9, 0, 64 * 1024));
    let conn = h.accept_for(&c);
    // Let the loop run with the client not reading: a premature close() would RST now.
    h.run_for(Duration::from_millis(200));
    let done = flag();
    let reader = thread::spawn({
        let done = done.clone();
        move || {
            let r = read_to_eof(&mut c).map_err(|(v, e)| (v.len(), e.kind()));
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        }
    });
    h.run_until("client EOF and on_close", |r| {
        is_set(&done) && r.is_closed(conn)
    });
    match reader.join().unwrap() {
        Ok(got) => assert!(got == reply, "got {} of {} bytes", got.len(), reply.len()),
        Err((n, kind)) => panic!(
            "client got {kind:?} after {n} of {} bytes (RST instead of FIN)",
            reply.len()
        ),
    }
    assert_eq!(h.rec.close_of(conn), Some((LOCAL, 0)));
    assert_eq!(close(h.lp, listener), 0);
    // The client has dropped its socket: the loop's drain sees EOF and lets go of everything.
    h.run_until_for(
        "ep_run_once to report an empty loop",
        Duration::from_secs(8),
        |_| {
            // SAFETY: live loop, test thread.
            let r = unsafe { ep_run_once(h.lp, 10) };
            r == EP_RUN_EMPTY
        },
    );
    h.finish();
}

both_modes!(close_linger_timeout);
/// A peer that never reads cannot hold a graceful close forever: TIMEOUT after the linger.
fn close_linger_timeout(flags: u32) {
    let h = Harness::new();
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_set_linger(h.lp, 300) }, 0);
    h.rec.set_hook(move |_, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            send_until_queued(lp, conn, &[1u8; 1 << 20]);
            assert_eq!(close(lp, conn), 0);
        }
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let c = connect(port);
    let started = Instant::now();
    let conn = h.accept_for(&c);
    let (reason, err) = h.run_until_closed(conn);
    assert_eq!((reason, err), (TIMEOUT, libc::ETIMEDOUT));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "linger of 300 ms took {:?}",
        started.elapsed()
    );
    drop(c);
    h.finish();
}

both_modes!(abort_resets_peer);
fn abort_resets_peer(flags: u32) {
    let h = Harness::new();
    h.rec.set_hook(|_, lp, ev| match *ev {
        Event::Accept { conn, .. } => {
            send_until_queued(lp, conn, &[3u8; 1 << 20]);
        }
        Event::Data { conn, .. } => {
            assert_eq!(abort(lp, conn), 0);
        }
        _ => {}
    });
    let (_, port) = h.listen("127.0.0.1", flags);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    c.write_all(b"x").unwrap();
    assert_eq!(h.run_until_closed(conn), (ABORT, 0));
    let mut buf = vec![0u8; 1 << 16];
    let err = loop {
        match c.read(&mut buf) {
            Ok(0) => panic!("client saw EOF after ep_abort, expected a reset"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    h.finish();
}

both_modes!(loop_free_closes_everything);
fn loop_free_closes_everything(flags: u32) {
    let mut h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", flags);
    let clients: Vec<_> = (0..3).map(|_| connect(port)).collect();
    let conns: Vec<u64> = clients.iter().map(|c| h.accept_for(c)).collect();
    let (r, w) = pipe();
    let pipe_id = h.register_ok(r, flags);
    assert!(send(h.lp, conns[0], b"pending") >= 0);
    h.run_for(Duration::from_millis(20));
    h.free();
    let after = h.rec.callbacks();
    for id in conns.iter().chain([listener, pipe_id].iter()) {
        assert_eq!(
            h.rec.close_of(*id),
            Some((LOOP_FREED, 0)),
            "{id:#x}:{}",
            h.rec.summary()
        );
    }
    assert_eq!(h.rec.callbacks(), after);
    for (i, mut c) in clients.into_iter().enumerate() {
        let got = read_to_eof(&mut c)
            .map_err(|(_, e)| e)
            .expect("client after loop free");
        if i == 0 {
            assert_eq!(got, b"pending");
        }
    }
    close_fd(w);
    h.rec.check(true);
}

#[test]
fn loop_free_with_adopted_listener_closes_it() {
    let mut h = Harness::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let fd = l.into_raw_fd();
    let ident = identity(fd).unwrap();
    let id = h.register_ok(fd, 0);
    h.run_for(Duration::from_millis(10));
    h.free();
    assert_eq!(h.rec.close_of(id), Some((LOOP_FREED, 0)));
    assert!(
        !still_open(fd, ident),
        "listener fd still open after ep_loop_free"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port still accepting after ep_loop_free"
    );
    h.rec.check(true);
}
