//! Issue 10's matrix, through the C ABI: every way a peer goes away × every thing a handler does
//! in on_data, in both trigger modes. The handler is written as a user would: it never looks at
//! a return code for the peer's sake. Every call it makes before the connection's on_close must
//! return >= 0 (one channel: the departure is on_close alone), every connection ends with exactly
//! one on_close (the harness's oracle), and afterwards the server still serves a new client.

mod common;

use common::*;
use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    /// Sends, then FIN.
    Fin,
    /// Sends, waits for the server to read, then RST.
    Rst,
    /// Sends megabytes (all the kernel takes) and RSTs before the server reads any of it.
    RstUnread,
    /// Sends, never reads while the server's replies pile up above the high-water mark, then RST.
    RstPending,
    /// Sends, then neither reads nor writes nor closes: gone without a word; the idle timeout
    /// ends it.
    Vanish,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    /// One reply (an echo).
    Send,
    /// Many replies in a row (1 MiB in 64 KiB sends).
    SendMany,
    Shutdown,
    Close,
    /// The C counterpart of a handler that raises: it gives up on the connection.
    Abort,
}

const ACTIONS: [Action; 5] = [
    Action::Send,
    Action::SendMany,
    Action::Shutdown,
    Action::Close,
    Action::Abort,
];

/// The calls a handler made on the first connection before its on_close: (call, code).
type Calls = Rc<RefCell<Vec<(&'static str, i32)>>>;

fn act(lp: *mut ep_loop, conn: u64, data: &[u8], action: Action, calls: &Calls) {
    let log = |name, rc| calls.borrow_mut().push((name, rc));
    match action {
        Action::Send => log("ep_send", send(lp, conn, data)),
        Action::SendMany => {
            let chunk = vec![b'r'; 64 * 1024];
            for _ in 0..16 {
                log("ep_send", send(lp, conn, &chunk));
            }
        }
        Action::Shutdown => log("ep_shutdown", shutdown(lp, conn)),
        Action::Close => log("ep_close", close(lp, conn)),
        Action::Abort => log("ep_abort", abort(lp, conn)),
    }
}

fn cell(peer: Peer, action: Action, flags: u32) {
    let h = Harness::new();
    let (listener, port) = h.listen("127.0.0.1", flags);
    if peer == Peer::Vanish {
        // SAFETY: live loop and listener: the accepted connections inherit the timeout.
        assert_eq!(unsafe { ep_set_idle_timeout(h.lp, listener, 300) }, 0);
    }
    let calls: Calls = Rc::default();
    let first: Rc<Cell<u64>> = Rc::default();
    let (hook_calls, hook_first) = (calls.clone(), first.clone());
    h.rec.set_hook(move |rec, lp, ev| match *ev {
        Event::Accept { conn, .. } if hook_first.get() == 0 => hook_first.set(conn),
        Event::Data { conn, data } if conn == hook_first.get() => {
            act(lp, conn, data, action, &hook_calls);
            // The handler keeps going as a user would: more calls on the same connection.
            if action == Action::Send || action == Action::SendMany {
                let rc = send(lp, conn, b"more");
                hook_calls.borrow_mut().push(("ep_send", rc));
            }
        }
        Event::Writable { conn } if conn == hook_first.get() => {
            // SAFETY: live loop inside its callback.
            let rc = unsafe { ep_resume_reading(lp, conn) };
            hook_calls.borrow_mut().push(("ep_resume_reading", rc));
        }
        _ if ev.id() != hook_first.get() => echo(rec, lp, ev),
        _ => {}
    });

    let client = connect(port);
    let conn = h.accept_for(&client);
    let start = Instant::now();
    match peer {
        Peer::Fin => {
            (&client).write_all(b"hello").unwrap();
            h.run_until("the data", |r| r.bytes(conn) >= 5);
            // (The server may have reset it already: Abort.)
            let _ = client.shutdown(std::net::Shutdown::Write);
            let reader = spawn_reader(client, flag());
            h.run_until_closed(conn);
            drop(reader);
        }
        Peer::Rst => {
            (&client).write_all(b"hello").unwrap();
            h.run_until("the data", |r| r.bytes(conn) >= 5);
            rst(client);
            h.run_until_closed(conn);
        }
        Peer::RstUnread => {
            // Everything the kernel takes is in flight, then the reset, all before the server
            // reads a byte: the handler acts on a connection the peer has already reset.
            client.set_nonblocking(true).unwrap();
            let chunk = vec![b'f'; 256 * 1024];
            while (&client).write(&chunk).is_ok() {}
            rst(client);
            h.run_until_closed(conn);
        }
        Peer::RstPending => {
            (&client).write_all(b"hello").unwrap();
            // The server's replies pile up: the client does not read. Give the reply time to
            // be queued (SendMany queues 1 MiB; Send queues a little), then reset.
            h.run_until("the data", |r| r.bytes(conn) >= 5);
            h.run_for(Duration::from_millis(20));
            rst(client);
            h.run_until_closed(conn);
        }
        Peer::Vanish => {
            (&client).write_all(b"hello").unwrap();
            h.run_until("the data", |r| r.bytes(conn) >= 5);
            // The client stays connected, silent, not reading: the idle timeout must end it.
            h.run_until_closed(conn);
            drop(client);
        }
    }
    let elapsed = start.elapsed();
    let (reason, err) = h.rec.close_of(conn).unwrap();
    for (name, rc) in calls.borrow().iter() {
        assert!(
            *rc >= 0,
            "{peer:?} × {action:?}: {name} returned {rc} ({}) before on_close",
            strerror(*rc)
        );
    }
    if peer == Peer::Vanish && matches!(action, Action::Send | Action::SendMany) {
        assert_eq!(
            (reason, err),
            (TIMEOUT, libc::ETIMEDOUT),
            "{peer:?} × {action:?}"
        );
        assert!(
            elapsed >= Duration::from_millis(250),
            "timed out after {elapsed:?}"
        );
    }
    // The peer's reset is reported as the peer's doing, whatever the handler did but end the
    // connection itself (a shutdown(2) on a reset socket fails ENOTCONN: still the peer's reset).
    if matches!(peer, Peer::Rst | Peer::RstUnread | Peer::RstPending)
        && matches!(action, Action::Send | Action::SendMany | Action::Shutdown)
    {
        assert!(
            reason == PEER_RESET || reason == PEER_EOF,
            "{peer:?} × {action:?}: {}",
            reason_name(reason)
        );
    }

    // The server is still serving.
    let mut fresh = connect(port);
    fresh.write_all(b"still there?").unwrap();
    let fresh_id = h.accept_for(&fresh);
    h.run_until("the echo to a new client", |r| r.bytes(fresh_id) >= 12);
    let mut back = [0u8; 12];
    fresh.set_read_timeout(Some(LIMIT)).unwrap();
    fresh.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still there?");
    drop(fresh);
    h.run_until_closed(fresh_id);
    h.finish();
}

fn matrix(peer: Peer, flags: u32) {
    for action in ACTIONS {
        cell(peer, action, flags);
    }
}

fn fin(flags: u32) {
    matrix(Peer::Fin, flags)
}
both_modes!(fin);

fn rst_after_reading(flags: u32) {
    matrix(Peer::Rst, flags)
}
both_modes!(rst_after_reading);

fn rst_with_unread_data(flags: u32) {
    matrix(Peer::RstUnread, flags)
}
both_modes!(rst_with_unread_data);

fn rst_with_output_pending(flags: u32) {
    matrix(Peer::RstPending, flags)
}
both_modes!(rst_with_output_pending);

fn vanished_peer(flags: u32) {
    matrix(Peer::Vanish, flags)
}
both_modes!(vanished_peer);
