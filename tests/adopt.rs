//! ep_listen on IPv4/IPv6 and ep_register adopting listeners, connected sockets, pipes and
//! eventfds, with and without EP_BORROW.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

/// Tests that check whether the loop closed an fd number run one at a time: another test
/// opening an fd meanwhile could take the number (and all eventfds share one inode).
static FD_CHECKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fd_checks() -> std::sync::MutexGuard<'static, ()> {
    FD_CHECKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// After the loop let go of `fd`: with EP_BORROW it is still ours, blocking again; otherwise the
/// loop closed it.
fn check_released(fd: RawFd, ident: (u64, u64), flags: u32) {
    if flags & EP_BORROW != 0 {
        assert!(still_open(fd, ident), "EP_BORROW fd was closed by the loop");
        assert!(
            !is_nonblocking(fd),
            "EP_BORROW fd: original blocking mode not restored"
        );
        close_fd(fd);
    } else {
        assert!(
            !still_open(fd, ident),
            "owned fd {fd} still open after on_close"
        );
    }
}

fn echo_roundtrip(c: &mut TcpStream, h: &Harness, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let done = flag();
    let reader = spawn_exact_reader(c, msg.len(), done.clone());
    h.run_until("echo", |_| is_set(&done));
    assert_eq!(reader.join().unwrap().unwrap(), msg);
}

#[test]
fn listen_ipv6_echo() {
    for (mode, flags) in MODES {
        let h = Harness::new();
        h.rec.set_hook(echo);
        let (listener, port) = h.listen("::1", flags);
        let mut c = connect6(port);
        let conn = h.accept_for(&c);
        echo_roundtrip(&mut c, &h, format!("over ipv6 ({mode})").as_bytes());
        drop(c);
        assert_eq!(h.run_until_closed(conn), (PEER_EOF, 0));
        assert_eq!(close(h.lp, listener), 0);
        assert_eq!(h.run_until_closed(listener), (LOCAL, 0));
        h.finish();
    }
}

#[test]
fn listen_localhost_and_any() {
    for host in ["localhost", "0.0.0.0", "127.0.0.1"] {
        let h = Harness::new();
        h.rec.set_hook(echo);
        let (_, port) = h.listen(host, 0);
        let mut c = connect(port);
        h.accept_for(&c);
        echo_roundtrip(&mut c, &h, host.as_bytes());
        h.finish();
    }
}

fn adopt_listener(flags: u32) {
    let _serial = fd_checks();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let fd = l.into_raw_fd();
    let ident = identity(fd).unwrap();
    let h = Harness::new();
    h.rec.set_hook(echo);
    let id = h.register_ok(fd, flags);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_local_port(h.lp, id) }, port as i32);
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    assert_eq!(
        h.rec.with(conn, |l| l.kind),
        Kind::Accepted { listener: id }
    );
    echo_roundtrip(&mut c, &h, b"adopted listener");
    assert_eq!(close(h.lp, id), 0);
    assert_eq!(h.run_until_closed(id), (LOCAL, 0));
    check_released(fd, ident, flags);
    // Accepted connections outlive their listener.
    echo_roundtrip(&mut c, &h, b"still echoing");
    drop(c);
    assert_eq!(h.run_until_closed(conn), (PEER_EOF, 0));
    h.finish();
}

#[test]
fn adopt_listener_owned_level() {
    adopt_listener(0);
}
#[test]
fn adopt_listener_owned_edge() {
    adopt_listener(EP_EDGE);
}
#[test]
fn adopt_listener_borrowed() {
    adopt_listener(EP_BORROW);
}
#[test]
fn adopt_listener_borrowed_edge() {
    adopt_listener(EP_BORROW | EP_EDGE);
}

fn adopt_connected_tcp(flags: u32) {
    let _serial = fd_checks();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = connect(l.local_addr().unwrap().port());
    let (server, _) = l.accept().unwrap();
    let fd = server.into_raw_fd();
    let ident = identity(fd).unwrap();
    let h = Harness::new();
    h.rec.set_hook(echo);
    let id = h.register_ok(fd, flags);
    echo_roundtrip(&mut c, &h, b"adopted connection");
    drop(c);
    assert_eq!(h.run_until_closed(id), (PEER_EOF, 0));
    assert_eq!(h.rec.data(id), b"adopted connection");
    check_released(fd, ident, flags);
    h.finish();
}

#[test]
fn adopt_connected_tcp_owned() {
    adopt_connected_tcp(0);
}
#[test]
fn adopt_connected_tcp_owned_edge() {
    adopt_connected_tcp(EP_EDGE);
}
#[test]
fn adopt_connected_tcp_borrowed() {
    adopt_connected_tcp(EP_BORROW);
}

fn adopt_unix_socket(flags: u32) {
    let _serial = fd_checks();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(LIMIT)).unwrap();
    let fd = ours.into_raw_fd();
    let ident = identity(fd).unwrap();
    let h = Harness::new();
    h.rec.set_hook(echo);
    let id = h.register_ok(fd, flags);
    // SAFETY: live loop.
    let r = unsafe { ep_local_port(h.lp, id) };
    assert!(r < 0, "ep_local_port on a unix socket returned {r}");
    theirs.write_all(b"unix").unwrap();
    h.run_until("echo", |r| r.bytes(id) == 4);
    h.run_for(Duration::from_millis(20));
    let mut buf = [0u8; 4];
    theirs.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"unix");
    drop(theirs);
    assert_eq!(h.run_until_closed(id), (PEER_EOF, 0));
    check_released(fd, ident, flags);
    h.finish();
}

#[test]
fn adopt_unix_socket_owned() {
    adopt_unix_socket(0);
}
#[test]
fn adopt_unix_socket_borrowed_edge() {
    adopt_unix_socket(EP_BORROW | EP_EDGE);
}

fn adopt_pipe_read_end(flags: u32) {
    let _serial = fd_checks();
    let (r, w) = pipe();
    let ident = identity(r).unwrap();
    let h = Harness::new();
    let id = h.register_ok(r, flags);
    // SAFETY: live loop.
    assert!(unsafe { ep_local_port(h.lp, id) } < 0);
    assert_eq!(write_fd(w, b"through the pipe"), 16);
    close_fd(w);
    assert_eq!(h.run_until_closed(id), (PEER_EOF, 0));
    assert_eq!(h.rec.data(id), b"through the pipe");
    check_released(r, ident, flags);
    h.finish();
}

#[test]
fn adopt_pipe_read_end_owned() {
    adopt_pipe_read_end(0);
}
#[test]
fn adopt_pipe_read_end_borrowed() {
    adopt_pipe_read_end(EP_BORROW);
}
#[test]
fn adopt_pipe_read_end_borrowed_edge() {
    adopt_pipe_read_end(EP_BORROW | EP_EDGE);
}

both_modes!(pipe_write_end_streams);
/// ep_send on a pipe's write end: 1 MiB queued behind the 64 KiB pipe, read by a thread;
/// ep_close flushes it and the reader then sees EOF.
fn pipe_write_end_streams(flags: u32) {
    let (r, w) = pipe();
    let h = Harness::new();
    let id = h.register_ok(w, flags);
    let data = pattern(16, 0, 1 << 20);
    assert_eq!(send(h.lp, id, &data), 1);
    assert_eq!(close(h.lp, id), 0);
    let done = flag();
    let d = done.clone();
    let reader = thread::spawn(move || {
        let mut f = unsafe_file(r);
        let mut got = Vec::new();
        let res = f.read_to_end(&mut got).map(|_| got);
        d.store(true, std::sync::atomic::Ordering::SeqCst);
        res
    });
    h.run_until("reader EOF", |rec| is_set(&done) && rec.is_closed(id));
    let got = reader.join().unwrap().unwrap();
    assert!(got == data, "got {} of {} bytes", got.len(), data.len());
    assert_eq!(h.rec.close_of(id), Some((LOCAL, 0)));
    h.finish();
}

fn unsafe_file(fd: RawFd) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller hands over an fd it owns.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

both_modes!(pipe_reader_gone_with_output_queued);
/// The pipe's reader exits while output is queued: one PEER_RESET (EPIPE), no SIGPIPE death.
fn pipe_reader_gone_with_output_queued(flags: u32) {
    let (r, w) = pipe();
    let h = Harness::new();
    let id = h.register_ok(w, flags);
    assert_eq!(send(h.lp, id, &[9u8; 1 << 20]), 1);
    h.run_for(Duration::from_millis(20));
    close_fd(r);
    assert_eq!(h.run_until_closed(id), (PEER_RESET, libc::EPIPE));
    h.finish();
}

fn adopt_eventfd(flags: u32) {
    let _serial = fd_checks();
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    let ident = identity(fd).unwrap();
    let h = Harness::new();
    let id = h.register_ok(fd, flags);
    assert!(
        is_nonblocking(fd),
        "ep_register must make the fd non-blocking"
    );
    assert_eq!(write_fd(fd, &5u64.to_ne_bytes()), 8);
    h.run_until("eventfd count", |r| r.bytes(id) == 8);
    assert_eq!(h.rec.data(id), 5u64.to_ne_bytes());
    // ep_send writes to it as to a pipe.
    assert_eq!(send(h.lp, id, &3u64.to_ne_bytes()), 0);
    h.run_until("second count", |r| r.bytes(id) == 16);
    assert_eq!(h.rec.data(id)[8..], 3u64.to_ne_bytes());
    h.run_for(Duration::from_millis(30));
    assert_eq!(
        h.rec.bytes(id),
        16,
        "eventfd delivered more than was written"
    );
    assert_eq!(close(h.lp, id), 0);
    assert_eq!(h.run_until_closed(id), (LOCAL, 0));
    check_released(fd, ident, flags);
    h.finish();
}

#[test]
fn adopt_eventfd_owned() {
    adopt_eventfd(0);
}
#[test]
fn adopt_eventfd_owned_edge() {
    adopt_eventfd(EP_EDGE);
}
#[test]
fn adopt_eventfd_borrowed() {
    adopt_eventfd(EP_BORROW);
}

#[test]
fn borrowed_fd_survives_loop_free() {
    let _serial = fd_checks();
    let (r, w) = pipe();
    let ident = identity(r).unwrap();
    let mut h = Harness::new();
    let id = h.register_ok(r, EP_BORROW);
    h.run_for(Duration::from_millis(10));
    h.free();
    assert_eq!(h.rec.close_of(id), Some((LOOP_FREED, 0)));
    check_released(r, ident, EP_BORROW);
    close_fd(w);
    h.rec.check(true);
}

#[test]
fn accepted_connections_get_fresh_ids_and_fds() {
    let h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", 0);
    let clients: Vec<_> = (0..5).map(|_| connect(port)).collect();
    let ids: Vec<u64> = clients.iter().map(|c| h.accept_for(c)).collect();
    let mut fds = std::collections::HashSet::new();
    for id in &ids {
        assert_ne!(*id, listener);
        // SAFETY: live loop.
        let fd = unsafe { ep_fd(h.lp, *id) };
        assert!(fd >= 0);
        assert!(fds.insert(fd));
        let cloexec = {
            // SAFETY: F_GETFD takes no pointer.
            let f = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            f >= 0 && f & libc::FD_CLOEXEC != 0
        };
        assert!(cloexec, "accepted fd {fd} lacks FD_CLOEXEC");
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
    drop(clients);
    h.run_until("all closed", |r| ids.iter().all(|id| r.is_closed(*id)));
    h.finish();
}

#[test]
fn set_user_redirects_a_connections_callbacks() {
    let mut h = Harness::new();
    let second = Box::new(Recorder::for_loop(h.lp));
    let second_ptr = &*second as *const Recorder as *mut std::ffi::c_void;
    let inherited = std::rc::Rc::new(std::cell::Cell::new(std::ptr::null_mut()));
    let inh = inherited.clone();
    let (listener, port) = h.listen("127.0.0.1", 0);
    h.rec.set_hook(move |_, lp, ev| {
        if let Event::Accept { conn, .. } = *ev {
            // SAFETY: live loop (inside its callback).
            inh.set(unsafe { ep_get_user(lp, conn) });
            // SAFETY: as above; `second` outlives the loop.
            assert_eq!(unsafe { ep_set_user(lp, conn, second_ptr) }, 0);
            // SAFETY: as above.
            assert_eq!(unsafe { ep_get_user(lp, conn) }, second_ptr);
            // SAFETY: the recorder lives at second_ptr.
            unsafe { &*(second_ptr as *const Recorder) }.registered(conn);
        }
    });
    let mut c = connect(port);
    let conn = h.accept_for(&c);
    assert_eq!(
        inherited.get(),
        h.user(),
        "a connection inherits its listener's user"
    );
    c.write_all(b"to the second").unwrap();
    drop(c);
    h.run_until("close seen by the second recorder", |_| {
        second.is_closed(conn)
    });
    assert_eq!(second.data(conn), b"to the second");
    assert_eq!(second.close_of(conn), Some((PEER_EOF, 0)));
    assert_eq!(
        h.rec.events(conn),
        [Ev::Accept],
        "callbacks after ep_set_user went to the old user"
    );
    h.free();
    assert_eq!(h.rec.close_of(listener), Some((LOOP_FREED, 0)));
    assert!(h.rec.violations().is_empty(), "{:?}", h.rec.violations());
    second.check(true);
}
