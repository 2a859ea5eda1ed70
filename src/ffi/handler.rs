//! The callbacks of a registration and how the engine reaches them: `ep_callbacks`, the close
//! reasons, and the engine's `Handler` implemented by calling C (or by recording the event for
//! ep_poll(), for EP_QUEUE registrations).

use std::cell::RefMut;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Mutex, PoisonError};

use super::batch::{
    EventQueue, EP_EVENT_ACCEPT, EP_EVENT_CLOSE, EP_EVENT_DATAGRAM_ERROR, EP_EVENT_WRITABLE,
};
use super::boundary::{Engine, LoopBox};
use super::{ep_id, ep_loop};
use crate::engine::{CloseReason, Handler, Reader, Trace, READ_BUF_SIZE};
use crate::sys::RawAddr;
use crate::sys::SysResult;

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

/// Every close reason, in numbering order.
const REASONS: [ep_close_reason; 7] = [
    ep_close_reason::EP_CLOSE_PEER_EOF,
    ep_close_reason::EP_CLOSE_PEER_RESET,
    ep_close_reason::EP_CLOSE_ERROR,
    ep_close_reason::EP_CLOSE_LOCAL,
    ep_close_reason::EP_CLOSE_ABORT,
    ep_close_reason::EP_CLOSE_TIMEOUT,
    ep_close_reason::EP_CLOSE_LOOP_FREED,
];

/// The one mapping from the engine's close reasons to the C numbering.
impl From<CloseReason> for ep_close_reason {
    fn from(reason: CloseReason) -> Self {
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
}

impl ep_close_reason {
    fn name(self) -> &'static CStr {
        match self {
            ep_close_reason::EP_CLOSE_PEER_EOF => c"peer_eof",
            ep_close_reason::EP_CLOSE_PEER_RESET => c"peer_reset",
            ep_close_reason::EP_CLOSE_ERROR => c"error",
            ep_close_reason::EP_CLOSE_LOCAL => c"local",
            ep_close_reason::EP_CLOSE_ABORT => c"abort",
            ep_close_reason::EP_CLOSE_TIMEOUT => c"timeout",
            ep_close_reason::EP_CLOSE_LOOP_FREED => c"loop_freed",
        }
    }
}

/// The event-log name of a close reason, as the examples print it: "peer_eof", "peer_reset",
/// "error", "local", "abort", "timeout", "loop_freed"; "unknown" for any other value (takes an
/// int, so any value is safe to pass). Static string, never NULL. Callable from any thread.
#[no_mangle]
pub extern "C" fn ep_close_reason_name(reason: c_int) -> *const c_char {
    REASONS
        .iter()
        .find(|known| **known as c_int == reason)
        .map_or(c"unknown", |known| known.name())
        .as_ptr()
}

/// The callbacks of a registration. Any member may be NULL. Callbacks run on the loop's thread,
/// inside ep_run()/ep_run_once()/ep_poll()/ep_loop_free(), never nested inside another callback
/// of the same loop; they may call any ep_* function except ep_run/ep_run_once/ep_poll
/// (EP_EBUSY) and ep_loop_free (ignored). `user` is the registration's user pointer (see
/// ep_set_user()).
///
/// ABI: this struct's layout is fixed within a major version (see the README's ABI policy).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ep_callbacks {
    /// A listener accepted `conn`. The connection inherits the listener's callbacks, user pointer,
    /// EP_EDGE/EP_HALF_CLOSE/EP_NAGLE flags and watermarks; call ep_set_user() here to attach
    /// state, or ep_set_callbacks() to give the connection callbacks of its own (the listener's
    /// on_close then only ever sees the listener). For ep_connect(), `listener` is 0: the
    /// outbound connection is up.
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
    /// hand over was delivered. This is the only way the peer's departure is reported. Nothing is
    /// called for `conn` afterwards; free your state here.
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

/// The callbacks of a UDP endpoint (ep_udp_bind()). Any member may be NULL; they run like the
/// callbacks of `ep_callbacks` (same thread, never nested, same calls allowed).
///
/// ABI: this struct's layout is fixed within a major version (see the README's ABI policy).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ep_datagram_callbacks {
    /// A datagram arrived from `from` (`fromlen` bytes: a struct sockaddr_in or sockaddr_in6;
    /// on an IPv6 endpoint an IPv4 sender appears as an IPv4-mapped IPv6 address). `data` and
    /// `from` are valid only during the call; pass `from` to ep_sendto() to answer. `flags` has
    /// EP_DGRAM_TRUNCATED when the datagram was longer than the endpoint's maximum
    /// (EP_UDP_MAX_DATAGRAM) and `data` is only its beginning. A datagram may be empty (len 0).
    pub on_datagram: Option<
        unsafe extern "C" fn(
            lp: *mut ep_loop,
            id: ep_id,
            data: *const u8,
            len: usize,
            from: *const libc::sockaddr,
            fromlen: libc::socklen_t,
            flags: u32,
            user: *mut c_void,
        ),
    >,
    /// The send queue drained to its low-water mark after ep_sendto() had returned 1.
    pub on_writable: Option<unsafe extern "C" fn(lp: *mut ep_loop, id: ep_id, user: *mut c_void)>,
    /// What the network said about earlier datagrams; the endpoint stays open: ECONNREFUSED
    /// (ICMP port unreachable) on a connected endpoint, EHOSTUNREACH, ENETUNREACH, a datagram the
    /// network refused after it was queued. Without this callback such errors are ignored.
    pub on_error:
        Option<unsafe extern "C" fn(lp: *mut ep_loop, id: ep_id, err: c_int, user: *mut c_void)>,
    /// The endpoint ended: EP_CLOSE_LOCAL (ep_close() or ep_drain(), once the queue was sent),
    /// EP_CLOSE_TIMEOUT (that queue made no progress for the linger time), EP_CLOSE_ABORT
    /// (ep_abort()), EP_CLOSE_LOOP_FREED, or EP_CLOSE_ERROR with the errno of a fatal socket
    /// error. A peer never ends an endpoint. Exactly once per id; nothing follows it.
    pub on_close: Option<
        unsafe extern "C" fn(
            lp: *mut ep_loop,
            id: ep_id,
            reason: ep_close_reason,
            err: c_int,
            user: *mut c_void,
        ),
    >,
}

/// ep_datagram_callbacks.on_datagram `flags`: the datagram was longer than the endpoint's
/// maximum and was cut to it.
pub const EP_DGRAM_TRUNCATED: u32 = 1;

/// A timer's callback: `timer` is the id ep_timer_start() returned, `user` its user pointer.
pub type ep_timer_cb =
    Option<unsafe extern "C" fn(lp: *mut ep_loop, timer: ep_id, user: *mut c_void)>;

/// A signal handle's callback: `signal` is the id ep_signal_start() returned, `signo` the signal
/// delivered, `user` the handle's user pointer. Runs on the loop's thread like any callback.
pub type ep_signal_cb =
    Option<unsafe extern "C" fn(lp: *mut ep_loop, signal: ep_id, signo: c_int, user: *mut c_void)>;

/// A function posted to a loop with ep_post(); runs on the loop's thread.
pub type ep_post_cb = Option<unsafe extern "C" fn(lp: *mut ep_loop, user: *mut c_void)>;

/// The callbacks of one registration, by kind. A connection's handler is part of the memory
/// per idle connection, so the sets of four are shared (see `interned`): two words in all.
#[derive(Clone, Copy)]
pub(super) enum Callbacks {
    /// EP_QUEUE: events are recorded for ep_poll(), never called back.
    Queued,
    Stream(&'static ep_callbacks),
    Datagram(&'static ep_datagram_callbacks),
    Timer(ep_timer_cb),
    Signal(ep_signal_cb),
}

impl Callbacks {
    pub(super) fn stream(cbs: ep_callbacks) -> Self {
        static SETS: Mutex<Vec<&'static ep_callbacks>> = Mutex::new(Vec::new());
        Callbacks::Stream(interned(&SETS, cbs))
    }

    pub(super) fn datagram(cbs: ep_datagram_callbacks) -> Self {
        static SETS: Mutex<Vec<&'static ep_datagram_callbacks>> = Mutex::new(Vec::new());
        Callbacks::Datagram(interned(&SETS, cbs))
    }
}

/// A callback set as the addresses of its four functions (0: none), to recognise a set seen
/// before. (Two sets whose functions share addresses run the same code either way.)
trait Addresses {
    fn addresses(&self) -> [usize; 4];
}

impl Addresses for ep_callbacks {
    fn addresses(&self) -> [usize; 4] {
        [
            self.on_accept.map_or(0, |f| f as usize),
            self.on_data.map_or(0, |f| f as usize),
            self.on_writable.map_or(0, |f| f as usize),
            self.on_close.map_or(0, |f| f as usize),
        ]
    }
}

impl Addresses for ep_datagram_callbacks {
    fn addresses(&self) -> [usize; 4] {
        [
            self.on_datagram.map_or(0, |f| f as usize),
            self.on_writable.map_or(0, |f| f as usize),
            self.on_error.map_or(0, |f| f as usize),
            self.on_close.map_or(0, |f| f as usize),
        ]
    }
}

/// The process's one copy of a callback set. A program has a handful of distinct sets (they are
/// made of its functions' addresses), however many registrations use them, so the copies made
/// here are few and kept for the life of the process.
fn interned<T: Addresses>(sets: &Mutex<Vec<&'static T>>, cbs: T) -> &'static T {
    // (a poisoned lock still holds a consistent list: pushing is its only change)
    let mut sets = sets.lock().unwrap_or_else(PoisonError::into_inner);
    let key = cbs.addresses();
    if let Some(&found) = sets.iter().find(|known| known.addresses() == key) {
        return found;
    }
    let copy: &'static T = Box::leak(Box::new(cbs));
    sets.push(copy);
    copy
}

#[derive(Clone, Copy)]
pub(super) struct FfiHandler {
    pub(super) cbs: Callbacks,
    pub(super) user: *mut c_void,
}

// Three words: the engine's slot size assertion (engine/mod.rs) assumes it.
const _: () = assert!(std::mem::size_of::<FfiHandler>() == 3 * std::mem::size_of::<usize>());

impl FfiHandler {
    pub(super) fn new(cbs: Callbacks, user: *mut c_void) -> Self {
        FfiHandler { cbs, user }
    }

    /// EP_QUEUE: events are recorded for ep_poll() instead of calling back.
    fn queued(&self) -> bool {
        matches!(self.cbs, Callbacks::Queued)
    }

    fn record<'a>(&self, lp: &'a Engine) -> Option<RefMut<'a, EventQueue>> {
        // The queue is only borrowed for the push: ep_poll reads it after the step.
        self.queued().then(|| LoopBox::of(lp).queue.borrow_mut())
    }

    fn stream(&self) -> Option<&ep_callbacks> {
        match &self.cbs {
            Callbacks::Stream(cbs) => Some(cbs),
            _ => None,
        }
    }

    fn datagram(&self) -> Option<&ep_datagram_callbacks> {
        match &self.cbs {
            Callbacks::Datagram(cbs) => Some(cbs),
            _ => None,
        }
    }
}

/// ep_event.queued: the connection's queued output, saturated to 32 bits.
pub(super) fn queued_of(lp: &Engine, conn: u64) -> u32 {
    u32::try_from(lp.queued(conn)).unwrap_or(u32::MAX)
}

/// What ep_post() hands across threads: a function and an opaque word.
pub(super) struct FfiPost {
    pub(super) cb: unsafe extern "C" fn(lp: *mut ep_loop, user: *mut c_void),
    pub(super) user: usize,
}

impl Handler for FfiHandler {
    type Posted = FfiPost;

    fn on_timer(&self, lp: &Engine, timer: u64) {
        if let Callbacks::Timer(Some(cb)) = self.cbs {
            // SAFETY: the caller passed this function pointer to ep_timer_start with this
            // signature; the loop pointer is live for the duration of the call.
            unsafe { cb(LoopBox::as_ptr(lp), timer, self.user) }
        }
    }

    fn on_trace(lp: &Engine, id: u64, record: Trace) {
        LoopBox::of(lp).emit_trace(LoopBox::as_ptr(lp), id, record);
    }

    fn on_signal(&self, lp: &Engine, signal: u64, signo: i32) {
        if let Callbacks::Signal(Some(cb)) = self.cbs {
            // SAFETY: the caller passed this function pointer to ep_signal_start with this
            // signature; the loop pointer is live for the duration of the call.
            unsafe { cb(LoopBox::as_ptr(lp), signal, signo, self.user) }
        }
    }

    fn delivers_later(&self) -> bool {
        self.queued()
    }

    fn run_posted(lp: &Engine, posted: FfiPost) {
        // SAFETY: the caller passed this function pointer to ep_post with this signature.
        unsafe { (posted.cb)(LoopBox::as_ptr(lp), posted.user as *mut c_void) }
    }

    fn on_accept(&self, lp: &Engine, listener: u64, conn: u64) {
        if let Some(mut queue) = self.record(lp) {
            // The fd rides along (a binding writing to it directly need not ask ep_fd), and the
            // queue (an ep_connect's early sends).
            let fd = lp.fd(conn).unwrap_or(-1);
            let queued = queued_of(lp, conn);
            let event = queue.push(EP_EVENT_ACCEPT, conn, self.user);
            (event.listener, event.err, event.queued) = (listener, fd, queued);
        } else if let Some(cb) = self.stream().and_then(|c| c.on_accept) {
            // SAFETY: the caller registered this function pointer with this signature; the loop
            // pointer is live for the duration of the call.
            unsafe { cb(LoopBox::as_ptr(lp), listener, conn, self.user) }
        }
    }

    fn on_data(&self, lp: &Engine, conn: u64, data: &[u8]) {
        if let Some(mut queue) = self.record(lp) {
            queue.push_data(conn, data, self.user).queued = queued_of(lp, conn);
        } else if let Some(cb) = self.stream().and_then(|c| c.on_data) {
            let ptr = if data.is_empty() {
                std::ptr::null()
            } else {
                data.as_ptr()
            };
            // SAFETY: as in on_accept; `data` outlives the call.
            unsafe { cb(LoopBox::as_ptr(lp), conn, ptr, data.len(), self.user) }
        }
    }

    fn read_in_place(
        &self,
        lp: &Engine,
        conn: u64,
        read: &mut Reader<'_>,
    ) -> Option<(SysResult<usize>, usize)> {
        let mut queue = self.record(lp)?;
        queue.read_data(conn, self.user, READ_BUF_SIZE, read, || queued_of(lp, conn))
    }

    fn on_writable(&self, lp: &Engine, conn: u64) {
        if let Some(mut queue) = self.record(lp) {
            queue.push(EP_EVENT_WRITABLE, conn, self.user).queued = queued_of(lp, conn);
        } else if let Some(cb) = match &self.cbs {
            Callbacks::Stream(c) => c.on_writable,
            Callbacks::Datagram(c) => c.on_writable,
            _ => None,
        } {
            // SAFETY: as in on_accept.
            unsafe { cb(LoopBox::as_ptr(lp), conn, self.user) }
        }
    }

    fn on_close(&self, lp: &Engine, conn: u64, reason: CloseReason, err: i32) {
        let reason = ep_close_reason::from(reason);
        if let Some(mut queue) = self.record(lp) {
            let event = queue.push(EP_EVENT_CLOSE, conn, self.user);
            event.reason = reason as u32;
            event.err = err;
        } else if let Some(cb) = match &self.cbs {
            Callbacks::Stream(c) => c.on_close,
            Callbacks::Datagram(c) => c.on_close,
            _ => None,
        } {
            // SAFETY: as in on_accept.
            unsafe { cb(LoopBox::as_ptr(lp), conn, reason, err, self.user) }
        }
    }

    fn on_datagram(&self, lp: &Engine, id: u64, data: &[u8], from: &RawAddr, truncated: bool) {
        let flags = if truncated { EP_DGRAM_TRUNCATED } else { 0 };
        if let Some(mut queue) = self.record(lp) {
            queue.push_datagram(id, data, from.as_bytes(), flags, self.user);
        } else if let Some(cb) = self.datagram().and_then(|c| c.on_datagram) {
            // SAFETY: as in on_accept; `data` and `from` outlive the call.
            unsafe {
                cb(
                    LoopBox::as_ptr(lp),
                    id,
                    data.as_ptr(),
                    data.len(),
                    from.as_ptr(),
                    from.len(),
                    flags,
                    self.user,
                )
            }
        }
    }

    fn on_datagram_error(&self, lp: &Engine, id: u64, err: i32) {
        if let Some(mut queue) = self.record(lp) {
            queue.push(EP_EVENT_DATAGRAM_ERROR, id, self.user).err = err;
        } else if let Some(cb) = self.datagram().and_then(|c| c.on_error) {
            // SAFETY: as in on_accept.
            unsafe { cb(LoopBox::as_ptr(lp), id, err, self.user) }
        }
    }
}
