//! The batch interface (EP_QUEUE + ep_poll): commands in, events out, one call per step, with the
//! same semantics as the callback interface.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ptr;
use std::time::{Duration, Instant};

use eploop::*;

struct Batch {
    lp: *mut ep_loop,
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: the loop was created by ep_loop_new and is freed once.
        unsafe { ep_loop_free(self.lp) }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Accept { id: u64, listener: u64, fd: i32 },
    Data { id: u64, bytes: Vec<u8> },
    Writable(u64),
    Close { id: u64, reason: u32, err: i32 },
}

impl Batch {
    fn new() -> Self {
        let lp = ep_loop_new();
        assert!(!lp.is_null());
        Batch { lp }
    }

    fn listen(&self) -> (u64, u16) {
        // SAFETY: live loop; NULL callbacks are allowed with EP_QUEUE.
        let id = unsafe {
            ep_listen(
                self.lp,
                c"127.0.0.1".as_ptr(),
                0,
                16,
                EP_QUEUE,
                ptr::null(),
                ptr::null_mut(),
            )
        };
        assert!(id > 0, "ep_listen: {id}");
        // SAFETY: live loop.
        let port = unsafe { ep_local_port(self.lp, id as u64) };
        (id as u64, port as u16)
    }

    /// One ep_poll with `cmds` (send payloads taken from `buf`); returns (rc, results, events, state).
    fn poll(
        &self,
        timeout_ms: i32,
        cmds: &[ep_command],
        buf: &[u8],
    ) -> (i32, Vec<i32>, Vec<Ev>, i32) {
        let mut results = vec![i32::MIN; cmds.len()];
        let mut out = ep_poll_result::default();
        // SAFETY: the slices are valid for their lengths; `out` is writable.
        let rc = unsafe {
            ep_poll(
                self.lp,
                timeout_ms,
                &ep_commands {
                    cmds: cmds.as_ptr(),
                    count: cmds.len(),
                    buf: buf.as_ptr(),
                    buf_len: buf.len(),
                    results: results.as_mut_ptr(),
                },
                &mut out,
            )
        };
        let events = if out.count == 0 {
            &[][..]
        } else {
            // SAFETY: ep_poll returned `count` events valid until the next call.
            unsafe { std::slice::from_raw_parts(out.events, out.count) }
        };
        let data = if out.data_len == 0 {
            &[][..]
        } else {
            // SAFETY: as above, `data_len` bytes.
            unsafe { std::slice::from_raw_parts(out.data, out.data_len) }
        };
        let evs = events
            .iter()
            .map(|e| match e.kind {
                EP_EVENT_ACCEPT => Ev::Accept {
                    id: e.id,
                    listener: e.listener,
                    fd: e.err,
                },
                EP_EVENT_DATA => Ev::Data {
                    id: e.id,
                    bytes: data[e.offset as usize..(e.offset + e.len) as usize].to_vec(),
                },
                EP_EVENT_WRITABLE => Ev::Writable(e.id),
                EP_EVENT_CLOSE => Ev::Close {
                    id: e.id,
                    reason: e.reason,
                    err: e.err,
                },
                other => panic!("unknown event kind {other}"),
            })
            .collect();
        (rc, results, evs, out.state)
    }

    /// Polls (applying `cmds` once) until `done` holds for the events seen so far; bounded.
    fn poll_until(
        &self,
        mut cmds: Vec<ep_command>,
        buf: &[u8],
        done: impl Fn(&[Ev]) -> bool,
    ) -> Vec<Ev> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while !done(&seen) {
            assert!(
                Instant::now() < deadline,
                "timed out; events so far: {seen:?}"
            );
            let (rc, results, evs, _) = self.poll(100, &cmds, buf);
            assert!(rc == 0 || rc == -libc::EINTR, "ep_poll: {rc}");
            assert!(
                results.iter().all(|r| *r >= 0),
                "command results {results:?}"
            );
            cmds.clear();
            seen.extend(evs);
        }
        seen
    }
}

fn cmd(op: u32, id: u64, offset: u64, len: u64) -> ep_command {
    ep_command {
        op,
        flags: 0,
        id,
        offset,
        len,
    }
}

#[test]
fn echo_through_commands_and_events_then_one_close() {
    let b = Batch::new();
    let (listener, port) = b.listen();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"hello\0world").unwrap();
    let evs = b.poll_until(vec![], &[], |e| {
        e.iter().any(|e| matches!(e, Ev::Data { .. }))
    });
    let Ev::Accept {
        id: conn,
        listener: l,
        fd,
    } = evs[0].clone()
    else {
        panic!("{evs:?}")
    };
    assert_eq!(l, listener);
    // SAFETY: live loop.
    let by_call = unsafe { ep_fd(b.lp, conn) };
    assert_eq!(fd, by_call, "the accept event carries the fd");
    assert!(fd > 2);
    let received: Vec<u8> = evs
        .iter()
        .filter_map(|e| {
            if let Ev::Data { id, bytes } = e {
                (*id == conn).then(|| bytes.clone())
            } else {
                None
            }
        })
        .flatten()
        .collect();
    assert_eq!(received, b"hello\0world", "binary-safe, in order");
    // Echo it back and close gracefully in the same batch: the send goes first.
    let evs = b.poll_until(
        vec![cmd(EP_CMD_SEND, conn, 0, 11), cmd(EP_CMD_CLOSE, conn, 0, 0)],
        &received,
        |e| e.iter().any(|e| matches!(e, Ev::Close { .. })),
    );
    assert_eq!(
        evs,
        vec![Ev::Close {
            id: conn,
            reason: ep_close_reason::EP_CLOSE_LOCAL as u32,
            err: 0
        }]
    );
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed, b"hello\0world");
    // The id is stale afterwards, through either interface.
    let (_, results, _, _) = b.poll(0, &[cmd(EP_CMD_SEND, conn, 0, 1)], b"x");
    assert_eq!(results, vec![EP_ESTALE]);
}

#[test]
fn peer_eof_after_data_arrives_as_data_then_close() {
    let b = Batch::new();
    let (_, port) = b.listen();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(&[7u8; 200_000]).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let evs = b.poll_until(vec![], &[], |e| {
        e.iter().any(|e| matches!(e, Ev::Close { .. }))
    });
    let bytes: usize = evs
        .iter()
        .map(|e| {
            if let Ev::Data { bytes, .. } = e {
                bytes.len()
            } else {
                0
            }
        })
        .sum();
    assert_eq!(bytes, 200_000, "every byte before the close");
    assert!(
        matches!(evs.last(), Some(Ev::Close { reason, err: 0, .. }) if *reason == ep_close_reason::EP_CLOSE_PEER_EOF as u32)
    );
    assert_eq!(
        evs.iter().filter(|e| matches!(e, Ev::Close { .. })).count(),
        1
    );
}

#[test]
fn bad_commands_report_errors_and_lose_nothing() {
    let b = Batch::new();
    let (listener, port) = b.listen();
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let evs = b.poll_until(vec![], &[], |e| !e.is_empty());
    let Ev::Accept { id: conn, .. } = evs[0] else {
        panic!("{evs:?}")
    };
    let cmds = [
        cmd(EP_CMD_SEND, conn, 4, 10),    // beyond the buffer
        cmd(99, conn, 0, 0),              // unknown op
        cmd(EP_CMD_SEND, listener, 0, 1), // not a connection
        cmd(EP_CMD_CLOSE, 12345, 0, 0),   // stale id
        cmd(EP_CMD_SEND, conn, 0, 4),     // fine
    ];
    let (rc, results, _, state) = b.poll(0, &cmds, b"ping");
    assert_eq!(rc, 0);
    assert_eq!(
        results,
        vec![-libc::EINVAL, -libc::EINVAL, EP_EKIND, EP_ESTALE, 0]
    );
    assert_eq!(state, EP_RUN_MORE);
    let mut out = ep_poll_result {
        events: ptr::null(),
        count: 0,
        data: ptr::null(),
        data_len: 0,
        state: 0,
    };
    // SAFETY: deliberate NULL arguments; the function must refuse them.
    unsafe {
        assert_eq!(
            ep_poll(
                b.lp,
                0,
                &ep_commands {
                    cmds: ptr::null(),
                    count: 1,
                    buf: ptr::null(),
                    buf_len: 0,
                    results: ptr::null_mut(),
                },
                &mut out
            ),
            EP_ENULL
        );
        assert_eq!(ep_poll(b.lp, 0, ptr::null(), ptr::null_mut()), EP_ENULL);
        assert_eq!(ep_poll(ptr::null_mut(), 0, ptr::null(), &mut out), EP_ENULL);
    }
}

#[test]
fn queue_mode_needs_no_callbacks_but_callback_mode_does() {
    let b = Batch::new();
    // SAFETY: live loop; NULL callbacks without EP_QUEUE must be refused.
    let refused = unsafe {
        ep_listen(
            b.lp,
            c"127.0.0.1".as_ptr(),
            0,
            0,
            0,
            ptr::null(),
            ptr::null_mut(),
        )
    };
    assert_eq!(refused, EP_ENULL as i64);
    let (_, port) = b.listen();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    drop(client);
    let evs = b.poll_until(vec![], &[], |e| {
        e.iter().any(|e| matches!(e, Ev::Close { .. }))
    });
    assert!(matches!(evs[0], Ev::Accept { .. }));
}

/// A request and the peer's FIN arriving together: the reply, sent by the binding only after it
/// saw the data (in the next ep_poll's commands), must still reach the peer before the close.
#[test]
fn reply_to_last_bytes_before_fin_is_delivered_in_both_modes() {
    for flags in [EP_QUEUE, EP_QUEUE | EP_EDGE] {
        let b = Batch::new();
        // SAFETY: live loop; NULL callbacks are allowed with EP_QUEUE.
        let listener = unsafe {
            ep_listen(
                b.lp,
                c"127.0.0.1".as_ptr(),
                0,
                16,
                flags,
                ptr::null(),
                ptr::null_mut(),
            )
        };
        // SAFETY: live loop.
        let port = unsafe { ep_local_port(b.lp, listener as u64) } as u16;
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.write_all(b"last request").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(50)); // data and FIN are both queued in the kernel
        let mut pending: Vec<ep_command> = Vec::new();
        let mut replies = Vec::new();
        let mut closes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while closes.is_empty() {
            assert!(Instant::now() < deadline, "no close");
            let (rc, results, evs, _) = b.poll(100, &pending, &replies);
            assert_eq!(rc, 0);
            assert!(
                results.iter().all(|r| *r == 0),
                "reply commands failed: {results:?}"
            );
            pending.clear();
            replies.clear();
            for e in evs {
                match e {
                    Ev::Data { id, bytes } => {
                        pending.push(cmd(
                            EP_CMD_SEND,
                            id,
                            replies.len() as u64,
                            bytes.len() as u64 + 6,
                        ));
                        replies.extend_from_slice(b"reply:");
                        replies.extend_from_slice(&bytes);
                    }
                    Ev::Close { id, reason, err } => closes.push((id, reason, err)),
                    Ev::Accept { .. } | Ev::Writable(_) => {}
                }
            }
        }
        assert_eq!(closes.len(), 1);
        assert_eq!(
            closes[0].1,
            ep_close_reason::EP_CLOSE_PEER_EOF as u32,
            "flags {flags:#x}"
        );
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"reply:last request", "flags {flags:#x}");
    }
}

/// EP_UNREF: a registration that does not keep the loop running, nor count as open.
#[test]
fn unref_registration_does_not_keep_the_loop_alive() {
    let b = Batch::new();
    let mut fds = [0; 2];
    // SAFETY: fds is writable for two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: live loop, open fd.
    let id = unsafe {
        ep_register(
            b.lp,
            fds[0],
            EP_QUEUE | EP_UNREF,
            ptr::null(),
            ptr::null_mut(),
        )
    };
    assert!(id > 0);
    let mut stats = ep_stats::default();
    // SAFETY: live loop, writable stats.
    let rc = unsafe { ep_get_stats(b.lp, &mut stats, size_of::<ep_stats>()) };
    assert_eq!(rc, 0);
    assert_eq!(
        stats.open, 0,
        "an unref registration is not counted as open"
    );
    // SAFETY: live loop.
    let first = unsafe { ep_run_once(b.lp, -1) };
    assert_eq!(
        first, EP_RUN_EMPTY,
        "nothing but an unref fd: empty, at once"
    );
    // Its events still arrive while other work keeps the loop running.
    let (_, port) = b.listen();
    // SAFETY: writing 3 bytes from a static buffer to our pipe.
    assert_eq!(unsafe { libc::write(fds[1], b"sig".as_ptr().cast(), 3) }, 3);
    let evs = b.poll_until(vec![], &[], |e| {
        e.iter().any(|e| matches!(e, Ev::Data { .. }))
    });
    assert!(evs.contains(&Ev::Data {
        id: id as u64,
        bytes: b"sig".to_vec()
    }));
    let _ = port;
    // SAFETY: closing our write end.
    unsafe { libc::close(fds[1]) };
}

/// ep_drain ends the server's connections, not its unref'd helper fds (a binding's signal pipe).
#[test]
fn drain_leaves_unref_registrations_alone() {
    let b = Batch::new();
    let mut fds = [0; 2];
    // SAFETY: fds is writable for two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: live loop, open fd.
    let helper = unsafe {
        ep_register(
            b.lp,
            fds[0],
            EP_QUEUE | EP_UNREF,
            ptr::null(),
            ptr::null_mut(),
        )
    };
    assert!(helper > 0);
    let (listener, port) = b.listen();
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let evs = b.poll_until(vec![], &[], |e| !e.is_empty());
    let Ev::Accept { id: conn, .. } = evs[0] else {
        panic!("{evs:?}")
    };
    // SAFETY: live loop.
    assert_eq!(unsafe { ep_drain(b.lp, 0) }, 0);
    let evs = b.poll_until(vec![], &[], |e| {
        e.iter().filter(|e| matches!(e, Ev::Close { .. })).count() == 2
    });
    let closed: Vec<u64> = evs
        .iter()
        .filter_map(|e| {
            if let Ev::Close { id, .. } = e {
                Some(*id)
            } else {
                None
            }
        })
        .collect();
    assert!(
        closed.contains(&listener) && closed.contains(&conn),
        "{evs:?}"
    );
    assert!(!closed.contains(&(helper as u64)));
    // The helper still works: its data arrives.
    // SAFETY: writing 1 byte from a static buffer to our pipe.
    assert_eq!(unsafe { libc::write(fds[1], b"!".as_ptr().cast(), 1) }, 1);
    let (_, _, evs, _) = b.poll(1000, &[], &[]);
    assert_eq!(
        evs,
        vec![Ev::Data {
            id: helper as u64,
            bytes: b"!".to_vec()
        }]
    );
    // SAFETY: closing our write end.
    unsafe { libc::close(fds[1]) };
}

/// A binding that batches its sends learns each connection's queued bytes from the events, and
/// a send made after it told its user "stop producing" brings the promised on_writable even when
/// the kernel took everything.
#[test]
fn queued_bytes_and_the_promised_writable() {
    let b = Batch::new();
    let (_listener, port) = b.listen();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let evs = b.poll_until(vec![], &[], |evs| {
        evs.iter().any(|e| matches!(e, Ev::Accept { .. }))
    });
    let Some(Ev::Accept { id: conn, .. }) =
        evs.into_iter().find(|e| matches!(e, Ev::Accept { .. }))
    else {
        unreachable!()
    };
    // The client does not read: fill the kernel's buffers and the queue past the high-water mark.
    let chunk = vec![b'x'; 1 << 20];
    let mut sends = vec![];
    for _ in 0..8 {
        sends.push(cmd(EP_CMD_SEND, conn, 0, chunk.len() as u64));
    }
    let (rc, results, _, _) = b.poll(0, &sends, &chunk);
    assert_eq!(rc, 0);
    assert_eq!(
        results.last(),
        Some(&1),
        "above the high-water mark: {results:?}"
    );
    // Data from the client now carries the queue's size.
    client.write_all(b"ping").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let queued = loop {
        assert!(Instant::now() < deadline, "no data event");
        let mut out = ep_poll_result::default();
        // SAFETY: live loop, no commands, writable out.
        let rc = unsafe { ep_poll(b.lp, 100, ptr::null(), &mut out) };
        assert_eq!(rc, 0);
        // SAFETY: `count` events valid until the next call.
        let events = unsafe { std::slice::from_raw_parts(out.events, out.count) };
        if let Some(e) = events.iter().find(|e| e.kind == EP_EVENT_DATA) {
            break e.queued;
        }
    };
    assert!(
        queued as usize > 64 * 1024,
        "queued {queued} should be above the high-water mark"
    );

    // A second connection, empty queue: a promised send that the kernel takes at once gets its
    // writable event in the same ep_poll.
    let _other = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let evs = b.poll_until(vec![], &[], |evs| {
        evs.iter().any(|e| matches!(e, Ev::Accept { .. }))
    });
    let Some(Ev::Accept { id: other, .. }) =
        evs.into_iter().find(|e| matches!(e, Ev::Accept { .. }))
    else {
        unreachable!()
    };
    let small = b"hello";
    let mut promised = cmd(EP_CMD_SEND, other, 0, small.len() as u64);
    promised.flags = EP_SEND_PROMISED_WRITABLE;
    // The event is already recorded: ep_poll must not wait for the kernel (a 10 s timeout,
    // with nothing else to happen, would otherwise be spent in full).
    let started = Instant::now();
    let (rc, results, evs, _) = b.poll(10_000, &[promised], small);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ep_poll waited with the promised writable event recorded"
    );
    assert_eq!((rc, results), (0, vec![0]));
    assert!(
        evs.contains(&Ev::Writable(other)),
        "the promised writable: {evs:?}"
    );
    // Flags on other commands, or unknown flags, are refused.
    let mut bad = cmd(EP_CMD_PAUSE, other, 0, 0);
    bad.flags = EP_SEND_PROMISED_WRITABLE;
    let mut unknown = cmd(EP_CMD_SEND, other, 0, 1);
    unknown.flags = 2;
    let (_, results, _, _) = b.poll(0, &[bad, unknown], small);
    assert_eq!(results, vec![-libc::EINVAL, -libc::EINVAL]);
    drop(client);
}
