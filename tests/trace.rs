//! The trace hook: every decision about a connection is one record — epoll bits, read and write
//! results, FIN, the close with its cause — and ep_trace_format() renders it as one line.

mod common;

use common::*;
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::io::{Read, Write};
use std::ptr::null_mut;

thread_local! {
    static RECORDS: RefCell<Vec<ep_trace_record>> = const { RefCell::new(Vec::new()) };
}

unsafe extern "C" fn keep(_lp: *mut ep_loop, record: *const ep_trace_record, user: *mut c_void) {
    assert_eq!(user as usize, 0x7ace, "the hook's user pointer");
    // SAFETY: the loop hands a valid record for the call.
    RECORDS.with(|r| r.borrow_mut().push(unsafe { *record }));
}

fn records_of(id: u64) -> Vec<ep_trace_record> {
    RECORDS.with(|r| {
        r.borrow()
            .iter()
            .filter(|rec| rec.id == id)
            .copied()
            .collect()
    })
}

fn line(record: &ep_trace_record) -> String {
    let mut buf = [0 as c_char; 128];
    // SAFETY: a valid record and a writable buffer of the length passed.
    let n = unsafe { ep_trace_format(record, buf.as_mut_ptr(), buf.len()) };
    assert!(n > 0);
    // SAFETY: ep_trace_format NUL-terminates within the buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn a_connection_explains_itself(flags: u32) {
    RECORDS.with(|r| r.borrow_mut().clear());
    let h = Harness::new();
    // SAFETY: live loop, valid hook.
    let rc = unsafe { ep_set_trace(h.lp, Some(keep), 0x7ace as *mut c_void) };
    assert_eq!(rc, 0);
    h.rec.set_hook(echo);
    let (_listener, port) = h.listen("127.0.0.1", flags);
    let mut client = connect(port);
    client.write_all(b"hello").unwrap();
    let conn = h.run_until_accepted(1)[0];
    h.run_until("the echo", |r| r.bytes(conn) == 5);
    let mut back = [0u8; 5];
    client.read_exact(&mut back).unwrap();
    rst(client);
    h.run_until_closed(conn);
    let records = records_of(conn);
    let kinds: Vec<u32> = records.iter().map(|r| r.kind).collect();
    assert_eq!(
        records[0].kind, EP_TRACE_EPOLL,
        "the first record is the event: {kinds:?}"
    );
    assert!(records[0].bits & libc::EPOLLIN as u32 != 0);
    assert!(
        records
            .iter()
            .any(|r| r.kind == EP_TRACE_READ && r.result == 5),
        "read 5: {kinds:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.kind == EP_TRACE_WRITE && r.result == 5),
        "write 5: {kinds:?}"
    );
    let close = records.last().unwrap();
    assert_eq!(
        close.kind, EP_TRACE_CLOSE,
        "the last record is the close: {kinds:?}"
    );
    assert_eq!((close.reason, close.err), (PEER_RESET, libc::ECONNRESET));
    assert_eq!(
        records.iter().filter(|r| r.kind == EP_TRACE_CLOSE).count(),
        1,
        "one close decided"
    );
    let text = line(close);
    assert_eq!(
        text,
        format!("trace {conn} close peer_reset {}", libc::ECONNRESET)
    );
    assert!(line(&records[0]).starts_with(&format!("trace {conn} epoll IN")));
    // Off again: nothing more is recorded.
    // SAFETY: live loop; NULL turns the hook off.
    assert_eq!(unsafe { ep_set_trace(h.lp, None, null_mut()) }, 0);
    let before = RECORDS.with(|r| r.borrow().len());
    let mut other = connect(port);
    other.write_all(b"x").unwrap();
    h.run_until_accepted(2);
    h.run_until("the second echo", |r| {
        r.accepted().iter().any(|c| *c != conn && r.bytes(*c) == 1)
    });
    assert_eq!(
        RECORDS.with(|r| r.borrow().len()),
        before,
        "records while the hook is off"
    );
    drop(other);
    h.finish();
}
both_modes!(a_connection_explains_itself);

#[test]
fn graceful_close_traces_fin_and_local() {
    RECORDS.with(|r| r.borrow_mut().clear());
    let h = Harness::new();
    // SAFETY: live loop, valid hook.
    let rc = unsafe { ep_set_trace(h.lp, Some(keep), 0x7ace as *mut c_void) };
    assert_eq!(rc, 0);
    let (_listener, port) = h.listen("127.0.0.1", 0);
    let client = connect(port);
    let conn = h.run_until_accepted(1)[0];
    assert_eq!(close(h.lp, conn), 0);
    h.run_until_closed(conn);
    let kinds: Vec<u32> = records_of(conn).iter().map(|r| r.kind).collect();
    assert_eq!(kinds, vec![EP_TRACE_FIN_SENT, EP_TRACE_CLOSE], "{kinds:?}");
    assert_eq!(records_of(conn)[1].reason, LOCAL);
    drop(client);
    h.finish();
}

#[test]
fn format_truncates_like_snprintf() {
    let record = ep_trace_record {
        kind: EP_TRACE_READ,
        id: 42,
        result: -i64::from(libc::ECONNRESET),
        ..Default::default()
    };
    let mut small = [0x55 as c_char; 8];
    // SAFETY: valid record, writable buffer of the length passed.
    let full = unsafe { ep_trace_format(&record, small.as_mut_ptr(), small.len()) };
    assert!(full as usize > small.len());
    assert_eq!(small[7], 0, "NUL-terminated within the buffer");
    assert!(line(&record).starts_with("trace 42 read -104 (Connection reset"));
    // SAFETY: NULL record / NULL buffer with a length are refused.
    unsafe {
        assert_eq!(
            ep_trace_format(std::ptr::null(), small.as_mut_ptr(), 8),
            EP_ENULL
        );
        assert_eq!(ep_trace_format(&record, null_mut(), 8), EP_ENULL);
        assert_eq!(
            ep_trace_format(&record, null_mut(), 0),
            full,
            "measure only"
        );
    }
}
