//! The one boundary every export that takes a loop goes through: the NULL check, the fork and
//! thread checks, the poison flag and the panic fallback, chosen per return type. Exports use it
//! through [`with_loop!`], which also holds the one dereference of the C loop pointer.

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

use super::batch::EventQueue;
use super::ep_loop;
use super::errors::{EP_EFORK, EP_ENULL, EP_EPANIC, EP_ETHREAD};
use super::handler::FfiHandler;
use super::trace::ep_trace_cb;
use crate::engine;

pub(super) type Engine = engine::Loop<FfiHandler>;

/// What the `ep_loop *` handed to C points at. The engine is the first field, so a pointer to the
/// engine is a pointer to the whole box.
#[repr(C)]
pub(super) struct LoopBox {
    pub(super) engine: Engine,
    poisoned: Cell<bool>,
    /// Events of EP_QUEUE registrations not handed out by ep_poll() yet.
    pub(super) queue: RefCell<EventQueue>,
    /// The token of the thread inside a call on this loop (0: none). Calls from any other thread
    /// are refused while it is set: a loop is used by one thread at a time, never raced.
    holder: AtomicUsize,
    /// The process's fork generation when the loop was made: a different one means this is a
    /// child's inherited copy.
    fork_generation: u64,
    /// The trace hook (ep_set_trace) and its user pointer.
    pub(super) trace: Cell<(ep_trace_cb, *mut c_void)>,
}

impl LoopBox {
    pub(super) fn new(engine: Engine) -> Self {
        watch_forks();
        let boxed = LoopBox {
            engine,
            poisoned: Cell::new(false),
            queue: RefCell::default(),
            holder: AtomicUsize::new(0),
            fork_generation: FORK_GENERATION.load(Ordering::Relaxed),
            trace: Cell::new((None, std::ptr::null_mut())),
        };
        boxed.trace_from_environment();
        boxed
    }

    /// True in a child process that inherited this loop through fork().
    pub(super) fn inherited(&self) -> bool {
        self.fork_generation != FORK_GENERATION.load(Ordering::Relaxed)
    }

    /// The box around an engine created by ep_loop_new (every FfiHandler's loop is one).
    pub(super) fn of(engine: &Engine) -> &LoopBox {
        // SAFETY: engines driving FfiHandlers are only created inside a LoopBox (ep_loop_new),
        // which is repr(C) with the engine as its first field, so the addresses coincide and the
        // box lives at least as long as the borrow of its engine.
        unsafe { &*(engine as *const Engine).cast::<LoopBox>() }
    }

    pub(super) fn as_ptr(engine: &Engine) -> *mut ep_loop {
        (engine as *const Engine).cast_mut().cast()
    }
}

/// The loop behind a C pointer, or None for NULL.
///
/// # Safety
/// `lp` must be NULL or a pointer returned by ep_loop_new() and not yet freed.
pub(super) unsafe fn loop_box<'a>(lp: *mut ep_loop) -> Option<&'a LoopBox> {
    // SAFETY: per this function's contract, a non-NULL `lp` points at a live LoopBox.
    unsafe { lp.cast::<LoopBox>().as_ref() }
}

/// The value an export returns when the boundary refuses the call or catches a panic.
pub(super) trait Fallback {
    fn fallback(code: c_int) -> Self;
}

impl Fallback for c_int {
    fn fallback(code: c_int) -> Self {
        code
    }
}

impl Fallback for i64 {
    fn fallback(code: c_int) -> Self {
        i64::from(code)
    }
}

impl<T> Fallback for *mut T {
    fn fallback(_code: c_int) -> Self {
        std::ptr::null_mut()
    }
}

impl Fallback for () {
    fn fallback(_code: c_int) {}
}

/// Runs `body` on a live, unpoisoned loop of this process, from the one thread using it, inside
/// the panic boundary. A panic poisons the loop. Inlined into every export: it is on the path of
/// every ep_send.
#[inline(always)]
pub(super) fn enter<T: Fallback>(boxed: Option<&LoopBox>, body: impl FnOnce(&LoopBox) -> T) -> T {
    let Some(boxed) = boxed else {
        return T::fallback(EP_ENULL);
    };
    if boxed.inherited() {
        return T::fallback(EP_EFORK);
    }
    let Some(_hold) = Hold::take(boxed) else {
        return T::fallback(EP_ETHREAD);
    };
    if boxed.poisoned.get() {
        return T::fallback(EP_EPANIC);
    }
    match catch_unwind(AssertUnwindSafe(|| body(boxed))) {
        Ok(value) => value,
        Err(_) => {
            boxed.poisoned.set(true);
            T::fallback(EP_EPANIC)
        }
    }
}

/// Runs `body` inside the panic boundary alone, for the exports that hold no loop.
pub(super) fn guard<T: Fallback>(body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| T::fallback(EP_EPANIC))
}

/// `with_loop!(lp, |boxed| body)`: resolves the export's `lp` argument and runs `body` with the
/// `&LoopBox` through [`enter`]. The one place that turns the C loop pointer into a reference.
macro_rules! with_loop {
    ($lp:expr, |$boxed:ident| $body:expr) => {{
        let lp: *mut $crate::ffi::ep_loop = $lp;
        // SAFETY: `lp` is NULL or a live loop from ep_loop_new(): the `# Safety` contract of
        // every export that takes a loop.
        let boxed = unsafe { $crate::ffi::boundary::loop_box(lp) };
        $crate::ffi::boundary::enter(boxed, |$boxed| $body)
    }};
}

/// A thread's claim on a loop for the length of one call (None inside: a callback's nested call
/// on the thread that already holds the loop).
struct Hold<'a>(Option<&'a AtomicUsize>);

impl<'a> Hold<'a> {
    #[inline(always)]
    fn take(boxed: &'a LoopBox) -> Option<Self> {
        let me = thread_token();
        // A call from a callback finds its own thread holding the loop: no atomic write then.
        if boxed.holder.load(Ordering::Relaxed) == me {
            return Some(Hold(None));
        }
        match boxed
            .holder
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => Some(Hold(Some(&boxed.holder))),
            Err(_) => None,
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Some(holder) = self.0 {
            holder.store(0, Ordering::Release);
        }
    }
}

/// A non-zero number unique to the calling thread among the live threads of the process.
fn thread_token() -> usize {
    crate::sys::thread_token()
}

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static WATCH_FORKS: Once = Once::new();

extern "C" fn forked_child() {
    // Async-signal-safe: one atomic add in the child right after fork().
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn watch_forks() {
    WATCH_FORKS.call_once(|| crate::sys::on_fork_in_child(forked_child));
}
