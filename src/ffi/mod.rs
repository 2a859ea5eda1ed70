//! The C ABI. Each export checks its pointers, converts, calls the engine inside the panic
//! boundary, and maps the result to a C code. The doc comments here are the header's manual.

#![allow(non_camel_case_types)]

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::engine::{self, CloseReason, Error, Handler, Options, RunState, MAX_QUEUE};

mod batch;
pub use batch::*;

/// An event loop. Opaque. Create with ep_loop_new(), destroy with ep_loop_free(). A loop belongs
/// to the thread that runs it: only ep_stop() may be called from another thread or a signal handler.
pub struct ep_loop {
    _private: [u8; 0],
}

/// A registration: a listener, a connection, or any other adopted fd. 0 is never a valid id, and an
/// id is never reused, so an old id can only ever yield EP_ESTALE.
pub type ep_id = u64;

/// Why a registration ended; passed to on_close exactly once per id.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ep_close_reason {
    /// The peer closed its side: read() returned 0, or RDHUP/HUP with nothing left to read.
    EP_CLOSE_PEER_EOF = 1,
    /// ECONNRESET, ECONNABORTED or EPIPE on read or send; `err` carries it.
    EP_CLOSE_PEER_RESET = 2,
    /// Any other I/O error, or EPOLLERR; `err` carries the errno (SO_ERROR).
    EP_CLOSE_ERROR = 3,
    /// ep_close() finished: queued data was handed to the kernel and FIN sent.
    EP_CLOSE_LOCAL = 4,
    /// ep_abort(): RST sent, queued data dropped.
    EP_CLOSE_ABORT = 5,
    /// Idle or connect timeout, or a graceful close that made no progress for the linger time
    /// (`err` = ETIMEDOUT).
    EP_CLOSE_TIMEOUT = 6,
    /// ep_loop_free() ran while the registration was still open.
    EP_CLOSE_LOOP_FREED = 7,
}

/// The callbacks of a registration. Any member may be NULL. Callbacks run on the loop's thread,
/// inside ep_run()/ep_run_once()/ep_loop_free(), never nested inside another callback of the
/// same loop; they may call any ep_* function except ep_run/ep_run_once (EP_EBUSY) and
/// ep_loop_free (ignored). `user` is the registration's user pointer (see ep_set_user()).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ep_callbacks {
    /// A listener accepted `conn`. The connection inherits the listener's callbacks, user pointer,
    /// EP_EDGE/EP_HALF_CLOSE flags and watermarks; call ep_set_user() here to attach state.
    pub on_accept: Option<
        unsafe extern "C" fn(lp: *mut ep_loop, listener: ep_id, conn: ep_id, user: *mut c_void),
    >,
    /// Bytes arrived. `data` is valid only during the call (it points into the loop's single read
    /// buffer): copy what you keep. With EP_HALF_CLOSE, data == NULL and len == 0 means the peer's
    /// EOF. Without it, len is never 0.
    pub on_data: Option<
        unsafe extern "C" fn(
            lp: *mut ep_loop,
            conn: ep_id,
            data: *const u8,
            len: usize,
            user: *mut c_void,
        ),
    >,
    /// The output queue drained to its low-water mark after ep_send() had returned 1.
    pub on_writable: Option<unsafe extern "C" fn(lp: *mut ep_loop, conn: ep_id, user: *mut c_void)>,
    /// The registration ended. Called exactly once per id, after every byte the kernel would still
    /// hand over was delivered. Nothing is called for `conn` afterwards; free your state here.
    pub on_close: Option<
        unsafe extern "C" fn(
            lp: *mut ep_loop,
            conn: ep_id,
            reason: ep_close_reason,
            err: c_int,
            user: *mut c_void,
        ),
    >,
}

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
const ALL_FLAGS: u32 = EP_EDGE | EP_BORROW | EP_HALF_CLOSE | EP_REUSEPORT | EP_QUEUE | EP_UNREF;

/// Unknown or stale id (including any id after its on_close).
pub const EP_ESTALE: c_int = -4001;
/// A required pointer argument was NULL.
pub const EP_ENULL: c_int = -4002;
/// Not allowed now: ep_run()/ep_run_once() from inside a callback, or any call during ep_loop_free().
pub const EP_EBUSY: c_int = -4003;
/// The id is closing: ep_close() was already called, or its on_close is decided and will be
/// delivered at the end of the current step (ep_get_user()/ep_set_user() still work until then).
pub const EP_ECLOSING: c_int = -4004;
/// The operation does not apply to this kind of registration (e.g. ep_send() on a listener).
pub const EP_EKIND: c_int = -4005;
/// An internal panic was caught; the loop is poisoned and every further call returns this.
pub const EP_EPANIC: c_int = -4006;

/// ep_run()/ep_run_once(): nothing is registered any more.
pub const EP_RUN_EMPTY: c_int = 0;
/// ep_run_once(): the loop still has registrations.
pub const EP_RUN_MORE: c_int = 1;
/// ep_run()/ep_run_once(): returned because of ep_stop(); the stop request is consumed.
pub const EP_RUN_STOPPED: c_int = 2;

type Engine = engine::Loop<FfiHandler>;

/// What the `ep_loop *` handed to C points at. The engine is the first field, so a pointer to the
/// engine is a pointer to the whole box.
#[repr(C)]
struct LoopBox {
    engine: Engine,
    poisoned: Cell<bool>,
    /// Events of EP_QUEUE registrations during the current ep_poll() step.
    queue: std::cell::RefCell<batch::EventQueue>,
}

/// The box around an engine created by ep_loop_new (every FfiHandler's loop is one).
fn box_of(lp: &Engine) -> &LoopBox {
    // SAFETY: engines driving FfiHandlers are only created inside a LoopBox (ep_loop_new), which
    // is repr(C) with the engine as its first field, so the addresses coincide and the box lives
    // at least as long as the borrow of its engine.
    unsafe { &*(lp as *const Engine).cast::<LoopBox>() }
}

/// A timer's callback: `timer` is the id ep_timer_start() returned, `user` its user pointer.
pub type ep_timer_cb =
    Option<unsafe extern "C" fn(lp: *mut ep_loop, timer: ep_id, user: *mut c_void)>;

/// A function posted to a loop with ep_post(); runs on the loop's thread.
pub type ep_post_cb = Option<unsafe extern "C" fn(lp: *mut ep_loop, user: *mut c_void)>;

/// Counters of a loop's life (see ep_get_stats()).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ep_stats {
    /// Registrations open now: listeners, connections, other fds (not timers).
    pub open: u64,
    /// Sockets the loop is still draining after a graceful close.
    pub lingering: u64,
    /// Timers pending.
    pub timers: u64,
    /// Connections accepted since the loop was created.
    pub accepted: u64,
    /// Connections reset at accept, or accept pauses, because fds or memory ran out (EMFILE...).
    pub accept_overloads: u64,
    /// Events dropped because their registration ended earlier in the same epoll batch.
    pub stale_events: u64,
    /// Bytes delivered through on_data.
    pub bytes_in: u64,
    /// Bytes handed to the kernel.
    pub bytes_out: u64,
    /// on_close calls so far, indexed by ep_close_reason (index 0 unused).
    pub closes: [u64; 8],
}

#[derive(Clone, Copy)]
struct FfiHandler {
    cbs: ep_callbacks,
    timer: ep_timer_cb,
    user: *mut c_void,
    /// EP_QUEUE: record events for ep_poll() instead of calling `cbs`.
    queued: bool,
}

impl FfiHandler {
    fn new(cbs: ep_callbacks, user: *mut c_void) -> Self {
        FfiHandler {
            cbs,
            timer: None,
            user,
            queued: false,
        }
    }

    fn record<'a>(&self, lp: &'a Engine) -> Option<std::cell::RefMut<'a, batch::EventQueue>> {
        // The queue is only borrowed for the push: ep_poll reads it after the step.
        self.queued.then(|| box_of(lp).queue.borrow_mut())
    }
}

/// What ep_post() hands across threads: a function and an opaque word.
struct FfiPost {
    cb: unsafe extern "C" fn(lp: *mut ep_loop, user: *mut c_void),
    user: usize,
}

fn loop_ptr(lp: &Engine) -> *mut ep_loop {
    (lp as *const Engine).cast_mut().cast()
}

fn c_reason(reason: CloseReason) -> ep_close_reason {
    match reason {
        CloseReason::PeerEof => ep_close_reason::EP_CLOSE_PEER_EOF,
        CloseReason::PeerReset => ep_close_reason::EP_CLOSE_PEER_RESET,
        CloseReason::Error => ep_close_reason::EP_CLOSE_ERROR,
        CloseReason::Local => ep_close_reason::EP_CLOSE_LOCAL,
        CloseReason::Abort => ep_close_reason::EP_CLOSE_ABORT,
        CloseReason::Timeout => ep_close_reason::EP_CLOSE_TIMEOUT,
        CloseReason::LoopFreed => ep_close_reason::EP_CLOSE_LOOP_FREED,
    }
}

impl Handler for FfiHandler {
    type Posted = FfiPost;

    fn on_timer(&self, lp: &Engine, timer: u64) {
        if let Some(cb) = self.timer {
            // SAFETY: the caller passed this function pointer to ep_timer_start with this
            // signature; the loop pointer is live for the duration of the call.
            unsafe { cb(loop_ptr(lp), timer, self.user) }
        }
    }

    fn delivers_later(&self) -> bool {
        self.queued
    }

    fn run_posted(lp: &Engine, posted: FfiPost) {
        // SAFETY: the caller passed this function pointer to ep_post with this signature.
        unsafe { (posted.cb)(loop_ptr(lp), posted.user as *mut c_void) }
    }

    fn on_accept(&self, lp: &Engine, listener: u64, conn: u64) {
        if let Some(mut queue) = self.record(lp) {
            queue.push(EP_EVENT_ACCEPT, conn, self.user).listener = listener;
        } else if let Some(cb) = self.cbs.on_accept {
            // SAFETY: the caller registered this function pointer with this signature; the loop
            // pointer is live for the duration of the call.
            unsafe { cb(loop_ptr(lp), listener, conn, self.user) }
        }
    }

    fn on_data(&self, lp: &Engine, conn: u64, data: &[u8]) {
        if let Some(mut queue) = self.record(lp) {
            queue.push_data(conn, data, self.user);
        } else if let Some(cb) = self.cbs.on_data {
            let ptr = if data.is_empty() {
                std::ptr::null()
            } else {
                data.as_ptr()
            };
            // SAFETY: as above; `data` outlives the call.
            unsafe { cb(loop_ptr(lp), conn, ptr, data.len(), self.user) }
        }
    }

    fn on_writable(&self, lp: &Engine, conn: u64) {
        if let Some(mut queue) = self.record(lp) {
            queue.push(EP_EVENT_WRITABLE, conn, self.user);
        } else if let Some(cb) = self.cbs.on_writable {
            // SAFETY: as above.
            unsafe { cb(loop_ptr(lp), conn, self.user) }
        }
    }

    fn on_close(&self, lp: &Engine, conn: u64, reason: CloseReason, err: i32) {
        if let Some(mut queue) = self.record(lp) {
            let event = queue.push(EP_EVENT_CLOSE, conn, self.user);
            event.reason = reason as u32;
            event.err = err;
        } else if let Some(cb) = self.cbs.on_close {
            // SAFETY: as above.
            unsafe { cb(loop_ptr(lp), conn, c_reason(reason), err, self.user) }
        }
    }
}

/// The one mapping from engine errors to C codes.
fn code(err: Error) -> c_int {
    match err {
        Error::Stale => EP_ESTALE,
        Error::Closing => EP_ECLOSING,
        Error::Kind => EP_EKIND,
        Error::Busy => EP_EBUSY,
        Error::Null => EP_ENULL,
        Error::Os(errno) => -errno,
    }
}

fn status(result: Result<(), Error>) -> c_int {
    match result {
        Ok(()) => 0,
        Err(e) => code(e),
    }
}

/// The loop behind a C pointer, or None for NULL.
///
/// # Safety
/// `lp` must be NULL or a pointer returned by ep_loop_new() and not yet freed.
unsafe fn loop_box<'a>(lp: *mut ep_loop) -> Option<&'a LoopBox> {
    // SAFETY: per this function's contract, a non-NULL `lp` points at a live LoopBox.
    unsafe { lp.cast::<LoopBox>().as_ref() }
}

/// Runs `body` on a live, unpoisoned loop inside the panic boundary. A panic poisons the loop.
fn with_loop<T>(
    boxed: Option<&LoopBox>,
    fail: impl Fn(c_int) -> T,
    body: impl FnOnce(&Engine) -> T,
) -> T {
    let Some(boxed) = boxed else {
        return fail(EP_ENULL);
    };
    if boxed.poisoned.get() {
        return fail(EP_EPANIC);
    }
    match catch_unwind(AssertUnwindSafe(|| body(&boxed.engine))) {
        Ok(value) => value,
        Err(_) => {
            boxed.poisoned.set(true);
            fail(EP_EPANIC)
        }
    }
}

fn options(flags: u32) -> Result<Options, Error> {
    if flags & !ALL_FLAGS != 0 {
        return Err(Error::Os(libc::EINVAL));
    }
    Ok(Options {
        edge: flags & EP_EDGE != 0,
        borrow: flags & EP_BORROW != 0,
        half_close: flags & EP_HALF_CLOSE != 0,
        reuse_port: flags & EP_REUSEPORT != 0,
        unref: flags & EP_UNREF != 0,
    })
}

/// Creates an event loop (an epoll instance and a wakeup eventfd, both close-on-exec).
/// Returns NULL on failure (errno describes it). The caller owns the loop and frees it with
/// ep_loop_free(). Any thread may create a loop; it then belongs to the thread that runs it.
#[no_mangle]
pub extern "C" fn ep_loop_new() -> *mut ep_loop {
    catch_unwind(|| match Engine::new() {
        Ok(engine) => Box::into_raw(Box::new(LoopBox {
            engine,
            poisoned: Cell::new(false),
            queue: Default::default(),
        }))
        .cast(),
        Err(errno) => {
            // SAFETY: __errno_location returns the calling thread's errno slot.
            unsafe { *libc::__errno_location() = errno };
            std::ptr::null_mut()
        }
    })
    .unwrap_or(std::ptr::null_mut())
}

/// Frees a loop: every open registration gets on_close(EP_CLOSE_LOOP_FREED) (closes already decided
/// keep their own reason), lingering sockets are closed, and every owned fd is closed. No callback
/// runs after this returns. NULL is a no-op. Called from inside a callback of the same loop it is
/// ignored (call ep_stop() and free the loop after ep_run() returns).
///
/// # Safety
/// `lp` must be NULL or a pointer from ep_loop_new() not freed yet; afterwards it is dangling.
#[no_mangle]
pub unsafe extern "C" fn ep_loop_free(lp: *mut ep_loop) {
    // SAFETY: `lp` is NULL or a live loop (this function's contract).
    let Some(boxed) = (unsafe { loop_box(lp) }) else {
        return;
    };
    if boxed.engine.in_callback() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| boxed.engine.close_all()));
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `lp` came from Box::into_raw in ep_loop_new and no callback is on the stack.
        drop(unsafe { Box::from_raw(lp.cast::<LoopBox>()) })
    }));
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
    // SAFETY: `lp` is NULL or a live loop (this function's contract).
    with_loop(unsafe { loop_box(lp) }, i64::from, |engine| {
        let queued = flags & EP_QUEUE != 0;
        // SAFETY: a non-NULL `cbs` points at a valid ep_callbacks (contract); it is copied.
        let cbs = match unsafe { cbs.as_ref() } {
            Some(cbs) => *cbs,
            None if queued => NO_CALLBACKS,
            None => return i64::from(EP_ENULL),
        };
        let handler = FfiHandler {
            queued,
            ..FfiHandler::new(cbs, user)
        };
        match options(flags).and_then(|opts| make(engine, opts, handler)) {
            Ok(id) => id as i64,
            Err(e) => i64::from(code(e)),
        }
    })
}

/// The bytes of a C string argument.
///
/// # Safety
/// `ptr` NULL or a NUL-terminated string that outlives the returned slice.
unsafe fn text<'a>(ptr: *const c_char) -> Result<&'a [u8], Error> {
    if ptr.is_null() {
        return Err(Error::Null);
    }
    // SAFETY: non-NULL and NUL-terminated (contract).
    Ok(unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

fn host_str(host: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(host).map_err(|_| Error::Os(libc::EINVAL))
}

fn millis(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

/// Adopts `fd` into the loop and returns its id (> 0), or a negative error.
///
/// Works with any pollable fd: a listening socket (detected with SO_ACCEPTCONN; its accepted
/// connections inherit `cbs`, `user`, EP_EDGE/EP_HALF_CLOSE, its watermarks and idle timeout), a
/// connected stream socket, a pipe end, a tty, an eventfd or an inotify fd. The fd is made
/// non-blocking (its original mode is restored when the loop lets go of it). The loop owns and
/// eventually closes it unless `flags` has EP_BORROW. `cbs` is copied (it need not outlive the
/// call) and must not be NULL unless `flags` has EP_QUEUE. Errors: EP_ENULL, -EBADF (not an open fd), -EEXIST (already in this
/// loop), -EPERM (not pollable, e.g. a regular file), -EINVAL (unknown flags, or EP_REUSEPORT, which
/// only applies to listening). May be called from callbacks.
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
/// Returns the listener's id or a negative error (EP_ENULL, -EINVAL for an unparsable host,
/// -EADDRINUSE, ...). EP_BORROW is ignored.
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
/// (-EADDRINUSE). The loop does not unlink the file when the listener closes.
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

/// Connects to `host`:`port` (numeric IPv4/IPv6 or "localhost") without blocking and returns the
/// new connection's id at once. Success is reported as on_accept(loop, 0, conn, user) — listener 0
/// means "outbound" — after which it is an ordinary connection; failure (ECONNREFUSED, ...) as its
/// one on_close (EP_CLOSE_ERROR or EP_CLOSE_PEER_RESET with the errno), and if `timeout_ms` (0 =
/// none) passes first, as on_close(EP_CLOSE_TIMEOUT, ETIMEDOUT). ep_send() before the connection is
/// up queues the bytes. Returns the id, or a negative error when no socket could be made (EP_ENULL,
/// -EINVAL for a bad host, -EMFILE).
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
            let addr = engine::connect_addr(host_str(host?)?, port)?;
            engine.connect(&addr, millis(timeout_ms), opts, handler)
        })
    }
}

/// Like ep_connect() to the Unix stream socket at `path` (leading '@': abstract socket).
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

/// Starts a timer: `cb` runs on the loop's thread after `timeout_ms`, then every `repeat_ms` if it
/// is not 0 (at fixed rate: a late loop skips missed periods instead of bursting). Timers with
/// equal deadlines fire in the order they were started. A pending timer keeps ep_run() running.
/// Returns the timer's id (cancel it with ep_timer_cancel()) or a negative error (EP_ENULL for a
/// NULL cb). Timers get no on_close; ep_set_user() works on them. May be called from callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_timer_start(
    lp: *mut ep_loop,
    timeout_ms: u64,
    repeat_ms: u64,
    cb: ep_timer_cb,
    user: *mut c_void,
) -> i64 {
    // SAFETY: `lp` is NULL or a live loop (this function's contract).
    with_loop(unsafe { loop_box(lp) }, i64::from, |engine| {
        if cb.is_none() {
            return i64::from(EP_ENULL);
        }
        let handler = FfiHandler {
            timer: cb,
            ..FfiHandler::new(NO_CALLBACKS, user)
        };
        let repeat = (repeat_ms > 0).then(|| Duration::from_millis(repeat_ms));
        match engine.timer_start(Duration::from_millis(timeout_ms), repeat, handler) {
            Ok(id) => id as i64,
            Err(e) => i64::from(code(e)),
        }
    })
}

const NO_CALLBACKS: ep_callbacks = ep_callbacks {
    on_accept: None,
    on_data: None,
    on_writable: None,
    on_close: None,
};

/// Runs `cb(loop, user)` on the loop's thread at its next step, waking it; a pending post counts as
/// work, so ep_run()/ep_run_once() run it even if nothing is registered. Every successful post runs
/// exactly once, in posting order, even if the loop is then freed (ep_loop_free() runs what is
/// pending). Callable from any thread (not from signal handlers: it takes a lock) while the loop is
/// alive. Returns 0, EP_ENULL, EP_EBUSY (ep_loop_free() has started: this post will not run), or
/// -errno of the wakeup.
///
/// # Safety
/// `lp` must be a live loop that is not freed concurrently with this call.
#[no_mangle]
pub unsafe extern "C" fn ep_post(lp: *mut ep_loop, cb: ep_post_cb, user: *mut c_void) -> c_int {
    let Some(cb) = cb else { return EP_ENULL };
    if lp.is_null() {
        return EP_ENULL;
    }
    // SAFETY: `lp` points at a live LoopBox (contract). Only the thread-safe `remote` field is
    // referenced; the rest of the loop may be in use by its own thread.
    let remote = unsafe { &*std::ptr::addr_of!((*lp.cast::<LoopBox>()).engine.remote) };
    let posted = FfiPost {
        cb,
        user: user as usize,
    };
    catch_unwind(AssertUnwindSafe(|| status(remote.post(posted)))).unwrap_or(EP_EPANIC)
}

fn run_code(result: Result<RunState, Error>) -> c_int {
    match result {
        Ok(RunState::Empty) => EP_RUN_EMPTY,
        Ok(RunState::More) => EP_RUN_MORE,
        Ok(RunState::Stopped) => EP_RUN_STOPPED,
        Err(e) => code(e),
    }
}

/// Runs the loop until ep_stop() (returns EP_RUN_STOPPED) or until nothing is registered and no
/// socket is lingering (EP_RUN_EMPTY). Signals interrupting the wait are ignored (EINTR is retried):
/// call ep_stop() from the handler to stop. Returns EP_EBUSY from inside a callback.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_run(lp: *mut ep_loop) -> c_int {
    // SAFETY: `lp` is NULL or a live loop (this function's contract).
    with_loop(
        unsafe { loop_box(lp) },
        |c| c,
        |engine| run_code(engine.run()),
    )
}

/// Waits at most `timeout_ms` (-1 = until something happens, 0 = poll) and dispatches what
/// arrived. Returns EP_RUN_MORE, EP_RUN_EMPTY, EP_RUN_STOPPED (ep_stop() was called; consumed),
/// -EINTR when a signal interrupted the wait (nothing was dispatched; lets a host language run
/// its signal handlers), or another negative error (EP_EBUSY from inside a callback).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_run_once(lp: *mut ep_loop, timeout_ms: c_int) -> c_int {
    // SAFETY: `lp` is NULL or a live loop (this function's contract).
    with_loop(
        unsafe { loop_box(lp) },
        |c| c,
        |engine| run_code(engine.run_once(timeout_ms.max(-1))),
    )
}

/// Asks ep_run()/ep_run_once() to return (EP_RUN_STOPPED) at the end of the current step, waking
/// it if it is waiting; a request made while the loop is not running is kept for the next run.
/// The only function callable from any thread and from a signal handler (async-signal-safe: an
/// atomic store and one write(2)). Returns 0, EP_ENULL, or -errno of the wakeup write.
///
/// # Safety
/// `lp` must be NULL or a live loop that is not freed concurrently with this call.
#[no_mangle]
pub unsafe extern "C" fn ep_stop(lp: *mut ep_loop) -> c_int {
    if lp.is_null() {
        return EP_ENULL;
    }
    // SAFETY: `lp` points at a live LoopBox (contract). Only the thread-safe `remote` field is
    // referenced; the rest of the loop may be in use by its own thread.
    let remote = unsafe { &*std::ptr::addr_of!((*lp.cast::<LoopBox>()).engine.remote) };
    status(remote.stop())
}

/// Sends `len` bytes from `buf` on connection (or pipe/tty) `id`. The bytes are copied: `buf` may
/// be reused when this returns. What the kernel takes now is written at once, the rest is queued;
/// bytes leave in call order. Never blocks, never a short count. Returns 0 when the queue is at or
/// below its high-water mark, 1 when above it (wait for on_writable), or a negative error with
/// nothing queued: EP_ESTALE, EP_ENULL (NULL buf with len > 0), EP_EKIND (a listener), EP_ECLOSING
/// (after ep_close), -ESHUTDOWN (after ep_shutdown), -ENOBUFS (the queue would exceed 1 GiB),
/// -EPIPE/-ECONNRESET (the connection failed; its on_close follows). May be called from callbacks.
///
/// # Safety
/// `lp` as for ep_loop_free(); `buf` readable for `len` bytes (or NULL with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn ep_send(
    lp: *mut ep_loop,
    id: ep_id,
    buf: *const c_void,
    len: usize,
) -> c_int {
    {
        with_loop(
            // SAFETY: `lp` is NULL or a live loop (this function's contract).
            unsafe { loop_box(lp) },
            |c| c,
            |engine| {
                if len > MAX_QUEUE {
                    return -libc::ENOBUFS;
                }
                let data: &[u8] = if len == 0 {
                    &[]
                } else if buf.is_null() {
                    return EP_ENULL;
                } else {
                    // SAFETY: `buf` is readable for `len` bytes (contract), len <= 1 GiB.
                    unsafe { std::slice::from_raw_parts(buf.cast(), len) }
                };
                match engine.send(id, data) {
                    Ok(above_high) => c_int::from(above_high),
                    Err(e) => code(e),
                }
            },
        )
    }
}

/// The shape of the exports that act on one id and return a status.
///
/// # Safety
/// `lp` NULL or a live loop.
unsafe fn on_id(lp: *mut ep_loop, op: impl FnOnce(&Engine) -> Result<(), Error>) -> c_int {
    // SAFETY: `lp` is NULL or a live loop (this function's contract).
    with_loop(unsafe { loop_box(lp) }, |c| c, |engine| status(op(engine)))
}

/// Sends FIN once the queued output has been written; reading continues, and the peer's EOF
/// then ends the connection (on_close EP_CLOSE_LOCAL). Later ep_send() calls return -ESHUTDOWN.
/// Returns 0, EP_ESTALE, EP_EKIND (listener), EP_ECLOSING, -ENOTSOCK (pipe, tty).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_shutdown(lp: *mut ep_loop, id: ep_id) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { on_id(lp, |engine| engine.shutdown(id)) }
}

/// Graceful close: flushes the queue, sends FIN, then the loop alone reads and discards until
/// the peer's EOF or the linger time (so the peer gets everything even if it left request bytes
/// unread). on_close(EP_CLOSE_LOCAL) comes once the data was handed to the kernel and FIN sent,
/// always later, never from inside this call. Until then calls with the id return EP_ECLOSING
/// (ep_abort() still resets it); once on_close runs they return EP_ESTALE. If the queue makes no
/// progress for a whole linger time the connection is reset (EP_CLOSE_TIMEOUT). Closing a listener
/// stops accepting at once. Returns 0, EP_ESTALE, EP_EKIND (a timer), or EP_ECLOSING (already
/// closing).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_close(lp: *mut ep_loop, id: ep_id) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { on_id(lp, |engine| engine.close(id)) }
}

/// Aborts: RST now (SO_LINGER 0), queued data dropped; on_close(EP_CLOSE_ABORT) follows,
/// deferred. Also allowed while a graceful close is flushing. Returns 0 or EP_ESTALE.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_abort(lp: *mut ep_loop, id: ep_id) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { on_id(lp, |engine| engine.abort(id)) }
}

/// Read flow control: no on_data until ep_resume_reading() (a listener stops accepting). If the
/// connection fails or hangs up meanwhile, what remains is delivered before on_close.
/// Returns 0 or EP_ESTALE.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_pause_reading(lp: *mut ep_loop, id: ep_id) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { on_id(lp, |engine| engine.pause_reading(id, true)) }
}

/// Undoes ep_pause_reading(); data that arrived meanwhile is delivered in the next step.
/// Returns 0 or EP_ESTALE.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_resume_reading(lp: *mut ep_loop, id: ep_id) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { on_id(lp, |engine| engine.pause_reading(id, false)) }
}

/// Cancels a pending timer; its callback will not run again. Works from any callback, including
/// the timer's own. Returns 0, EP_ESTALE (already fired one-shot, or cancelled), or EP_EKIND (not a
/// timer).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_timer_cancel(lp: *mut ep_loop, id: ep_id) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { on_id(lp, |engine| engine.timer_cancel(id)) }
}

/// Ends a connection with on_close(EP_CLOSE_TIMEOUT, ETIMEDOUT) once `ms` pass without a byte read
/// or written (0 disables): the answer for peers that silently vanished. On a listener, sets the
/// timeout of the connections it accepts from now on. Returns 0, EP_ESTALE or EP_EKIND.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_idle_timeout(lp: *mut ep_loop, id: ep_id, ms: u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { on_id(lp, |engine| engine.set_idle_timeout(id, millis(ms))) }
}

/// TCP keepalive on a connection: probes after `idle_s` seconds of silence, every `interval_s`,
/// `count` times, then the connection fails (on_close EP_CLOSE_ERROR, ETIMEDOUT). `idle_s` 0
/// turns keepalive off. Returns 0, EP_ESTALE, EP_EKIND (listener or timer), -ENOTSOCK, -EINVAL.
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
    // SAFETY: forwarded contract.
    unsafe {
        on_id(lp, |engine| {
            engine.set_keepalive(id, idle_s, interval_s, count)
        })
    }
}

/// TCP_USER_TIMEOUT on a connection: sent data unacknowledged for `ms` fails the connection.
/// Returns 0, EP_ESTALE, EP_EKIND (listener or timer), -ENOTSOCK.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_user_timeout(lp: *mut ep_loop, id: ep_id, ms: u32) -> c_int {
    let ms = c_int::try_from(ms).unwrap_or(c_int::MAX);
    // SAFETY: forwarded contract.
    unsafe { on_id(lp, |engine| engine.set_user_timeout(id, ms)) }
}

/// Graceful server shutdown: closes every listener now (on_close EP_CLOSE_LOCAL), lets open
/// connections finish on their own for `grace_ms`, then closes the remaining ones gracefully
/// (ep_close; EP_UNREF registrations are left alone); those that cannot flush within the linger
/// time are reset (EP_CLOSE_TIMEOUT).
/// ep_run() then returns EP_RUN_EMPTY once nothing is left (pending timers keep it running).
/// Returns 0 or EP_EBUSY.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_drain(lp: *mut ep_loop, grace_ms: u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        on_id(lp, |engine| {
            engine.drain(Duration::from_millis(u64::from(grace_ms)))
        })
    }
}

/// Copies the loop's counters into `*out`. Returns 0 or EP_ENULL.
///
/// # Safety
/// `lp` as for ep_loop_free(); `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ep_get_stats(lp: *mut ep_loop, out: *mut ep_stats) -> c_int {
    // SAFETY: a non-NULL `out` is writable (contract).
    let Some(out) = (unsafe { out.as_mut() }) else {
        return EP_ENULL;
    };
    // SAFETY: forwarded contract.
    unsafe {
        on_id(lp, |engine| {
            let stats = engine.stats();
            *out = ep_stats {
                open: stats.open,
                lingering: stats.lingering,
                timers: stats.timers,
                accepted: stats.accepted,
                accept_overloads: stats.accept_overloads,
                stale_events: stats.stale_events,
                bytes_in: stats.bytes_in,
                bytes_out: stats.bytes_out,
                closes: stats.closes,
            };
            Ok(())
        })
    }
}

/// Sets the user pointer passed to this registration's callbacks (e.g. from on_accept). The loop
/// never dereferences or frees it. Returns 0 or EP_ESTALE.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_user(lp: *mut ep_loop, id: ep_id, user: *mut c_void) -> c_int {
    // SAFETY: `lp` is NULL or a live loop (this function's contract).
    with_loop(
        unsafe { loop_box(lp) },
        |c| c,
        |engine| status(engine.with_handler(id, |h| h.user = user)),
    )
}

/// The user pointer of a live registration, or NULL if `id` is stale (or the pointer is NULL).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_get_user(lp: *mut ep_loop, id: ep_id) -> *mut c_void {
    {
        // SAFETY: `lp` is NULL or a live loop (this function's contract).
        with_loop(
            unsafe { loop_box(lp) },
            |_| std::ptr::null_mut(),
            |engine| {
                engine
                    .with_handler(id, |h| h.user)
                    .unwrap_or(std::ptr::null_mut())
            },
        )
    }
}

/// The fd of a live registration (>= 0), for setsockopt (TCP_NODELAY, TCP_CORK), getpeername...
/// It stays owned by the loop: do not close it (use ep_close) or change its O_NONBLOCK mode.
/// Returns a negative error for a stale id.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_fd(lp: *mut ep_loop, id: ep_id) -> c_int {
    {
        with_loop(
            // SAFETY: `lp` is NULL or a live loop (this function's contract).
            unsafe { loop_box(lp) },
            |c| c,
            |engine| match engine.fd(id) {
                Ok(fd) => fd,
                Err(e) => code(e),
            },
        )
    }
}

/// The local port a socket registration is bound to (e.g. after ep_listen with port 0), or a
/// negative error (-ENOTSOCK for non-sockets, -EAFNOSUPPORT for non-IP sockets).
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_local_port(lp: *mut ep_loop, id: ep_id) -> c_int {
    {
        with_loop(
            // SAFETY: `lp` is NULL or a live loop (this function's contract).
            unsafe { loop_box(lp) },
            |c| c,
            |engine| match engine.local_port(id) {
                Ok(port) => c_int::from(port),
                Err(e) => code(e),
            },
        )
    }
}

/// Sets the flow-control watermarks of a connection (default low 16 KiB, high 64 KiB): ep_send()
/// returns 1 once the queue is above `high`, and on_writable fires when it drains to `low`. On a
/// listener, sets the defaults its future connections inherit. Returns 0, EP_ESTALE or -EINVAL
/// (low > high).
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
    // SAFETY: `lp` is NULL or a live loop (this function's contract).
    with_loop(
        unsafe { loop_box(lp) },
        |c| c,
        |engine| status(engine.set_watermarks(id, low, high)),
    )
}

/// Bounds, for the whole loop, both how long a graceful close (or a flush after the peer's EOF) may
/// go without progress before the connection is reset (EP_CLOSE_TIMEOUT), and how long the loop
/// then lingers reading the peer's leftovers after FIN (default 5000 ms). Returns 0.
///
/// # Safety
/// `lp` as for ep_loop_free().
#[no_mangle]
pub unsafe extern "C" fn ep_set_linger(lp: *mut ep_loop, ms: u32) -> c_int {
    {
        with_loop(
            // SAFETY: `lp` is NULL or a live loop (this function's contract).
            unsafe { loop_box(lp) },
            |c| c,
            |engine| {
                engine.set_linger(Duration::from_millis(u64::from(ms)));
                0
            },
        )
    }
}

/// A static description of any code these functions return (0, -errno, or EP_E*). Never NULL;
/// the string is never freed. Callable from any thread.
#[no_mangle]
pub extern "C" fn ep_strerror(code: c_int) -> *const c_char {
    let text: &'static CStr = match code {
        0 => c"Success",
        EP_ESTALE => c"Unknown or stale eploop id",
        EP_ENULL => c"NULL argument",
        EP_EBUSY => c"Not allowed now (inside a callback, or while the loop is being freed)",
        EP_ECLOSING => c"Close already in progress on this id",
        EP_EKIND => c"Operation does not apply to this kind of registration",
        EP_EPANIC => c"Internal panic caught; the loop is poisoned",
        _ => crate::sys::errno_description(code.checked_abs().unwrap_or(0))
            .unwrap_or(c"Unknown error code"),
    };
    text.as_ptr()
}

/// The event-log name of a close reason, as DESIGN's log format and the examples print it:
/// "peer_eof", "peer_reset", "error", "local", "abort", "timeout", "loop_freed"; "unknown" for
/// any other value (takes an int, so any value is safe to pass). Static string, never NULL.
#[no_mangle]
pub extern "C" fn ep_close_reason_name(reason: c_int) -> *const c_char {
    let name: &'static CStr = match reason {
        1 => c"peer_eof",
        2 => c"peer_reset",
        3 => c"error",
        4 => c"local",
        5 => c"abort",
        6 => c"timeout",
        7 => c"loop_freed",
        _ => c"unknown",
    };
    name.as_ptr()
}

/// The library's version, "MAJOR.MINOR.PATCH" (static string). Compare its major number with
/// EP_VERSION_MAJOR to check that the header and the loaded library agree.
#[no_mangle]
pub extern "C" fn ep_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(version) => version,
            Err(_) => panic!("the crate version contains NUL"),
        };
    VERSION.as_ptr()
}
