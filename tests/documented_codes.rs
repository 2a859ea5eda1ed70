//! Every code a function returns is listed in its own documentation in include/eploop.h. The
//! test provokes the library's codes (a NULL loop, stale, foreign, wrong-kind and closing ids,
//! another thread, bad arguments) on every function that takes them, collects what comes back,
//! and checks each negative code against the doc comment above that function's prototype.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_void;
use std::ptr::{null, null_mut};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Each function's doc comment, by name, with the docs of the functions it refers to ("as for
/// ep_x()", "Returns as ep_x()") appended.
fn header_docs() -> BTreeMap<String, String> {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/eploop.h"))
        .expect("include/eploop.h");
    let mut docs = BTreeMap::new();
    let mut rest = header.as_str();
    while let Some(start) = rest.find("/**") {
        let Some(len) = rest[start..].find("*/") else {
            break;
        };
        let doc = &rest[start..start + len];
        let after = &rest[start + len + 2..];
        let decl = after.split(';').next().unwrap_or("");
        if let Some(name) = decl
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .find(|word| word.starts_with("ep_") && decl.contains(&format!("{word}(")))
        {
            if decl.trim_start().starts_with(|c: char| c.is_alphabetic())
                && !decl.contains("typedef")
            {
                docs.insert(name.to_string(), doc.replace("\n *", " "));
            }
        }
        rest = after;
    }
    let plain = docs.clone();
    for (name, doc) in docs.iter_mut() {
        for (other, other_doc) in &plain {
            let cited = doc.contains(&format!("as {other}()"))
                || doc.contains(&format!("as for {other}()"));
            if other != name && cited {
                doc.push(' ');
                doc.push_str(other_doc);
            }
        }
    }
    docs
}

/// The names a doc may use for `code`.
fn names_of(code: i32) -> Vec<String> {
    let mut names = match code {
        EP_ESTALE => vec!["EP_ESTALE".to_string()],
        EP_ENULL => vec!["EP_ENULL".to_string()],
        EP_EBUSY => vec!["EP_EBUSY".to_string()],
        EP_ECLOSING => vec!["EP_ECLOSING".to_string()],
        EP_EKIND => vec!["EP_EKIND".to_string()],
        EP_EPANIC => vec!["EP_EPANIC".to_string()],
        EP_ETHREAD => vec!["EP_ETHREAD".to_string()],
        EP_EFORK => vec!["EP_EFORK".to_string()],
        _ => {
            extern "C" {
                // glibc >= 2.32: the errno's name ("EINVAL"), or NULL.
                fn strerrorname_np(errnum: i32) -> *const std::ffi::c_char;
            }
            // SAFETY: strerrorname_np takes any int and returns NULL or a static string.
            let name = unsafe { strerrorname_np(-code) };
            assert!(
                !name.is_null(),
                "code {code} is neither an EP_E* code nor -errno"
            );
            // SAFETY: a non-NULL result is a static NUL-terminated string.
            let name = unsafe { std::ffi::CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned();
            vec![format!("-{name}"), "-errno".to_string()]
        }
    };
    // "a loop error" names these four at once.
    if [EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC].contains(&code) {
        names.push("a loop error".to_string());
    }
    names
}

unsafe extern "C" fn tick(_lp: *mut ep_loop, _t: u64, _u: *mut c_void) {}
unsafe extern "C" fn post(_lp: *mut ep_loop, _u: *mut c_void) {}
unsafe extern "C" fn on_signal(_lp: *mut ep_loop, _id: u64, _signo: i32, _u: *mut c_void) {}

static NOTHING: ep_callbacks = ep_callbacks {
    on_accept: None,
    on_data: None,
    on_writable: None,
    on_close: None,
};

static NO_DATAGRAM: ep_datagram_callbacks = ep_datagram_callbacks {
    on_datagram: None,
    on_writable: None,
    on_error: None,
    on_close: None,
};

/// Every function taking an id, applied to `id`, as (name, code).
fn id_calls(lp: *mut ep_loop, id: u64) -> Vec<(&'static str, i64)> {
    let byte = [0u8; 1];
    let iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut c_void,
        iov_len: 1,
    };
    // SAFETY: every argument is valid or deliberately wrong in the way under test; buffers
    // outlive the calls.
    unsafe {
        vec![
            ("ep_send", ep_send(lp, id, byte.as_ptr().cast(), 1).into()),
            ("ep_sendv", ep_sendv(lp, id, &iov, 1).into()),
            ("ep_shutdown", ep_shutdown(lp, id).into()),
            ("ep_pause_reading", ep_pause_reading(lp, id).into()),
            ("ep_resume_reading", ep_resume_reading(lp, id).into()),
            ("ep_set_watermarks", ep_set_watermarks(lp, id, 1, 2).into()),
            (
                "ep_set_idle_timeout",
                ep_set_idle_timeout(lp, id, 1000).into(),
            ),
            ("ep_set_keepalive", ep_set_keepalive(lp, id, 1, 1, 1).into()),
            (
                "ep_set_user_timeout",
                ep_set_user_timeout(lp, id, 1000).into(),
            ),
            ("ep_set_user", ep_set_user(lp, id, null_mut()).into()),
            (
                "ep_set_callbacks",
                ep_set_callbacks(lp, id, &NOTHING, null_mut()).into(),
            ),
            ("ep_fd", ep_fd(lp, id).into()),
            ("ep_local_port", ep_local_port(lp, id).into()),
            ("ep_timer_cancel", ep_timer_cancel(lp, id).into()),
            ("ep_signal_stop", ep_signal_stop(lp, id).into()),
            (
                "ep_sendto",
                ep_sendto(lp, id, byte.as_ptr().cast(), 1, null(), 0).into(),
            ),
            (
                "ep_udp_connect",
                ep_udp_connect(lp, id, c"127.0.0.1".as_ptr(), 9).into(),
            ),
            (
                "ep_udp_join",
                ep_udp_join(lp, id, c"239.1.2.3".as_ptr(), null()).into(),
            ),
            (
                "ep_udp_leave",
                ep_udp_leave(lp, id, c"239.1.2.3".as_ptr(), null()).into(),
            ),
            (
                "ep_udp_set_option",
                ep_udp_set_option(lp, id, EP_UDP_BROADCAST, 1).into(),
            ),
            ("ep_close", ep_close(lp, id).into()),
            ("ep_abort", ep_abort(lp, id).into()),
        ]
    }
}

/// Every function taking only a loop (and harmless arguments), as (name, code).
fn loop_calls(lp: *mut ep_loop) -> Vec<(&'static str, i64)> {
    let mut stats = ep_stats::default();
    let mut out = std::mem::MaybeUninit::<ep_poll_result>::uninit();
    // SAFETY: as in id_calls.
    unsafe {
        vec![
            ("ep_run_once", ep_run_once(lp, 0).into()),
            ("ep_drain", ep_drain(lp, 0).into()),
            ("ep_set_linger", ep_set_linger(lp, 100).into()),
            ("ep_loop_fd", ep_loop_fd(lp).into()),
            ("ep_next_timeout", ep_next_timeout(lp).into()),
            (
                "ep_get_stats",
                ep_get_stats(lp, &mut stats, size_of::<ep_stats>()).into(),
            ),
            ("ep_set_trace", ep_set_trace(lp, None, null_mut()).into()),
            ("ep_register", ep_register(lp, -1, 0, &NOTHING, null_mut())),
            (
                "ep_listen",
                ep_listen(lp, c"no-such-host".as_ptr(), 0, 0, 0, &NOTHING, null_mut()),
            ),
            (
                "ep_listen_unix",
                ep_listen_unix(lp, null(), 0, 0, &NOTHING, null_mut()),
            ),
            (
                "ep_connect",
                ep_connect(lp, c"".as_ptr(), 1, 0, 0, &NOTHING, null_mut()),
            ),
            (
                "ep_connect_unix",
                ep_connect_unix(lp, null(), 0, 0, &NOTHING, null_mut()),
            ),
            ("ep_timer_start", ep_timer_start(lp, 1, 0, None, null_mut())),
            (
                "ep_udp_bind",
                ep_udp_bind(lp, c"127.0.0.1".as_ptr(), 0, 0, null(), null_mut()),
            ),
            (
                "ep_signal_start",
                ep_signal_start(lp, libc::SIGKILL, 0, Some(on_signal), null_mut()),
            ),
            ("ep_post", ep_post(lp, Some(post), null_mut()).into()),
            ("ep_stop", ep_stop(lp).into()),
            ("ep_poll", ep_poll(lp, 0, null(), out.as_mut_ptr()).into()),
        ]
    }
}

fn check(
    observed: &[(&'static str, i64)],
    docs: &BTreeMap<String, String>,
    seen: &mut BTreeSet<(String, i64)>,
) {
    for &(name, code) in observed {
        if code >= 0 {
            continue;
        }
        let code = i32::try_from(code).expect("codes fit an int");
        let doc = docs
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no doc comment in the header"));
        assert!(
            names_of(code).iter().any(|n| doc.contains(n.as_str())),
            "{name} returned {code} ({}) but its documentation does not list it:\n{doc}",
            strerror(code)
        );
        seen.insert((name.to_string(), code.into()));
    }
}

#[test]
fn every_returned_code_is_documented_at_its_function() {
    let docs = header_docs();
    assert!(
        docs.len() >= 40,
        "the header parser found {} documented functions",
        docs.len()
    );
    let mut seen = BTreeSet::new();

    // A NULL loop.
    check(&id_calls(null_mut(), 1), &docs, &mut seen);
    check(&loop_calls(null_mut()), &docs, &mut seen);

    let lp = OwnedLoop::new();
    // SAFETY: live loop, static callbacks and strings.
    let listener =
        unsafe { ep_listen(lp.0, c"127.0.0.1".as_ptr(), 0, 0, 0, &NOTHING, null_mut()) } as u64;
    // SAFETY: live loop, valid callback.
    let timer = unsafe { ep_timer_start(lp.0, 60_000, 0, Some(tick), null_mut()) } as u64;
    let other = OwnedLoop::new();
    // SAFETY: as above.
    let foreign = unsafe {
        ep_listen(
            other.0,
            c"127.0.0.1".as_ptr(),
            0,
            0,
            0,
            &NOTHING,
            null_mut(),
        )
    } as u64;
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    use std::os::fd::IntoRawFd;
    // SAFETY: live loop; the loop owns the fd from here on.
    let stream = unsafe { ep_register(lp.0, a.into_raw_fd(), 0, &NOTHING, null_mut()) } as u64;

    // Stale, foreign, wrong-kind ids, bad arguments on the loop-level calls.
    check(&id_calls(lp.0, 12345), &docs, &mut seen);
    check(&id_calls(lp.0, foreign), &docs, &mut seen);
    check(&id_calls(lp.0, timer), &docs, &mut seen);
    check(&id_calls(lp.0, listener), &docs, &mut seen);
    check(&loop_calls(lp.0), &docs, &mut seen);
    // A UDP endpoint: stream calls are the wrong kind; after its ep_close, closing.
    // SAFETY: live loop, static callbacks and strings.
    let endpoint =
        unsafe { ep_udp_bind(lp.0, c"127.0.0.1".as_ptr(), 0, 0, &NO_DATAGRAM, null_mut()) } as u64;
    check(&id_calls(lp.0, endpoint), &docs, &mut seen);
    // SAFETY: live loop, a live endpoint (id_calls closed and aborted the first one).
    let endpoint =
        unsafe { ep_udp_bind(lp.0, c"127.0.0.1".as_ptr(), 0, 0, &NO_DATAGRAM, null_mut()) } as u64;
    // SAFETY: as above.
    assert_eq!(unsafe { ep_close(lp.0, endpoint) }, 0);
    check(&id_calls(lp.0, endpoint), &docs, &mut seen);
    // After the caller's own ep_close: closing (and after ep_abort).
    // SAFETY: live loop and id.
    assert_eq!(unsafe { ep_shutdown(lp.0, stream) }, 0);
    // SAFETY: as above.
    check(
        &[(
            "ep_send",
            unsafe { ep_send(lp.0, stream, [1u8].as_ptr().cast(), 1) }.into(),
        )],
        &docs,
        &mut seen,
    );
    // SAFETY: as above.
    assert_eq!(unsafe { ep_close(lp.0, stream) }, 0);
    check(&id_calls(lp.0, stream), &docs, &mut seen);
    drop(b);

    // Another thread while the loop runs (a pending timer keeps it running).
    // SAFETY: live loop, valid callback and strings.
    let (_keep, listener) = unsafe {
        (
            ep_timer_start(lp.0, 60_000, 0, Some(tick), null_mut()),
            ep_listen(lp.0, c"127.0.0.1".as_ptr(), 0, 0, 0, &NOTHING, null_mut()) as u64,
        )
    };
    let shared = SendLoop(lp.0);
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let shared = shared;
        thread::sleep(Duration::from_millis(100));
        let mut observed = id_calls(shared.0, listener);
        // (ep_poll here, not loop_calls' own: that one comes after its ep_stop, which may have
        // ended the loop's run by then)
        let mut out = std::mem::MaybeUninit::<ep_poll_result>::uninit();
        // SAFETY: a live loop; `out` is writable.
        let poll = unsafe { ep_poll(shared.0, 0, null(), out.as_mut_ptr()) };
        observed.push(("ep_poll", poll.into()));
        observed.extend(
            loop_calls(shared.0)
                .into_iter()
                .filter(|(n, _)| !matches!(*n, "ep_stop" | "ep_post" | "ep_poll")),
        );
        tx.send(observed).unwrap();
        // SAFETY: ep_stop may be called from any thread.
        unsafe { ep_stop(shared.0) };
    });
    run_bounded(lp.0, LIMIT);
    worker.join().unwrap();
    let from_thread = rx.recv().unwrap();
    assert!(
        from_thread
            .iter()
            .all(|(_, code)| *code == i64::from(EP_ETHREAD)),
        "{from_thread:?}"
    );
    check(&from_thread, &docs, &mut seen);

    // The test really provoked the library's codes on many functions.
    let codes: BTreeSet<i64> = seen.iter().map(|(_, code)| *code).collect();
    for code in [EP_ENULL, EP_ESTALE, EP_EKIND, EP_ECLOSING, EP_ETHREAD] {
        assert!(
            codes.contains(&i64::from(code)),
            "never provoked {code}: {seen:?}"
        );
    }
    assert!(
        seen.len() > 100,
        "only {} (function, code) pairs provoked",
        seen.len()
    );
}

/// A loop pointer handed to another thread on purpose (its calls must be refused).
#[derive(Clone, Copy)]
struct SendLoop(*mut ep_loop);
// SAFETY: used only to show that calls from another thread are refused.
unsafe impl Send for SendLoop {}
