//! The event loop in safe Rust. A newcomer's map:
//!
//! - `stream.rs` — a connection's life: its phase and every transition, each returning a decision
//!   (the state machine; unit-tested without sockets).
//! - `dispatch.rs` — the step loop: wait, run each event's pass, deliver the closes decided.
//! - `passes.rs` — a stream's read, write and connect passes, carrying out the state machine's
//!   decisions; `close.rs` — `terminate()`, the one close path, and lingering.
//! - `ops.rs` — what the caller does to a registration (send, close, abort, pause, settings);
//!   `sends.rs` — the send variants (vectored, without copy, file).
//! - `registry.rs` — making registrations (adopt, listen, connect), draining, freeing.
//! - `listener.rs` (accept policy), `timers.rs` (timers and deadlines; `deadlines.rs` orders
//!   them), `remote.rs` (the part other threads touch), `slab.rs` (ids with generations).
//! - `signals.rs` (signals through a signalfd), `resolver.rs` (connecting by host name),
//!   `datagram.rs` (UDP endpoints).
//!
//! User code is reached through the [`Handler`] trait; the C ABI is one implementation of it.
//! Borrowing discipline: the loop is used through `&self` (callbacks call back into it), its
//! state lives in a `RefCell`, and no borrow is ever held while a handler runs.

#![forbid(unsafe_code)]

mod close;
mod datagram;
mod deadlines;
mod dispatch;
mod flow;
mod listener;
mod ops;
mod outq;
mod passes;
mod registry;
mod remote;
mod resolver;
mod sends;
mod signals;
mod slab;
mod stream;
mod timers;
mod trace;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys::{self, ev, Errno, Fd};
use flow::{idle_ms, idle_of, Flow};
use listener::Listener;
pub use outq::Segment;
pub use registry::unix_addr;
pub use remote::Remote;
pub use slab::Id;
use slab::Slab;
use stream::Stream;
use timers::Timer;
pub use trace::Trace;

/// Why a registration ended. Exactly one per id, delivered through [`Handler::on_close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    PeerEof = 1,
    PeerReset = 2,
    Error = 3,
    Local = 4,
    Abort = 5,
    Timeout = 6,
    LoopFreed = 7,
}

impl CloseReason {
    /// The one place that turns an errno from read, write or SO_ERROR into a close reason.
    pub fn from_errno(errno: Errno) -> CloseReason {
        match errno {
            sys::ECONNRESET | sys::ECONNABORTED | sys::EPIPE => CloseReason::PeerReset,
            _ => CloseReason::Error,
        }
    }
}

/// User code called by the loop. Never called while another handler call of the same loop is on
/// the stack, and never for an id after its `on_close`.
pub trait Handler: Clone {
    /// A value another thread hands to the loop with [`Remote::post`].
    type Posted: Send;
    /// `listener` is 0 for a connection made with [`Loop::connect`].
    fn on_accept(&self, lp: &Loop<Self>, listener: Id, conn: Id);
    /// `data` is borrowed for the call only. An empty slice means end of input (EP_HALF_CLOSE).
    fn on_data(&self, lp: &Loop<Self>, conn: Id, data: &[u8]);
    fn on_writable(&self, lp: &Loop<Self>, conn: Id);
    fn on_close(&self, lp: &Loop<Self>, conn: Id, reason: CloseReason, err: Errno);
    fn on_timer(&self, lp: &Loop<Self>, timer: Id);
    /// `signo` was delivered to the process or the loop's thread (see [`Loop::signal_start`]).
    fn on_signal(&self, lp: &Loop<Self>, signal: Id, signo: i32);
    /// A datagram arrived on a UDP endpoint from `from`; `truncated`: it was longer than the
    /// endpoint's maximum and `data` is its beginning.
    fn on_datagram(
        &self,
        lp: &Loop<Self>,
        id: Id,
        data: &[u8],
        from: &sys::RawAddr,
        truncated: bool,
    );
    /// What the network said about earlier datagrams of a UDP endpoint (ECONNREFUSED on a
    /// connected endpoint, an unreachable host...): the endpoint stays open.
    fn on_datagram_error(&self, lp: &Loop<Self>, id: Id, err: Errno);
    /// Runs a posted value on the loop's thread; every posted value is run exactly once.
    fn run_posted(lp: &Loop<Self>, posted: Self::Posted);
    /// A trace record, while tracing is on (Loop::set_tracing).
    fn on_trace(_lp: &Loop<Self>, _id: Id, _record: Trace) {}
    /// True when this handler only sees its events after the step (a binding's event queue): its
    /// reaction to data then comes with the next step, so the peer's EOF read in the same step as
    /// data is processed one step later, after that reaction (e.g. the reply) was applied.
    fn delivers_later(&self) -> bool {
        false
    }
    /// For a handler that keeps the bytes it is given (a binding's event queue): lends storage
    /// of its own for a stream's next read, so the bytes land there without the copy out of the
    /// loop's read buffer. It calls `read` with a slice of at most [`READ_BUF_SIZE`] bytes, records
    /// a non-empty result as `on_data` would, and returns `read`'s result with the slice's length.
    /// None (the default, or too little room without moving what it holds): the loop reads into its own
    /// buffer and calls `on_data`. Asked only of handlers that deliver later.
    fn read_in_place(
        &self,
        _lp: &Loop<Self>,
        _conn: Id,
        _read: &mut Reader<'_>,
    ) -> Option<(sys::SysResult<usize>, usize)> {
        None
    }
}

/// A stream's read, as [`Handler::read_in_place`] is given it: fills the slice, returns the count.
pub type Reader<'a> = dyn FnMut(&mut [u8]) -> sys::SysResult<usize> + 'a;

/// Errors of the loop's operations, mapped to C codes by the FFI layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Unknown id, or its on_close was already decided.
    Stale,
    /// ep_close was already called on this id.
    Closing,
    /// The operation does not apply to this kind of registration.
    Kind,
    /// Not allowed from inside a callback, or while the loop is being freed.
    Busy,
    /// A required argument was missing (a NULL pointer at the C boundary).
    Null,
    /// A system error or an argument error expressed as errno.
    Os(Errno),
}

impl From<Errno> for Error {
    fn from(errno: Errno) -> Self {
        Error::Os(errno)
    }
}

/// Registration options (the C flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub edge: bool,
    pub borrow: bool,
    pub half_close: bool,
    pub reuse_port: bool,
    /// Does not keep ep_run running and is not counted as open (libuv's unref).
    pub unref: bool,
    /// Keep Nagle's algorithm on accepted and connected TCP sockets (default: TCP_NODELAY).
    pub nagle: bool,
    /// Reading pauses while the output queue is above its high-water mark and resumes once it
    /// drained to the low one (inherited by accepted connections).
    pub auto_pause: bool,
}

/// What one step of the loop leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Empty,
    More,
    Stopped,
}

/// Default flow-control watermarks (asyncio's).
pub(crate) const DEFAULT_LOW_WATER: usize = 16 * 1024;
pub(crate) const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// Hard cap on one connection's output queue: a send beyond it fails with ENOBUFS, queueing nothing.
pub(crate) const MAX_QUEUE: usize = 1 << 30;
const DEFAULT_LINGER: Duration = Duration::from_secs(5);
/// Reads per connection per wakeup, so one flooding peer cannot starve the others.
const READ_BUDGET: usize = 4;
/// The most one read takes (the loop's read buffer; a binding's in-place read gets as much room).
pub(crate) const READ_BUF_SIZE: usize = 256 * 1024;
/// The bytes a step reads for handlers that deliver later (a binding's event queue) from
/// level-triggered streams before it leaves the rest to the next step, which epoll reports again:
/// a step's bytes then stay in the CPU's cache until the binding has copied them out.
const STEP_READ_CAP: usize = 2 * READ_BUF_SIZE;
const WAKE_TOKEN: u64 = 0;
/// The epoll token of the loop's signalfd (an id with tag 0 is never a registration's).
const SIGNAL_TOKEN: u64 = 1;
/// The deadline-heap id of the loop's drain deadline (0 is never a registration id).
const DRAIN_TOKEN: Id = 0;

/// Counters of a loop's life, for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Registrations open now (listeners, connections, other fds; not timers).
    pub open: u64,
    /// Sockets the loop is still draining after a graceful close.
    pub lingering: u64,
    /// Timers pending.
    pub timers: u64,
    pub accepted: u64,
    /// Connections reset at accept, or accept pauses, because descriptors or memory ran out.
    pub accept_overloads: u64,
    /// Events dropped because their registration had ended earlier in the same batch.
    pub stale_events: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Closes delivered, indexed by the C close reason (1..=7).
    pub closes: [u64; 8],
}

struct Lingering {
    fd: Fd,
    deadline: Instant,
}

enum Entry<H> {
    Listener(Listener<H>),
    Stream(Stream<H>),
    /// Closed for the user (on_close decided); the loop alone drains it until EOF or the deadline.
    Lingering(Lingering),
    Timer(Timer<H>),
    Signal(signals::Signal<H>),
    /// A UDP endpoint (boxed: it is larger than a stream, and slots are sized for streams).
    Datagram(Box<datagram::Datagram<H>>),
    /// on_close decided and queued: calls get Error::Closing until it is delivered.
    Closed(Closed<H>),
}

// Memory per idle connection is mostly its slot: a stream with a handler of three words (the C
// binding's) fits in 136 bytes (see the bench's idle figures before changing a field).
const _: () = assert!(std::mem::size_of::<(u32, Option<Entry<[usize; 3]>>)>() <= 136);

impl<H> Entry<H> {
    /// The lingering socket this entry holds, if any.
    fn lingering(&self) -> Option<&Lingering> {
        match self {
            Entry::Lingering(l) => Some(l),
            Entry::Closed(closed) => closed.lingering.as_ref(),
            _ => None,
        }
    }
}

/// How a terminated registration's descriptor is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdFate {
    Close,
    Reset,
    /// FIN was sent; keep reading and discarding until the peer's EOF or the linger deadline.
    Linger,
}

/// Who ended a registration whose close is decided, as far as later calls on its id go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ender {
    /// The peer, an error, a timeout or the loop: the caller's calls still succeed (one channel).
    Loop,
    /// The caller's own ep_close: further calls are its mistake (Error::Closing), but ep_abort
    /// may still reset a socket that lingers.
    CallerClose,
    /// The caller's own ep_abort.
    CallerAbort,
}

/// What a registration that takes I/O calls is, as far as its callers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Stream,
    Listener,
    Datagram,
}

/// What an id whose close is decided holds until its on_close runs.
struct Closed<H> {
    handler: H,
    ender: Ender,
    /// What the registration was (a send to a listener stays Error::Kind).
    role: Role,
    reason: CloseReason,
    err: Errno,
    /// Set when the socket lingers: once on_close is delivered, the entry becomes Lingering in
    /// place, under the same (by then stale) id, with no epoll_ctl to change its token.
    lingering: Option<Lingering>,
}

struct State<H> {
    entries: Slab<Entry<H>>,
    /// Registrations whose on_close is not decided yet.
    live: usize,
    lingering: usize,
    /// Ids whose on_close is decided, in the order it was; each holds a `Closed` entry.
    closes: VecDeque<Id>,
    /// Registrations that need a pass without a new kernel event (read budget spent in edge mode,
    /// resumed reading, failed send).
    service: VecDeque<Id>,
    /// Deadlines: (when, arming order, id); id 0 is the loop's drain deadline. Entries are not
    /// removed when cancelled: the registration's own state says whether one still applies
    /// (dead ones are dropped at the head each step, and all at once when their number doubled).
    timers: deadlines::Deadlines,
    timers_prune_at: usize,
    timer_count: usize,
    /// Live registrations made with `unref`: they do not count as work.
    unref_count: usize,
    /// Streams whose peer EOF waits for the next step (Handler::delivers_later).
    next_step: Vec<Id>,
    drain_at: Option<Instant>,
    stats: Stats,
    linger: Duration,
    /// A spare descriptor released to accept-and-reset connections when the process hits EMFILE.
    reserve_fd: Option<OwnedFd>,
    /// Borrowed output segments done with, whose release runs at the next safe point (see
    /// Loop::deliver_closes): never while this state is borrowed.
    released: Vec<outq::Finished>,
}

/// One event loop. Not thread-safe: owned and run by one thread; only [`Remote`] is shared.
pub struct Loop<H: Handler> {
    pub remote: Remote<H::Posted>,
    epfd: Fd,
    state: RefCell<State<H>>,
    read_buf: RefCell<Vec<u8>>,
    events: RefCell<sys::EventBuf>,
    signals: RefCell<signals::Signals>,
    lookups: resolver::Lookups,
    depth: Cell<u32>,
    freeing: Cell<bool>,
    /// Counts loop steps (run_once calls that waited).
    step: Cell<u64>,
    /// This step's bytes read for handlers that deliver later; a read was left to the next step
    /// (STEP_READ_CAP).
    step_read: Cell<usize>,
    capped: Cell<bool>,
    /// This is a copy of the loop in a child process after fork(): letting go of it must not
    /// touch what the parent still uses (the epoll set, socket options, queued output).
    forked: Cell<bool>,
    /// The trace hook is on (see trace.rs).
    tracing: Cell<bool>,
}

impl<H: Handler> Loop<H> {
    pub fn new() -> Result<Self, Errno> {
        let epfd = sys::epoll_create()?;
        let wake_fd = sys::Waker::new()?;
        sys::epoll_add(epfd.as_raw_fd(), wake_fd.as_raw_fd(), ev::IN, WAKE_TOKEN)?;
        Ok(Loop {
            lookups: resolver::Lookups::new(wake_fd.as_raw_fd()),
            remote: Remote::new(wake_fd),
            epfd: epfd.into_raw_fd(),
            state: RefCell::new(State {
                entries: Slab::new(),
                live: 0,
                lingering: 0,
                closes: VecDeque::new(),
                service: VecDeque::new(),
                timers: deadlines::Deadlines::default(),
                timers_prune_at: timers::PRUNE_MIN,
                timer_count: 0,
                unref_count: 0,
                next_step: Vec::new(),
                drain_at: None,
                stats: Stats::default(),
                linger: DEFAULT_LINGER,
                reserve_fd: None,
                released: Vec::new(),
            }),
            read_buf: RefCell::new(vec![0; READ_BUF_SIZE]),
            events: RefCell::new(sys::EventBuf::with_capacity(256)),
            signals: RefCell::default(),
            depth: Cell::new(0),
            freeing: Cell::new(false),
            step: Cell::new(0),
            step_read: Cell::new(0),
            capped: Cell::new(false),
            forked: Cell::new(false),
            tracing: Cell::new(false),
        })
    }

    /// True while a handler of this loop is running.
    pub fn in_callback(&self) -> bool {
        self.depth.get() > 0
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.freeing.get() {
            Err(Error::Busy)
        } else {
            Ok(())
        }
    }
}

impl<H: Handler> Drop for Loop<H> {
    fn drop(&mut self) {
        self.close_all();
        self.lookups.close();
        sys::close(self.epfd);
    }
}

/// A registration the user may act on: what ids of listeners and streams resolve to.
enum Target<'a, H> {
    Listener(&'a mut Listener<H>),
    Stream(&'a mut Stream<H>),
    Datagram(&'a mut datagram::Datagram<H>),
    /// Ended by the peer, an error, a timeout or the loop, its on_close not delivered yet: the
    /// caller's calls succeed and do nothing (the departure is reported by on_close alone).
    Gone {
        role: Role,
    },
}

/// Stores a new entry, or fails with ENOMEM when the table has no slot left.
fn insert<H>(entries: &mut Slab<Entry<H>>, entry: Entry<H>) -> Result<Id, Error> {
    entries.insert(entry).map_err(|_| Error::Os(sys::ENOMEM))
}

impl<H> State<H> {
    /// Resolves an id for a call of the caller's. After the caller's own ep_close or ep_abort
    /// every call is Error::Closing (ep_abort is handled before this).
    fn target(&mut self, id: Id) -> Result<Target<'_, H>, Error> {
        match self.entries.get_mut(id) {
            Some(Entry::Listener(l)) => Ok(Target::Listener(l)),
            Some(Entry::Stream(s)) if s.closed_by_caller => Err(Error::Closing),
            Some(Entry::Stream(s)) => Ok(Target::Stream(s)),
            Some(Entry::Datagram(d)) if d.closing() => Err(Error::Closing),
            Some(Entry::Datagram(d)) => Ok(Target::Datagram(d)),
            Some(Entry::Timer(_) | Entry::Signal(_)) => Err(Error::Kind),
            Some(Entry::Closed(closed)) if closed.ender == Ender::Loop => {
                Ok(Target::Gone { role: closed.role })
            }
            Some(Entry::Closed(_)) => Err(Error::Closing),
            Some(Entry::Lingering(_)) | None => Err(Error::Stale),
        }
    }

    /// A stream for a call of the caller's; None when it is gone (see Target::Gone).
    fn stream_mut(&mut self, id: Id) -> Result<Option<&mut Stream<H>>, Error> {
        match self.target(id)? {
            Target::Stream(s) => Ok(Some(s)),
            Target::Gone { role: Role::Stream } => Ok(None),
            Target::Listener(_) | Target::Datagram(_) | Target::Gone { .. } => Err(Error::Kind),
        }
    }

    /// A UDP endpoint for a call of the caller's; None once the loop decided its close.
    fn endpoint_mut(&mut self, id: Id) -> Result<Option<&mut datagram::Datagram<H>>, Error> {
        match self.target(id)? {
            Target::Datagram(d) => Ok(Some(d)),
            Target::Gone {
                role: Role::Datagram,
            } => Ok(None),
            Target::Listener(_) | Target::Stream(_) | Target::Gone { .. } => Err(Error::Kind),
        }
    }

    /// Records that the caller's own ep_close/ep_abort ended an id whose close is decided.
    fn ended_by_caller(&mut self, id: Id, ender: Ender) {
        if let Some(Entry::Closed(closed)) = self.entries.get_mut(id) {
            closed.ender = ender;
        }
    }

    /// Queues a pass over `id` at the end of this step, once.
    fn schedule(&mut self, id: Id) {
        let flag = match self.entries.get_mut(id) {
            Some(Entry::Stream(s)) => &mut s.in_service,
            Some(Entry::Datagram(d)) => &mut d.in_service,
            Some(Entry::Listener(_)) => {
                self.service.push_back(id);
                return;
            }
            _ => return,
        };
        if !*flag {
            *flag = true;
            self.service.push_back(id);
        }
    }
}
