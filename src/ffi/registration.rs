//! Registrations: adopting an fd, listening, connecting, and the per-registration settings
//! (user pointer, watermarks, timeouts, socket options) that apply to listeners and connections.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::time::Duration;

use super::boundary::Engine;
use super::errors::{code, id_or_code, status, EP_EKIND, EP_ENULL};
use super::handler::{ep_callbacks, Callbacks, FfiHandler};
use super::{ep_id, ep_loop};
use crate::engine::{self, Error, Options};

/// Edge-triggered epoll for this registration (default: level-triggered). Callbacks behave the same.
pub const EP_EDGE: u32 = 1;
/// The loop never closes this fd: the caller keeps ownership. At the end the fd is removed from
/// epoll and its blocking mode restored; an ep_close() still sends FIN, an ep_abort() sets SO_LINGER 0.
pub const EP_BORROW: u32 = 2;
/// Deliver the peer's EOF as on_data(conn, NULL, 0) and keep the connection open for writing; end
/// it with ep_close() or ep_shutdown(). Without it, the peer's EOF flushes what is queued and ends
/// the connection with EP_CLOSE_PEER_EOF.
pub const EP_HALF_CLOSE: u32 = 4;
/// ep_listen()/ep_listen_unix(): set SO_REUSEPORT, so several loops (one per thread) can listen on
/// the same port and the kernel spreads connections across them.
pub const EP_REUSEPORT: u32 = 8;
/// Record this registration's events (and those of the connections it accepts) for ep_poll()
/// instead of calling callbacks; `cbs` may then be NULL. For language bindings: one crossing per
/// loop step instead of one per event.
pub const EP_QUEUE: u32 = 16;
/// This registration does not keep ep_run() running and is not counted in ep_stats.open (like
/// libuv's uv_unref): for a helper fd, such as a binding's signal pipe, that should not by itself
/// keep the loop alive. Its events are delivered as usual.
pub const EP_UNREF: u32 = 32;
/// Keep Nagle's algorithm on the TCP connections this listener accepts, or on this ep_connect()
/// connection. By default eploop sets TCP_NODELAY on them, as asyncio, uvloop and Go do: a
/// request/response server's small replies then leave at once instead of waiting up to 40 ms for
/// the peer's delayed ACK. Bulk senders that write in small pieces may prefer EP_NAGLE (or
/// TCP_CORK through ep_fd()).
pub const EP_NAGLE: u32 = 64;
/// Backpressure without code: reading pauses while the connection's send queue is above its
/// high-water mark and resumes once it drained to the low-water mark (when on_writable fires), so
/// a request/response server facing a pipelining client that never reads holds at most about one
/// read's worth of replies. On a listener, inherited by the connections it accepts. Independent
/// of ep_pause_reading(): reading resumes only when neither pauses it.
pub const EP_AUTO_PAUSE: u32 = 128;
const ALL_FLAGS: u32 = EP_EDGE
    | EP_BORROW
    | EP_HALF_CLOSE
    | EP_REUSEPORT
    | EP_QUEUE
    | EP_UNREF
    | EP_NAGLE
    | EP_AUTO_PAUSE;

pub(super) fn options(flags: u32) -> Result<Options, Error> {
    if flags & !ALL_FLAGS != 0 {
        return Err(Error::Os(libc::EINVAL));
    }
    Ok(Options {
        edge: flags & EP_EDGE != 0,
        borrow: flags & EP_BORROW != 0,
        half_close: flags & EP_HALF_CLOSE != 0,
        reuse_port: flags & EP_REUSEPORT != 0,
        unref: flags & EP_UNREF != 0,
        nagle: flags & EP_NAGLE != 0,
        auto_pause: flags & EP_AUTO_PAUSE != 0,
    })
}

/// The shape of every export that creates a registration: loop and NULL checks, flags, handler,
/// panic boundary, id or error code.
///
/// # Safety
/// `lp` NULL or a live loop; `cbs` NULL or pointing at a valid ep_callbacks.
unsafe fn create(
    lp: *mut ep_loop,
    flags: u32,
    cbs: *const ep_callbacks,
    user: *mut c_void,
    make: impl FnOnce(&Engine, Options, FfiHandler) -> Result<u64, Error>,
) -> i64 {
    with_loop!(lp, |boxed| {
        let queued = flags & EP_QUEUE != 0;
        // SAFETY: a non-NULL `cbs` points at a valid ep_callbacks (contract); it is copied.
        // (EP_QUEUE: events are recorded, `cbs` is not used and may be NULL)
        let cbs = match unsafe { cbs.as_ref() } {
            _ if queued => Callbacks::Queued,
            Some(cbs) => Callbacks::stream(*cbs),
            None => return i64::from(EP_ENULL),
        };
        let handler = FfiHandler::new(cbs, user);
        id_or_code(options(flags).and_then(|opts| make(&boxed.engine, opts, handler)))
    })
}

/// The bytes of a C string argument.
///
/// # Safety
/// `ptr` NULL or a NUL-terminated string that outlives the returned slice.
pub(super) unsafe fn text<'a>(ptr: *const c_char) -> Result<&'a [u8], Error> {
    if ptr.is_null() {
        return Err(Error::Null);
    }
    // SAFETY: non-NULL and NUL-terminated (contract).
    Ok(unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

pub(super) fn host_str(host: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(host).map_err(|_| Error::Os(libc::EINVAL))
}

pub(super) fn millis(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

/// Adopts `fd` into the loop and returns its id (> 0), or a negative error.
///
/// Works with any pollable fd: a listening socket (detected with SO_ACCEPTCONN; its accepted
/// connections inherit `cbs`, `user`, EP_EDGE/EP_HALF_CLOSE, its watermarks and idle timeout), a
/// connected stream socket, a pipe end, a tty, an eventfd or an inotify fd. The fd is made
/// non-blocking (its original mode is restored when the loop lets go of it). The loop owns and
/// eventually closes it unless `flags` has EP_BORROW. `cbs` is copied (it need not outlive the
/// call) and must not be NULL unless `flags` has EP_QUEUE. A refused fd is left exactly as it came
/// (blocking mode and close-on-exec flag untouched). Errors: EP_ENULL (NULL cbs), -EBADF (not an
/// open fd), -EEXIST (already in this loop), -EPERM (not pollable: a regular file, a directory,
/// /dev/null), -EINVAL (unknown flags, or EP_REUSEPORT, which only applies to listening), -ENOMEM,
/// -ENOSPC (the epoll watch limit), EP_EBUSY (during ep_loop_free()), or a loop error (EP_ENULL,
/// EP_ETHREAD, EP_EFORK, EP_EPANIC). May be called from callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free(); `cbs` NULL or pointing at a valid ep_callbacks.
#[no_mangle]
pub unsafe extern "C" fn ep_register(
    lp: *mut ep_loop,
    fd: c_int,
    flags: u32,
    cbs: *const ep_callbacks,
    user: *mut c_void,
) -> i64 {
    if flags & EP_REUSEPORT != 0 {
        return -i64::from(libc::EINVAL);
    }
    // SAFETY: forwarded contract.
    unsafe {
        create(lp, flags, cbs, user, |engine, opts, handler| {
            engine.register(fd, opts, handler)
        })
    }
}

/// Creates a TCP listening socket (non-blocking, close-on-exec, SO_REUSEADDR; SO_REUSEPORT with
/// EP_REUSEPORT) on `host`:`port` and registers it. `host` is a numeric IPv4 or IPv6 address
/// ("127.0.0.1", "::1", "0.0.0.0", "::") or "localhost"; "" means every address (IPv6 and IPv4).
/// `port` 0 picks a free port: read it with ep_local_port(). `backlog` <= 0 means SOMAXCONN.
/// Returns the listener's id, or EP_ENULL (NULL host or cbs), -EINVAL (an unparsable host, unknown
/// flags), -EADDRINUSE, -EACCES (a privileged port), -EADDRNOTAVAIL (an address not on this
/// host), -EMFILE/-ENFILE, EP_EBUSY (during ep_loop_free()), or a loop error (EP_ENULL,
/// EP_ETHREAD, EP_EFORK, EP_EPANIC). EP_BORROW is ignored.
///
/// # Safety
/// `lp` as for ep_loop_free(); `host` NULL or NUL-terminated; `cbs` as for ep_register().
#[no_mangle]
pub unsafe extern "C" fn ep_listen(
    lp: *mut ep_loop,
    host: *const c_char,
    port: u16,
    backlog: c_int,
    flags: u32,
    cbs: *const ep_callbacks,
    user: *mut c_void,
) -> i64 {
    // SAFETY: `host` is NULL or NUL-terminated (contract).
    let host = unsafe { text(host) };
    // SAFETY: forwarded contract.
    unsafe {
        create(lp, flags, cbs, user, |engine, opts, handler| {
            engine.listen(host_str(host?)?, port, backlog, opts, handler)
        })
    }
}

/// Like ep_listen() on a Unix stream socket at `path` (a leading '@' names an abstract socket). An
/// existing socket file at `path` is replaced, as asyncio does — even one a live server still
/// listens on, so pick paths your program owns; any other existing file is an error
/// (-EADDRINUSE). The loop does not unlink the file when the listener closes. Errors as for
/// ep_listen(), plus -ENAMETOOLONG (a path longer than sun_path) and -ENOENT (a missing directory).
///
/// # Safety
/// `lp` as for ep_loop_free(); `path` NULL or NUL-terminated; `cbs` as for ep_register().
#[no_mangle]
pub unsafe extern "C" fn ep_listen_unix(
    lp: *mut ep_loop,
    path: *const c_char,
    backlog: c_int,
    flags: u32,
    cbs: *const ep_callbacks,
    user: *mut c_void,
) -> i64 {
    // SAFETY: `path` is NULL or NUL-terminated (contract).
    let path = unsafe { text(path) };
    // SAFETY: forwarded contract.
    unsafe {
        create(lp, flags, cbs, user, |engine, opts, handler| {
            engine.listen_at(&engine::unix_addr(path?), backlog, opts, handler)
        })
    }
}

/// Connects to `host`:`port` without blocking and returns the new connection's id at once.
/// `host` is a numeric IPv4/IPv6 address (connected at once, as before) or a host name
/// ("localhost", "db.example.com"), which a resolver thread looks up with getaddrinfo (so
/// /etc/hosts, DNS... as the system is configured) while the loop runs on; the addresses are then
/// tried in the order getaddrinfo gives them, each one after the previous was refused or
/// unreachable. Success is reported as on_accept(loop, 0, conn, user) — listener 0 means
/// "outbound" — after which it is an ordinary connection; failure as its one on_close: EP_CLOSE_ERROR
/// or EP_CLOSE_PEER_RESET with the errno of the last address tried (ECONNREFUSED, ...), or
/// EP_CLOSE_ERROR with -(EP_EAI_BASE + EAI_*) when the name does not resolve (e.g. 4102 =
/// -EP_EAI_NONAME; ep_strerror(-err) names it); and if `timeout_ms` (0 = none) passes first —
/// resolution included — as on_close(EP_CLOSE_TIMEOUT, ETIMEDOUT). While the name resolves the id
/// behaves as a connecting socket: ep_send() queues, ep_close() and ep_abort() end it (one
/// on_close, the lookup's answer is ignored); only its socket does not exist yet, so ep_fd()
/// gives a placeholder descriptor and socket options belong in on_accept. ep_loop_free() never
/// waits for a lookup. Returns the id, or a negative error when no connection could be started:
/// EP_ENULL (NULL host or cbs), -EINVAL (an empty host, one with a ':' that is not an IPv6
/// address, unknown flags), -EMFILE/-ENFILE,
/// EP_EBUSY (during ep_loop_free()), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free(); `host` NULL or NUL-terminated; `cbs` as for ep_register().
#[no_mangle]
pub unsafe extern "C" fn ep_connect(
    lp: *mut ep_loop,
    host: *const c_char,
    port: u16,
    timeout_ms: u32,
    flags: u32,
    cbs: *const ep_callbacks,
    user: *mut c_void,
) -> i64 {
    // SAFETY: `host` is NULL or NUL-terminated (contract).
    let host = unsafe { text(host) };
    // SAFETY: forwarded contract.
    unsafe {
        create(lp, flags, cbs, user, |engine, opts, handler| {
            engine.connect_host(host_str(host?)?, port, millis(timeout_ms), opts, handler)
        })
    }
}

/// Like ep_connect() to the Unix stream socket at `path` (leading '@': abstract socket). A missing
/// socket file or a refused connection is the connection's on_close, like ECONNREFUSED for TCP.
/// Errors as for ep_connect(), plus -ENAMETOOLONG.
///
/// # Safety
/// `lp` as for ep_loop_free(); `path` NULL or NUL-terminated; `cbs` as for ep_register().
#[no_mangle]
pub unsafe extern "C" fn ep_connect_unix(
    lp: *mut ep_loop,
    path: *const c_char,
    timeout_ms: u32,
    flags: u32,
    cbs: *const ep_callbacks,
    user: *mut c_void,
) -> i64 {
    // SAFETY: `path` is NULL or NUL-terminated (contract).
    let path = unsafe { text(path) };
    // SAFETY: forwarded contract.
    unsafe {
        create(lp, flags, cbs, user, |engine, opts, handler| {
            engine.connect(&engine::unix_addr(path?), millis(timeout_ms), opts, handler)
        })
    }
}

/// Sets the user pointer passed to this registration's callbacks (e.g. from on_accept). Works
/// until the id's on_close has run, also after its close was decided (after ep_close() or
/// ep_abort()); the loop never dereferences or frees it. Returns 0, EP_ESTALE, or a
/// loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_user(lp: *mut ep_loop, id: ep_id, user: *mut c_void) -> c_int {
    with_loop!(lp, |boxed| status(
        boxed.engine.with_handler(id, |h| h.user = user)
    ))
}

/// Gives a registration its own callbacks and user pointer, in one call: typically from on_accept,
/// so that a connection stops sharing its listener's callbacks (the listener keeps its own, and
/// its on_close then only ever sees the listener). `cbs` is copied. Takes effect from the next
/// callback on; works until the id's on_close has run. Returns 0, EP_ENULL (NULL cbs), EP_ESTALE,
/// EP_EKIND (a timer, a signal handle, a UDP endpoint, or an EP_QUEUE registration, whose events
/// go to ep_poll()), or a loop error
/// (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free(); `cbs` NULL or pointing at a valid ep_callbacks.
#[no_mangle]
pub unsafe extern "C" fn ep_set_callbacks(
    lp: *mut ep_loop,
    id: ep_id,
    cbs: *const ep_callbacks,
    user: *mut c_void,
) -> c_int {
    // SAFETY: a non-NULL `cbs` points at a valid ep_callbacks (contract); it is copied.
    let Some(cbs) = (unsafe { cbs.as_ref() }).copied() else {
        return EP_ENULL;
    };
    with_loop!(lp, |boxed| {
        let set = boxed.engine.with_handler(id, |h| {
            if !matches!(h.cbs, Callbacks::Stream(_)) {
                return false;
            }
            h.cbs = Callbacks::stream(cbs);
            h.user = user;
            true
        });
        match set {
            Ok(true) => 0,
            Ok(false) => EP_EKIND,
            Err(e) => code(e),
        }
    })
}

/// The user pointer of a registration whose on_close has not run yet; NULL if `id` is stale, on
/// a loop error, or if the pointer is NULL.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_get_user(lp: *mut ep_loop, id: ep_id) -> *mut c_void {
    with_loop!(lp, |boxed| boxed
        .engine
        .with_handler(id, |h| h.user)
        .unwrap_or(std::ptr::null_mut()))
}

/// The fd of a live registration (>= 0), for setsockopt (TCP_NODELAY, TCP_CORK), getpeername...
/// It stays owned by the loop: do not close it (use ep_close) or change its O_NONBLOCK mode.
/// Returns EP_ESTALE, EP_EKIND (a timer), EP_ECLOSING (its close is decided: the fd may be gone
/// already), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_fd(lp: *mut ep_loop, id: ep_id) -> c_int {
    with_loop!(lp, |boxed| boxed.engine.fd(id).unwrap_or_else(code))
}

/// The local port a socket registration is bound to (e.g. after ep_listen with port 0), or
/// EP_ESTALE, EP_EKIND (a timer), EP_ECLOSING (as for ep_fd()), -ENOTSOCK (not a socket),
/// -EAFNOSUPPORT (not an IP socket), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_local_port(lp: *mut ep_loop, id: ep_id) -> c_int {
    with_loop!(lp, |boxed| boxed
        .engine
        .local_port(id)
        .map_or_else(code, c_int::from))
}

/// Sets the flow-control watermarks of a connection (default low 16 KiB, high 64 KiB): ep_send()
/// returns 1 once the queue is above `high`, and on_writable fires when it drains to `low`. On a
/// listener, sets the defaults its future connections inherit. Returns 0 (also for a connection
/// whose peer is gone), EP_ESTALE, EP_EKIND (a timer), EP_ECLOSING (after your own
/// ep_close/ep_abort), -EINVAL (low > high), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK,
/// EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_watermarks(
    lp: *mut ep_loop,
    id: ep_id,
    low: usize,
    high: usize,
) -> c_int {
    with_loop!(lp, |boxed| status(
        boxed.engine.set_watermarks(id, low, high)
    ))
}

/// Ends a connection with on_close(EP_CLOSE_TIMEOUT, ETIMEDOUT) once `ms` pass without a byte read
/// or written (0 disables): the answer for peers that silently vanished. On a listener, sets the
/// timeout of the connections it accepts from now on. Returns 0 (also for a connection whose peer
/// is gone), EP_ESTALE, EP_EKIND (a timer), EP_ECLOSING (after your own ep_close/ep_abort), or a
/// loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_idle_timeout(lp: *mut ep_loop, id: ep_id, ms: u32) -> c_int {
    with_loop!(lp, |boxed| status(
        boxed.engine.set_idle_timeout(id, millis(ms))
    ))
}

/// TCP keepalive on a connection: probes after `idle_s` seconds of silence, every `interval_s`,
/// `count` times, then the connection fails (on_close EP_CLOSE_ERROR, ETIMEDOUT). `idle_s` 0
/// turns keepalive off. Returns 0 (also for a connection whose peer is gone), EP_ESTALE, EP_EKIND
/// (listener or timer), EP_ECLOSING (after your own ep_close/ep_abort), -ENOTSOCK (a pipe, a tty),
/// -EINVAL (out-of-range values), -EOPNOTSUPP (a Unix socket), or a loop error (EP_ENULL,
/// EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_keepalive(
    lp: *mut ep_loop,
    id: ep_id,
    idle_s: c_int,
    interval_s: c_int,
    count: c_int,
) -> c_int {
    with_loop!(lp, |boxed| status(
        boxed.engine.set_keepalive(id, idle_s, interval_s, count)
    ))
}

/// TCP_USER_TIMEOUT on a connection: sent data unacknowledged for `ms` fails the connection
/// (on_close EP_CLOSE_ERROR, ETIMEDOUT). Returns as ep_set_keepalive().
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_user_timeout(lp: *mut ep_loop, id: ep_id, ms: u32) -> c_int {
    let ms = c_int::try_from(ms).unwrap_or(c_int::MAX);
    with_loop!(lp, |boxed| status(boxed.engine.set_user_timeout(id, ms)))
}
