//! UDP endpoints on real sockets, both trigger modes: echo over IPv4, IPv6 and a dual-stack
//! endpoint, empty and truncated datagrams, a connected endpoint's ICMP errors (on_error, the
//! endpoint lives on), broadcast and multicast on the loopback interface, the caller's mistakes
//! (each a code, nothing sent), and the one on_close (local side only).

mod common;

use common::*;
use std::cell::RefCell;
use std::ffi::{c_void, CString};
use std::net::{SocketAddr, UdpSocket};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Datagram {
        data: Vec<u8>,
        from: Option<SocketAddr>,
        truncated: bool,
    },
    Error(i32),
    Writable,
    Close(i32, i32),
}

thread_local! {
    static LOG: RefCell<Vec<(u64, Ev)>> = const { RefCell::new(Vec::new()) };
    /// Echo every datagram back to its sender.
    static ECHO: RefCell<bool> = const { RefCell::new(false) };
}

fn events(id: u64) -> Vec<Ev> {
    LOG.with(|l| {
        l.borrow()
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, e)| e.clone())
            .collect()
    })
}

fn datagrams(id: u64) -> Vec<Vec<u8>> {
    events(id)
        .into_iter()
        .filter_map(|e| match e {
            Ev::Datagram { data, .. } => Some(data),
            _ => None,
        })
        .collect()
}

/// The sender's address as std sees it (IPv4 or IPv6 sockaddr).
fn socket_addr(from: *const libc::sockaddr, len: libc::socklen_t) -> Option<SocketAddr> {
    // SAFETY: `from` points at `len` bytes of a sockaddr of the family it names (callback contract).
    unsafe {
        match i32::from((*from).sa_family) {
            libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
                let sin = &*from.cast::<libc::sockaddr_in>();
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
                let sin6 = &*from.cast::<libc::sockaddr_in6>();
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
            }
            _ => None,
        }
    }
}

unsafe extern "C" fn on_datagram(
    lp: *mut ep_loop,
    id: u64,
    data: *const u8,
    len: usize,
    from: *const libc::sockaddr,
    fromlen: libc::socklen_t,
    flags: u32,
    _user: *mut c_void,
) {
    // SAFETY: `data` is valid for `len` bytes during the call.
    let bytes = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
    let ev = Ev::Datagram {
        data: bytes,
        from: socket_addr(from, fromlen),
        truncated: flags & EP_DGRAM_TRUNCATED != 0,
    };
    LOG.with(|l| l.borrow_mut().push((id, ev)));
    if ECHO.with(|e| *e.borrow()) {
        // SAFETY: live loop inside its callback; `from` valid during the call. A user's echo:
        // no check of the result beyond what the test asserts.
        let rc = unsafe { ep_sendto(lp, id, data.cast(), len, from, fromlen) };
        assert!(rc >= 0, "ep_sendto in on_datagram: {rc}");
    }
}

unsafe extern "C" fn on_error(_lp: *mut ep_loop, id: u64, err: i32, _user: *mut c_void) {
    LOG.with(|l| l.borrow_mut().push((id, Ev::Error(err))));
}

unsafe extern "C" fn on_writable(_lp: *mut ep_loop, id: u64, _user: *mut c_void) {
    LOG.with(|l| l.borrow_mut().push((id, Ev::Writable)));
}

unsafe extern "C" fn on_close(
    _lp: *mut ep_loop,
    id: u64,
    reason: ep_close_reason,
    err: i32,
    _user: *mut c_void,
) {
    LOG.with(|l| l.borrow_mut().push((id, Ev::Close(reason as i32, err))));
}

static DGRAM: ep_datagram_callbacks = ep_datagram_callbacks {
    on_datagram: Some(on_datagram),
    on_writable: Some(on_writable),
    on_error: Some(on_error),
    on_close: Some(on_close),
};

struct Udp {
    lp: *mut ep_loop,
}

impl Udp {
    fn new() -> Self {
        LOG.with(|l| l.borrow_mut().clear());
        ECHO.with(|e| *e.borrow_mut() = false);
        Udp { lp: ep_loop_new() }
    }

    fn bind(&self, host: &str, flags: u32) -> (u64, u16) {
        let id = self.try_bind(host, flags);
        assert!(
            id > 0,
            "ep_udp_bind({host}): {id} ({})",
            strerror(id as i32)
        );
        // SAFETY: live loop; id just returned.
        let port = unsafe { ep_local_port(self.lp, id as u64) };
        assert!(port > 0);
        (id as u64, port as u16)
    }

    fn try_bind(&self, host: &str, flags: u32) -> i64 {
        let host = CString::new(host).unwrap();
        // SAFETY: live loop; valid C string; static callbacks.
        unsafe { ep_udp_bind(self.lp, host.as_ptr(), 0, flags, &DGRAM, null_mut()) }
    }

    fn run_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + LIMIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            // SAFETY: live loop on its thread.
            let rc = unsafe { ep_run_once(self.lp, 10) };
            assert!(rc >= 0, "ep_run_once: {rc}");
        }
    }

    /// ep_sendto to a std address.
    fn sendto(&self, id: u64, data: &[u8], to: SocketAddr) -> i32 {
        let (raw, len) = sockaddr_of(to);
        // SAFETY: live loop; `data` and `raw` readable for their lengths.
        unsafe {
            ep_sendto(
                self.lp,
                id,
                data.as_ptr().cast(),
                data.len(),
                raw.as_ptr().cast(),
                len,
            )
        }
    }

    fn close_and_free(self, id: u64) {
        // SAFETY: live loop.
        assert_eq!(unsafe { ep_close(self.lp, id) }, 0);
        self.run_until("on_close", || {
            events(id).iter().any(|e| matches!(e, Ev::Close(..)))
        });
        // SAFETY: the loop is freed once.
        unsafe { ep_loop_free(self.lp) };
        let closes: Vec<Ev> = events(id)
            .into_iter()
            .filter(|e| matches!(e, Ev::Close(..)))
            .collect();
        assert_eq!(
            closes,
            vec![Ev::Close(LOCAL, 0)],
            "exactly one on_close, LOCAL"
        );
        assert!(
            matches!(events(id).last(), Some(Ev::Close(..))),
            "nothing after on_close"
        );
    }
}

/// `to` as a kernel sockaddr (bytes of a sockaddr_in or sockaddr_in6) and its length.
fn sockaddr_of(to: SocketAddr) -> (Vec<u64>, libc::socklen_t) {
    let mut storage = vec![0u64; 16]; // 128 bytes, 8-aligned
    let len = match to {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: storage is 128 aligned bytes, larger than a sockaddr_in.
            unsafe { std::ptr::write(storage.as_mut_ptr().cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: storage is 128 aligned bytes, larger than a sockaddr_in6.
            unsafe { std::ptr::write(storage.as_mut_ptr().cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Receives what `client` gets within LIMIT while the loop runs, until `want` datagrams came.
fn collect(udp: &Udp, client: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
    client.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 70_000];
    udp.run_until("the echoes", || {
        while let Ok(n) = client.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got.len() >= want
    });
    got
}

fn echo_on(host: &str, client_host: &str, flags: u32) {
    let udp = Udp::new();
    ECHO.with(|e| *e.borrow_mut() = true);
    let (id, port) = udp.bind(host, flags);
    let client = UdpSocket::bind((client_host, 0)).unwrap();
    client.connect((client_host, port)).unwrap();
    let messages: Vec<Vec<u8>> = vec![
        b"one".to_vec(),
        Vec::new(),
        vec![7u8; 1400],
        vec![9u8; 60_000],
        b"last".to_vec(),
    ];
    for m in &messages {
        client.send(m).unwrap();
    }
    let got = collect(&udp, &client, messages.len());
    assert_eq!(
        got, messages,
        "every datagram echoed whole, in order (loopback keeps order)"
    );
    let client_addr = client.local_addr().unwrap();
    for ev in events(id) {
        if let Ev::Datagram {
            from, truncated, ..
        } = ev
        {
            assert!(!truncated);
            let from = from.expect("an IP sender");
            assert_eq!(
                from.port(),
                client_addr.port(),
                "the sender's address is reported"
            );
        }
    }
    udp.close_and_free(id);
}

fn echo_ipv4(flags: u32) {
    echo_on("127.0.0.1", "127.0.0.1", flags);
}
both_modes!(echo_ipv4);

fn echo_ipv6(flags: u32) {
    echo_on("::1", "::1", flags);
}
both_modes!(echo_ipv6);

/// An endpoint bound to "" (every address) hears IPv4 senders as ::ffff:a.b.c.d and answers them.
fn dual_stack_endpoint_answers_ipv4(flags: u32) {
    echo_on("", "127.0.0.1", flags);
    let v4_mapped = LOG.with(|l| {
        l.borrow().iter().any(|(_, e)| {
            matches!(e, Ev::Datagram { from: Some(SocketAddr::V6(a)), .. }
                if a.ip().to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST))
        })
    });
    assert!(
        v4_mapped,
        "the IPv4 sender appears as an IPv4-mapped IPv6 address"
    );
}
both_modes!(dual_stack_endpoint_answers_ipv4);

/// More datagrams than one wakeup's budget (32), all delivered: in edge mode the rest needs a
/// service pass, since no new edge comes for datagrams already queued.
fn a_burst_beyond_the_budget_is_delivered(flags: u32) {
    let udp = Udp::new();
    let (id, port) = udp.bind("127.0.0.1", flags);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        client
            .send_to(&i.to_be_bytes(), ("127.0.0.1", port))
            .unwrap();
    }
    udp.run_until("200 datagrams", || datagrams(id).len() == 200);
    let order: Vec<u32> = datagrams(id)
        .iter()
        .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
        .collect();
    assert_eq!(order, (0..200).collect::<Vec<_>>());
    udp.close_and_free(id);
}
both_modes!(a_burst_beyond_the_budget_is_delivered);

fn truncated_datagrams_are_flagged(flags: u32) {
    let udp = Udp::new();
    let (id, port) = udp.bind("127.0.0.1", flags);
    // SAFETY: live loop.
    let rc = unsafe { ep_udp_set_option(udp.lp, id, EP_UDP_MAX_DATAGRAM, 10) };
    assert_eq!(rc, 0);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(&[1u8; 100], ("127.0.0.1", port)).unwrap();
    client.send_to(&[2u8; 10], ("127.0.0.1", port)).unwrap();
    udp.run_until("two datagrams", || datagrams(id).len() == 2);
    let flags: Vec<(usize, bool)> = events(id)
        .into_iter()
        .filter_map(|e| match e {
            Ev::Datagram {
                data, truncated, ..
            } => Some((data.len(), truncated)),
            _ => None,
        })
        .collect();
    assert_eq!(
        flags,
        vec![(10, true), (10, false)],
        "cut to the maximum and flagged, not silently"
    );
    udp.close_and_free(id);
}
both_modes!(truncated_datagrams_are_flagged);

/// A connected endpoint sending to a port nobody listens on: ICMP port unreachable comes back as
/// on_error(ECONNREFUSED); the endpoint stays open (no on_close) and keeps working.
fn connected_endpoint_reports_refused_through_on_error(flags: u32) {
    let udp = Udp::new();
    let (id, _) = udp.bind("127.0.0.1", flags);
    let closed_port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let host = CString::new("127.0.0.1").unwrap();
    // SAFETY: live loop; valid C string.
    let rc = unsafe { ep_udp_connect(udp.lp, id, host.as_ptr(), closed_port) };
    assert_eq!(rc, 0);
    let deadline = Instant::now() + LIMIT;
    while !events(id).contains(&Ev::Error(libc::ECONNREFUSED)) {
        assert!(
            Instant::now() < deadline,
            "no on_error(ECONNREFUSED): {:?}",
            events(id)
        );
        // SAFETY: live loop; NULL address = the connected one.
        let rc = unsafe { ep_sendto(udp.lp, id, b"ping".as_ptr().cast(), 4, null(), 0) };
        assert!(
            rc == 0,
            "ep_sendto on a refused connected endpoint returns 0, not {rc}"
        );
        // SAFETY: live loop.
        unsafe { ep_run_once(udp.lp, 20) };
    }
    assert!(
        !events(id).iter().any(|e| matches!(e, Ev::Close(..))),
        "the endpoint lives on"
    );
    // It still receives from (and sends to) its connected peer once one is there.
    let peer = UdpSocket::bind(("127.0.0.1", closed_port));
    if let Ok(peer) = peer {
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // SAFETY: live loop.
        let rc = unsafe { ep_sendto(udp.lp, id, b"again".as_ptr().cast(), 5, null(), 0) };
        assert_eq!(rc, 0);
        let mut buf = [0u8; 16];
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"again");
    }
    udp.close_and_free(id);
}
both_modes!(connected_endpoint_reports_refused_through_on_error);

#[test]
fn broadcast_needs_the_option_and_then_reaches_a_listener() {
    let udp = Udp::new();
    let (receiver, port) = udp.bind("0.0.0.0", 0);
    let (sender, _) = udp.bind("127.0.0.1", 0);
    let to: SocketAddr = ([127, 255, 255, 255], port).into();
    assert_eq!(
        udp.sendto(sender, b"bc", to),
        -libc::EACCES,
        "a broadcast without the option"
    );
    // SAFETY: live loop.
    let rc = unsafe { ep_udp_set_option(udp.lp, sender, EP_UDP_BROADCAST, 1) };
    assert_eq!(rc, 0);
    assert_eq!(udp.sendto(sender, b"bc", to), 0);
    udp.run_until("the broadcast", || {
        datagrams(receiver) == vec![b"bc".to_vec()]
    });
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_close(udp.lp, sender) }, 0);
    udp.close_and_free(receiver);
}

#[test]
fn multicast_join_receives_and_leave_stops() {
    let udp = Udp::new();
    let (member, port) = udp.bind("0.0.0.0", EP_REUSEPORT);
    let (sender, _) = udp.bind("127.0.0.1", 0);
    let group = CString::new("239.255.42.99").unwrap();
    let iface = CString::new("127.0.0.1").unwrap();
    // SAFETY: live loop; valid C strings.
    unsafe {
        assert_eq!(
            ep_udp_join(udp.lp, member, group.as_ptr(), iface.as_ptr()),
            0
        );
        assert_eq!(
            ep_udp_join(udp.lp, member, group.as_ptr(), iface.as_ptr()),
            -libc::EADDRINUSE
        );
        assert_eq!(
            ep_udp_set_option(udp.lp, sender, EP_UDP_MULTICAST_IF, 1),
            0,
            "lo is index 1"
        );
        assert_eq!(
            ep_udp_set_option(udp.lp, sender, EP_UDP_MULTICAST_LOOP, 1),
            0
        );
        assert_eq!(
            ep_udp_set_option(udp.lp, sender, EP_UDP_MULTICAST_TTL, 0),
            0
        );
    }
    let to: SocketAddr = ([239, 255, 42, 99], port).into();
    assert_eq!(udp.sendto(sender, b"to the group", to), 0);
    udp.run_until("the group's datagram", || {
        datagrams(member) == vec![b"to the group".to_vec()]
    });
    // SAFETY: live loop; valid C strings.
    unsafe {
        assert_eq!(
            ep_udp_leave(udp.lp, member, group.as_ptr(), iface.as_ptr()),
            0
        );
        assert_eq!(
            ep_udp_leave(udp.lp, member, group.as_ptr(), iface.as_ptr()),
            -libc::EADDRNOTAVAIL
        );
    }
    assert_eq!(udp.sendto(sender, b"after leave", to), 0);
    let until = Instant::now() + Duration::from_millis(300);
    udp.run_until("a quiet moment", || Instant::now() >= until);
    assert_eq!(
        datagrams(member).len(),
        1,
        "nothing arrives after leaving the group"
    );
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_close(udp.lp, sender) }, 0);
    udp.close_and_free(member);
}

#[test]
fn the_callers_mistakes_are_codes_and_send_nothing() {
    let udp = Udp::new();
    let (id, port) = udp.bind("127.0.0.1", 0);
    let (receiver, rport) = udp.bind("127.0.0.1", 0);
    let to: SocketAddr = ([127, 0, 0, 1], rport).into();
    let big = vec![0u8; EP_DATAGRAM_MAX + 1];
    assert_eq!(udp.sendto(id, &big, to), -libc::EMSGSIZE);
    // SAFETY: live loop; each pointer valid or NULL as the case tests.
    unsafe {
        assert_eq!(
            ep_sendto(udp.lp, id, b"x".as_ptr().cast(), 1, null(), 0),
            -libc::EDESTADDRREQ
        );
        assert_eq!(ep_sendto(udp.lp, id, null(), 1, null(), 0), EP_ENULL);
        let (raw, len) = sockaddr_of(to);
        assert_eq!(
            ep_sendto(
                udp.lp,
                id,
                b"x".as_ptr().cast(),
                1,
                raw.as_ptr().cast(),
                len - 1
            ),
            -libc::EINVAL
        );
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let (raw6, len6) = sockaddr_of(v6);
        assert_eq!(
            ep_sendto(
                udp.lp,
                id,
                b"x".as_ptr().cast(),
                1,
                raw6.as_ptr().cast(),
                len6
            ),
            -libc::EAFNOSUPPORT
        );
        assert_eq!(
            ep_send(udp.lp, id, b"x".as_ptr().cast(), 1),
            EP_EKIND,
            "a stream call"
        );
        assert_eq!(ep_shutdown(udp.lp, id), EP_EKIND);
        assert_eq!(ep_set_idle_timeout(udp.lp, id, 10), EP_EKIND);
        assert_eq!(ep_udp_set_option(udp.lp, id, 99, 1), -libc::EINVAL);
        assert_eq!(
            ep_udp_set_option(udp.lp, id, EP_UDP_MAX_DATAGRAM, 0),
            -libc::EINVAL
        );
        assert_eq!(
            ep_udp_set_option(udp.lp, id, EP_UDP_MULTICAST_TTL, 256),
            -libc::EINVAL
        );
        let bad = CString::new("10.0.0.1").unwrap();
        assert_eq!(
            ep_udp_join(udp.lp, id, bad.as_ptr(), null()),
            -libc::EINVAL,
            "not a group"
        );
        assert_eq!(ep_udp_join(udp.lp, id, null(), null()), EP_ENULL);
        let host = CString::new("127.0.0.1").unwrap();
        assert_eq!(
            ep_udp_bind(udp.lp, host.as_ptr(), port, 0, &DGRAM, null_mut()),
            -i64::from(libc::EADDRINUSE)
        );
        assert_eq!(
            ep_udp_bind(udp.lp, host.as_ptr(), 0, EP_HALF_CLOSE, &DGRAM, null_mut()),
            -i64::from(libc::EINVAL)
        );
        assert_eq!(
            ep_udp_bind(udp.lp, host.as_ptr(), 0, 0, null(), null_mut()),
            i64::from(EP_ENULL)
        );
        assert_eq!(
            ep_udp_bind(udp.lp, null(), 0, 0, &DGRAM, null_mut()),
            i64::from(EP_ENULL)
        );
        // Nothing above reached the receiver.
        assert_eq!(udp.sendto(id, b"only this", to), 0);
    }
    udp.run_until("the one datagram", || !datagrams(receiver).is_empty());
    assert_eq!(datagrams(receiver), vec![b"only this".to_vec()]);
    // After the caller's own close: EP_ECLOSING until on_close, EP_ESTALE after.
    // SAFETY: live loop.
    unsafe {
        assert_eq!(ep_close(udp.lp, id), 0);
        assert_eq!(udp.sendto(id, b"x", to), EP_ECLOSING);
        assert_eq!(ep_close(udp.lp, id), EP_ECLOSING);
    }
    udp.run_until("on_close", || events(id).contains(&Ev::Close(LOCAL, 0)));
    assert_eq!(udp.sendto(id, b"x", to), EP_ESTALE);
    udp.close_and_free(receiver);
}

/// ep_abort: on_close(ABORT); loop free: on_close(LOOP_FREED); each once.
#[test]
fn abort_and_loop_free_end_endpoints_once() {
    let udp = Udp::new();
    let (a, _) = udp.bind("127.0.0.1", 0);
    let (b, _) = udp.bind("::1", EP_EDGE);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_abort(udp.lp, a) }, 0);
    udp.run_until("abort's on_close", || !events(a).is_empty());
    // SAFETY: the loop is freed once.
    unsafe { ep_loop_free(udp.lp) };
    assert_eq!(events(a), vec![Ev::Close(ABORT, 0)]);
    assert_eq!(events(b), vec![Ev::Close(LOOP_FREED, 0)]);
}

/// A paused endpoint receives nothing; resumed, it gets what waited in the kernel.
fn pause_holds_datagrams_in_the_kernel(flags: u32) {
    let udp = Udp::new();
    let (id, port) = udp.bind("127.0.0.1", flags);
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_pause_reading(udp.lp, id) }, 0);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"held", ("127.0.0.1", port)).unwrap();
    let until = Instant::now() + Duration::from_millis(100);
    udp.run_until("a while", || Instant::now() >= until);
    assert!(datagrams(id).is_empty());
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_resume_reading(udp.lp, id) }, 0);
    udp.run_until("the held datagram", || {
        datagrams(id) == vec![b"held".to_vec()]
    });
    udp.close_and_free(id);
}
both_modes!(pause_holds_datagrams_in_the_kernel);

/// ep_poll (EP_QUEUE): datagrams arrive as EP_EVENT_DATAGRAM with the sender's address after the
/// payload, errors as EP_EVENT_DATAGRAM_ERROR.
#[test]
fn queued_endpoints_report_datagrams_to_ep_poll() {
    let lp = ep_loop_new();
    let host = CString::new("127.0.0.1").unwrap();
    // SAFETY: live loop; valid C string; NULL callbacks are allowed with EP_QUEUE.
    let id = unsafe {
        ep_udp_bind(
            lp,
            host.as_ptr(),
            0,
            EP_QUEUE,
            null(),
            42usize as *mut c_void,
        )
    };
    assert!(id > 0);
    let id = id as u64;
    // SAFETY: live loop.
    let port = unsafe { ep_local_port(lp, id) } as u16;
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"queued", ("127.0.0.1", port)).unwrap();
    let deadline = Instant::now() + LIMIT;
    let mut seen = None;
    while seen.is_none() {
        assert!(Instant::now() < deadline);
        let mut result = std::mem::MaybeUninit::<ep_poll_result>::uninit();
        // SAFETY: live loop; `result` is written by ep_poll.
        let rc = unsafe { ep_poll(lp, 10, null(), result.as_mut_ptr()) };
        assert!(rc >= 0, "ep_poll: {rc}");
        // SAFETY: ep_poll filled it in.
        let result = unsafe { result.assume_init() };
        for i in 0..result.count {
            // SAFETY: `count` events at `events`, data as described, valid until the next poll.
            let (ev, data) = unsafe {
                (
                    *result.events.add(i),
                    std::slice::from_raw_parts(result.data, result.data_len),
                )
            };
            if ev.kind == EP_EVENT_DATAGRAM {
                let (start, len, alen) =
                    (ev.offset as usize, ev.len as usize, ev.listener as usize);
                let payload = data[start..start + len].to_vec();
                let addr = &data[start + len..start + len + alen];
                let port = u16::from_be_bytes([addr[2], addr[3]]);
                seen = Some((ev.id, payload, alen, port, ev.reason, ev.user as usize));
            }
        }
    }
    let client_port = client.local_addr().unwrap().port();
    assert_eq!(
        seen,
        Some((
            id,
            b"queued".to_vec(),
            size_of::<libc::sockaddr_in>(),
            client_port,
            0,
            42
        ))
    );
    // SAFETY: the loop is freed once.
    unsafe { ep_loop_free(lp) };
}
