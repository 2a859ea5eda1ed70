//! The event loop in safe Rust: registrations, dispatch, the connection state machine and its
//! single close path. User code is reached through the [`Handler`] trait, so Rust tests can drive
//! the engine directly and the C ABI is one implementation of it.
//!
//! Borrowing discipline: the loop is used through `&self` (callbacks call back into it), its
//! state lives in a `RefCell`, and no borrow is ever held while a handler runs.

#![forbid(unsafe_code)]

mod dispatch;
mod slab;

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sys::{self, ev, Errno, Fd, FdKind};
pub use slab::Id;
use slab::Slab;

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
    /// Runs a posted value on the loop's thread; every posted value is run exactly once.
    fn run_posted(lp: &Loop<Self>, posted: Self::Posted);
    /// True when this handler only sees its events after the step (a binding's event queue): its
    /// reaction to data then comes with the next step, so the peer's EOF read in the same step as
    /// data is processed one step later, after that reaction (e.g. the reply) was applied.
    fn delivers_later(&self) -> bool {
        false
    }
}

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
/// Accepts per listener per wakeup.
const ACCEPT_BUDGET: usize = 64;
/// How long accepting pauses when the process is out of descriptors and memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const READ_BUF_SIZE: usize = 64 * 1024;
const WAKE_TOKEN: u64 = 0;
/// The deadline-heap id of the loop's drain deadline (0 is never a registration id).
const DRAIN_TOKEN: Id = 0;

/// The part of a loop another thread or a signal handler may touch.
pub struct Remote<P> {
    stop: AtomicBool,
    wake_fd: sys::Waker,
    /// Values posted and not run yet; None once the loop is being freed (posting is over).
    posted: Mutex<Option<Vec<P>>>,
}

impl<P> Remote<P> {
    /// Requests the loop to return from ep_run / ep_run_once. Async-signal-safe.
    pub fn stop(&self) -> Result<(), Error> {
        self.stop.store(true, Ordering::SeqCst);
        self.wake_fd.wake().map_err(Error::Os)
    }

    /// Hands `posted` to the loop's thread and wakes it. Callable from any thread. Fails with
    /// Busy once the loop is being freed: every accepted post is run exactly once.
    pub fn post(&self, posted: P) -> Result<(), Error> {
        match self.lock_posted().as_mut() {
            Some(queue) => queue.push(posted),
            None => return Err(Error::Busy),
        }
        self.wake_fd.wake().map_err(Error::Os)
    }

    fn lock_posted(&self) -> std::sync::MutexGuard<'_, Option<Vec<P>>> {
        self.posted
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes what was posted; `last` also ends posting (the loop is being freed).
    fn take_posted(&self, last: bool) -> Vec<P> {
        let mut guard = self.lock_posted();
        if last {
            guard.take().unwrap_or_default()
        } else {
            guard.as_mut().map(std::mem::take).unwrap_or_default()
        }
    }

    fn has_posted(&self) -> bool {
        self.lock_posted()
            .as_ref()
            .is_some_and(|queue| !queue.is_empty())
    }
}

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

struct Flow {
    low: usize,
    high: usize,
}

struct Listener<H> {
    fd: Fd,
    handler: H,
    opts: Options,
    adopted_status: Option<i32>,
    flow: Flow,
    idle: Option<Duration>,
    paused: bool,
    /// Accepting stopped until this instant (out of descriptors and of the reserve).
    backoff_until: Option<Instant>,
    interest: u32,
}

struct Stream<H> {
    fd: Fd,
    handler: H,
    opts: Options,
    is_socket: bool,
    readable: bool,
    writable: bool,
    /// The status flags to restore when the loop lets go of an adopted fd.
    adopted_status: Option<i32>,
    interest: u32,
    out: VecDeque<u8>,
    flow: Flow,
    above_high: bool,
    paused: bool,
    read_eof: bool,
    /// ep_shutdown asked for a FIN once the queue drains.
    shutdown_wanted: bool,
    fin_sent: bool,
    /// The user called ep_close: incoming data is discarded from now on.
    user_closed: bool,
    /// Flush the queue, then close with this reason.
    closing: Option<CloseReason>,
    deadline: Option<Instant>,
    /// Output went out since the phase deadline was armed: a live slow reader is not a dead one.
    flushed_since_deadline: bool,
    /// The connection failed (e.g. EPIPE on send); close once what can be read was delivered.
    failed: Option<Errno>,
    in_service: bool,
    /// Inactivity timeout, measured from the last byte read or written.
    idle: Option<Duration>,
    last_active: Instant,
    /// Arming order of the one idle check that counts (older ones are ignored when they fire).
    idle_seq: u64,
    /// An outbound connect is in progress: the first writability (or error) reports its outcome.
    connecting: bool,
    /// The loop step in which data was last delivered (see Handler::delivers_later).
    data_step: u64,
}

struct Timer<H> {
    handler: H,
    deadline: Instant,
    /// Arming order: equal deadlines fire in the order they were armed.
    seq: u64,
    repeat: Option<Duration>,
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
    /// on_close decided and queued: calls get Error::Closing until it is delivered.
    Closed(Closed),
}

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
#[derive(Clone, Copy, PartialEq, Eq)]
enum FdFate {
    Close,
    Reset,
    /// FIN was sent; keep reading and discarding until the peer's EOF or the linger deadline.
    Linger,
}

/// A close decided but not delivered yet. The handler travels here; the reason stays in the
/// id's `Closed` entry.
struct PendingClose<H> {
    id: Id,
    handler: H,
}

/// What an id whose close is decided holds until its on_close runs.
struct Closed {
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
    closes: VecDeque<PendingClose<H>>,
    /// Registrations that need a pass without a new kernel event (read budget spent in edge mode,
    /// resumed reading, failed send).
    service: VecDeque<Id>,
    /// Deadlines: (when, arming order, id); id 0 is the loop's drain deadline. Entries are not
    /// removed when cancelled: the registration's own state says whether one still applies.
    timers: BinaryHeap<Reverse<(Instant, u64, Id)>>,
    seq: u64,
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
}

/// One event loop. Not thread-safe: owned and run by one thread; only [`Remote`] is shared.
pub struct Loop<H: Handler> {
    pub remote: Remote<H::Posted>,
    epfd: Fd,
    state: RefCell<State<H>>,
    read_buf: RefCell<Vec<u8>>,
    events: RefCell<sys::EventBuf>,
    depth: Cell<u32>,
    freeing: Cell<bool>,
    /// Counts loop steps (run_once calls that waited).
    step: Cell<u64>,
}

impl<H: Handler> Loop<H> {
    pub fn new() -> Result<Self, Errno> {
        let epfd = sys::epoll_create()?;
        let wake_fd = sys::Waker::new()?;
        sys::epoll_add(epfd.as_raw_fd(), wake_fd.as_raw_fd(), ev::IN, WAKE_TOKEN)?;
        Ok(Loop {
            remote: Remote {
                stop: AtomicBool::new(false),
                wake_fd,
                posted: Mutex::new(Some(Vec::new())),
            },
            epfd: epfd.into_raw_fd(),
            state: RefCell::new(State {
                entries: Slab::new(),
                live: 0,
                lingering: 0,
                closes: VecDeque::new(),
                service: VecDeque::new(),
                timers: BinaryHeap::new(),
                seq: 0,
                timer_count: 0,
                unref_count: 0,
                next_step: Vec::new(),
                drain_at: None,
                stats: Stats::default(),
                linger: DEFAULT_LINGER,
                reserve_fd: None,
            }),
            read_buf: RefCell::new(vec![0; READ_BUF_SIZE]),
            events: RefCell::new(sys::EventBuf::with_capacity(256)),
            depth: Cell::new(0),
            freeing: Cell::new(false),
            step: Cell::new(0),
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

    /// Adopts any pollable descriptor. See `ep_register`.
    pub fn register(&self, fd: Fd, opts: Options, handler: H) -> Result<Id, Error> {
        self.check_open()?;
        if fd < 0 {
            return Err(Error::Os(sys::EBADF));
        }
        let status = sys::status_flags(fd)?;
        let kind = sys::fd_kind(fd)?;
        if status & libc_flags::NONBLOCK == 0 {
            sys::set_status_flags(fd, status | libc_flags::NONBLOCK)?;
        }
        if !opts.borrow {
            // Best effort: the fd may be shared with a child that needs it; failure is harmless.
            let _ = sys::set_cloexec(fd);
        }
        let result = match kind {
            FdKind::Listener => self.add_listener(fd, opts, handler, Some(status)),
            FdKind::Socket | FdKind::Other => {
                let access = status & libc_flags::ACCMODE;
                let stream = Stream::new(
                    fd,
                    handler,
                    opts,
                    kind == FdKind::Socket,
                    access != libc_flags::WRONLY,
                    access != libc_flags::RDONLY,
                    Flow {
                        low: DEFAULT_LOW_WATER,
                        high: DEFAULT_HIGH_WATER,
                    },
                    Some(status),
                );
                self.add_stream(stream)
            }
        };
        if result.is_err() && status & libc_flags::NONBLOCK == 0 {
            let _ = sys::set_status_flags(fd, status);
        }
        result
    }

    /// Binds, listens and registers a TCP listener. `host` is a numeric address or "localhost".
    pub fn listen(
        &self,
        host: &str,
        port: u16,
        backlog: i32,
        opts: Options,
        handler: H,
    ) -> Result<Id, Error> {
        let addr = sys::Addr::Ip(SocketAddr::new(parse_host(host)?, port));
        self.listen_at(&addr, backlog, opts, handler)
    }

    /// Binds, listens and registers a listener on any address (TCP or Unix).
    pub fn listen_at(
        &self,
        addr: &sys::Addr,
        backlog: i32,
        opts: Options,
        handler: H,
    ) -> Result<Id, Error> {
        self.check_open()?;
        let backlog = if backlog <= 0 {
            libc_flags::SOMAXCONN
        } else {
            backlog
        };
        // A restarted server binds at once: past connections in TIME_WAIT or a socket file left
        // by an earlier run do not block the address.
        let ip = matches!(addr, sys::Addr::Ip(_));
        if let sys::Addr::Unix(path) = addr {
            sys::unlink_stale_unix_socket(path);
        }
        let listen_opts = sys::ListenOptions {
            reuse_addr: ip,
            reuse_port: ip && opts.reuse_port,
        };
        let fd = sys::listen(addr, backlog, listen_opts)?.into_raw_fd();
        let opts = Options {
            borrow: false,
            ..opts
        };
        self.add_listener(fd, opts, handler, None)
            .inspect_err(|_| sys::close(fd))
    }

    /// Starts an outbound connection. Its outcome comes through the handler: `on_accept` with
    /// listener 0 once connected, or one `on_close` with the errno (also when the connect fails at
    /// once, or `timeout` passes first: EP_CLOSE_TIMEOUT).
    pub fn connect(
        &self,
        addr: &sys::Addr,
        timeout: Option<Duration>,
        opts: Options,
        handler: H,
    ) -> Result<Id, Error> {
        self.check_open()?;
        let (fd, failure) = match sys::connect(addr) {
            Ok(fd) => (fd, None),
            Err((Some(fd), errno)) => (fd, Some(errno)),
            Err((None, errno)) => return Err(Error::Os(errno)),
        };
        let fd = fd.into_raw_fd();
        let mut stream = Stream::new(
            fd,
            handler,
            Options {
                borrow: false,
                ..opts
            },
            true,
            true,
            true,
            Flow::default(),
            None,
        );
        stream.connecting = true;
        let id = self.add_stream(stream).inspect_err(|_| sys::close(fd))?;
        if let Some(errno) = failure {
            self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Close);
        } else if let Some(timeout) = timeout {
            self.state
                .borrow_mut()
                .arm_deadline(id, Instant::now() + timeout);
        }
        Ok(id)
    }

    fn add_listener(
        &self,
        fd: Fd,
        opts: Options,
        handler: H,
        adopted_status: Option<i32>,
    ) -> Result<Id, Error> {
        let mut st = self.state.borrow_mut();
        if st.reserve_fd.is_none() {
            st.reserve_fd = sys::open_devnull().ok();
        }
        let interest = ev::IN | if opts.edge { ev::ET } else { 0 };
        let id = st.entries.insert(Entry::Listener(Listener {
            fd,
            handler,
            opts,
            adopted_status,
            flow: Flow::default(),
            idle: None,
            paused: false,
            backoff_until: None,
            interest,
        }));
        if let Err(e) = sys::epoll_add(self.epfd, fd, interest, id) {
            st.entries.remove(id);
            return Err(Error::Os(e));
        }
        st.live += 1;
        st.unref_count += usize::from(opts.unref);
        Ok(id)
    }

    fn add_stream(&self, stream: Stream<H>) -> Result<Id, Error> {
        let mut st = self.state.borrow_mut();
        let fd = stream.fd;
        let idle = stream.idle;
        let unref = stream.opts.unref;
        let id = st.entries.insert(Entry::Stream(stream));
        let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
            unreachable!("just inserted")
        };
        let interest = s.wanted_interest();
        s.interest = interest;
        if let Err(e) = sys::epoll_add(self.epfd, fd, interest, id) {
            st.entries.remove(id);
            return Err(Error::Os(e));
        }
        st.live += 1;
        st.unref_count += usize::from(unref);
        if let Some(idle) = idle {
            st.arm_idle(id, Instant::now() + idle);
        }
        Ok(id)
    }

    /// Queues or writes `data`. Ok(true) means the queue is above its high-water mark.
    pub fn send(&self, id: Id, data: &[u8]) -> Result<bool, Error> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let s = st.stream_mut(id)?;
        if s.user_closed {
            return Err(Error::Closing);
        }
        if s.shutdown_wanted || s.fin_sent {
            return Err(Error::Os(sys::ESHUTDOWN));
        }
        if let Some(errno) = s.failed {
            return Err(Error::Os(errno));
        }
        if !s.writable {
            return Err(Error::Os(sys::EBADF));
        }
        if data.len() > MAX_QUEUE - s.out.len() {
            return Err(Error::Os(sys::ENOBUFS));
        }
        let mut rest = data;
        let mut written = 0;
        if s.out.is_empty() && !s.connecting {
            while !rest.is_empty() {
                match s.write(&[rest]) {
                    Ok(n) => {
                        rest = &rest[n..];
                        written += n;
                    }
                    Err(sys::EAGAIN) => break,
                    Err(errno) => {
                        s.fail(errno);
                        st.stats.bytes_out += written as u64;
                        st.schedule(id);
                        return Err(Error::Os(errno));
                    }
                }
            }
        }
        let above_high = if rest.is_empty() {
            s.out.len() > s.flow.high
        } else {
            s.out
                .try_reserve(rest.len())
                .map_err(|_| Error::Os(sys::ENOMEM))?;
            s.out.extend(rest);
            if s.out.len() > s.flow.high {
                s.above_high = true;
            }
            s.update_interest(self.epfd, id);
            s.out.len() > s.flow.high
        };
        if written > 0 {
            s.touch();
        }
        st.stats.bytes_out += written as u64;
        Ok(above_high)
    }

    /// FIN once the queue drains; reading goes on until the peer's EOF.
    pub fn shutdown(&self, id: Id) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        let s = st.stream_mut(id)?;
        if s.user_closed {
            return Err(Error::Closing);
        }
        if !s.is_socket {
            return Err(Error::Os(sys::ENOTSOCK));
        }
        s.shutdown_wanted = true;
        if s.out.is_empty() && !s.connecting {
            drop(st);
            self.after_flush(id);
        }
        Ok(())
    }

    /// Graceful close: flush, FIN, then the loop drains and lingers alone.
    pub fn close(&self, id: Id) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        let s = match st.target(id)? {
            Target::Listener(_) => {
                drop(st);
                self.terminate(id, CloseReason::Local, 0, FdFate::Close);
                return Ok(());
            }
            Target::Stream(s) => s,
        };
        if s.user_closed {
            return Err(Error::Closing);
        }
        s.user_closed = true;
        if s.closing.is_none() {
            s.closing = Some(CloseReason::Local);
        }
        if s.connecting && s.out.is_empty() {
            drop(st);
            self.terminate(id, CloseReason::Local, 0, FdFate::Close);
        } else if s.out.is_empty() || s.failed.is_some() {
            drop(st);
            self.after_flush(id);
        } else {
            s.update_interest(self.epfd, id);
            let deadline = Instant::now() + st.linger;
            st.arm_deadline(id, deadline);
        }
        Ok(())
    }

    /// RST now, queued data dropped.
    pub fn abort(&self, id: Id) -> Result<(), Error> {
        // The first cause wins: a connection that already failed keeps its failure's reason.
        let failed = match self.state.borrow_mut().target(id)? {
            Target::Stream(s) => s.failed,
            Target::Listener(_) => None,
        };
        match failed {
            Some(errno) => self.terminate(id, CloseReason::from_errno(errno), errno, FdFate::Reset),
            None => self.terminate(id, CloseReason::Abort, 0, FdFate::Reset),
        }
        Ok(())
    }

    pub fn pause_reading(&self, id: Id, paused: bool) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        match st.target(id)? {
            Target::Listener(l) => {
                l.paused = paused;
                l.update_interest(self.epfd, id);
            }
            Target::Stream(s) => {
                s.paused = paused;
                s.update_interest(self.epfd, id);
            }
        }
        if !paused {
            // In edge-triggered mode no new edge comes for data that arrived while paused.
            st.schedule(id);
        }
        Ok(())
    }

    pub fn set_watermarks(&self, id: Id, low: usize, high: usize) -> Result<(), Error> {
        if low > high {
            return Err(Error::Os(sys::EINVAL));
        }
        match self.state.borrow_mut().target(id)? {
            Target::Listener(l) => l.flow = Flow { low, high },
            Target::Stream(s) => {
                s.flow = Flow { low, high };
                s.above_high = s.out.len() > high;
            }
        }
        Ok(())
    }

    /// Ends a connection with EP_CLOSE_TIMEOUT after `idle` without a byte read or written
    /// (None disables). On a listener: the default of the connections it accepts from now on.
    pub fn set_idle_timeout(&self, id: Id, idle: Option<Duration>) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        match st.target(id)? {
            Target::Listener(l) => l.idle = idle,
            Target::Stream(s) => {
                s.idle = idle;
                s.last_active = Instant::now();
                if let Some(idle) = idle {
                    st.arm_idle(id, Instant::now() + idle);
                }
            }
        }
        Ok(())
    }

    /// TCP keepalive probes (idle_s 0 disables) on a connection.
    pub fn set_keepalive(
        &self,
        id: Id,
        idle_s: i32,
        interval_s: i32,
        count: i32,
    ) -> Result<(), Error> {
        let fd = self.socket_fd(id)?;
        sys::set_keepalive(fd, idle_s, interval_s, count).map_err(Error::Os)
    }

    /// TCP_USER_TIMEOUT on a connection.
    pub fn set_user_timeout(&self, id: Id, ms: i32) -> Result<(), Error> {
        let fd = self.socket_fd(id)?;
        sys::set_user_timeout(fd, ms).map_err(Error::Os)
    }

    fn socket_fd(&self, id: Id) -> Result<Fd, Error> {
        match self.state.borrow_mut().target(id)? {
            Target::Stream(s) if s.is_socket => Ok(s.fd),
            Target::Stream(_) => Err(Error::Os(sys::ENOTSOCK)),
            Target::Listener(_) => Err(Error::Kind),
        }
    }

    pub fn set_linger(&self, linger: Duration) {
        self.state.borrow_mut().linger = linger;
    }

    /// Starts a timer firing after `after`, then every `repeat` if given. Equal deadlines fire in
    /// the order the timers were armed. A pending timer keeps ep_run running.
    pub fn timer_start(
        &self,
        after: Duration,
        repeat: Option<Duration>,
        handler: H,
    ) -> Result<Id, Error> {
        self.check_open()?;
        let mut st = self.state.borrow_mut();
        let deadline = Instant::now() + after;
        let id = st.entries.insert(Entry::Timer(Timer {
            handler,
            deadline,
            seq: 0,
            repeat,
        }));
        let seq = st.arm(deadline, id);
        if let Some(Entry::Timer(t)) = st.entries.get_mut(id) {
            t.seq = seq;
        }
        st.live += 1;
        st.timer_count += 1;
        Ok(id)
    }

    /// Cancels a pending timer (also from its own callback). A fired one-shot timer is stale.
    pub fn timer_cancel(&self, id: Id) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        match st.entries.get(id) {
            Some(Entry::Timer(_)) => {}
            Some(Entry::Lingering(_) | Entry::Closed(_)) | None => return Err(Error::Stale),
            Some(_) => return Err(Error::Kind),
        }
        st.entries.remove(id);
        st.live -= 1;
        st.timer_count -= 1;
        Ok(())
    }

    /// Graceful server shutdown: every listener closes now (EP_CLOSE_LOCAL); connections may finish
    /// on their own for `grace`; then each remaining one (not `unref` ones) is closed gracefully
    /// (ep_close), and what cannot flush within the linger time is reset (EP_CLOSE_TIMEOUT).
    pub fn drain(&self, grace: Duration) -> Result<(), Error> {
        self.check_open()?;
        let ids = self.state.borrow().entries.ids();
        for id in ids {
            if matches!(
                self.state.borrow().entries.get(id),
                Some(Entry::Listener(_))
            ) {
                self.terminate(id, CloseReason::Local, 0, FdFate::Close);
            }
        }
        let mut st = self.state.borrow_mut();
        let at = Instant::now() + grace;
        st.drain_at = Some(at);
        st.arm(at, DRAIN_TOKEN);
        Ok(())
    }

    /// Closes every connection still open (the drain deadline passed).
    pub(super) fn close_remaining(&self) {
        let ids = self.state.borrow().entries.ids();
        for id in ids {
            // Unref'd helpers (a binding's signal pipe) are not the server's connections.
            let open = matches!(self.state.borrow().entries.get(id),
                Some(Entry::Stream(s)) if !s.user_closed && !s.opts.unref);
            if open {
                let _ = self.close(id);
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let st = self.state.borrow();
        Stats {
            open: (st.live - st.timer_count - st.unref_count) as u64,
            lingering: st.lingering as u64,
            timers: st.timer_count as u64,
            ..st.stats
        }
    }

    /// Runs `f` on the handler of a live registration (e.g. to change its user pointer).
    pub fn with_handler<R>(&self, id: Id, f: impl FnOnce(&mut H) -> R) -> Result<R, Error> {
        let mut st = self.state.borrow_mut();
        match st.entries.get_mut(id) {
            Some(Entry::Listener(l)) => Ok(f(&mut l.handler)),
            Some(Entry::Stream(s)) => Ok(f(&mut s.handler)),
            Some(Entry::Timer(t)) => Ok(f(&mut t.handler)),
            Some(Entry::Closed(_)) => Err(Error::Closing),
            Some(Entry::Lingering(_)) | None => Err(Error::Stale),
        }
    }

    pub fn fd(&self, id: Id) -> Result<Fd, Error> {
        match self.state.borrow_mut().target(id)? {
            Target::Listener(l) => Ok(l.fd),
            Target::Stream(s) => Ok(s.fd),
        }
    }

    pub fn local_port(&self, id: Id) -> Result<u16, Error> {
        let fd = self.fd(id)?;
        sys::local_port(fd).map_err(Error::Os)
    }

    /// Ends every registration with on_close(LoopFreed), cancels timers, runs what other threads
    /// posted, and releases every descriptor.
    pub fn close_all(&self) {
        if self.freeing.replace(true) {
            return;
        }
        self.deliver_closes();
        let ids = self.state.borrow().entries.ids();
        for id in ids {
            let kind = match self.state.borrow().entries.get(id) {
                Some(Entry::Lingering(_)) => 0,
                Some(Entry::Timer(_)) => 1,
                _ => 2,
            };
            match kind {
                0 => self.end_linger(id),
                1 => {
                    let _ = self.timer_cancel(id);
                }
                _ => {
                    // Best effort, without blocking: hand what is queued to the kernel first.
                    if let Ok(s) = self.state.borrow_mut().stream_mut(id) {
                        s.write_queue();
                    }
                    self.terminate(id, CloseReason::LoopFreed, 0, FdFate::Close);
                }
            }
        }
        self.deliver_closes();
        // Posting ends here; what was accepted until now runs now, exactly once.
        for posted in self.remote.take_posted(true) {
            self.call(|| H::run_posted(self, posted));
            self.deliver_closes();
        }
    }
}

impl<H: Handler> Drop for Loop<H> {
    fn drop(&mut self) {
        self.close_all();
        sys::close(self.epfd);
    }
}

fn parse_host(host: &str) -> Result<IpAddr, Error> {
    match host {
        "localhost" => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "" | "*" => Ok(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => host.parse().map_err(|_| Error::Os(sys::EINVAL)),
    }
}

/// Parses a host for connect: a numeric address or "localhost".
pub fn connect_addr(host: &str, port: u16) -> Result<sys::Addr, Error> {
    match host {
        "" | "*" => Err(Error::Os(sys::EINVAL)),
        _ => Ok(sys::Addr::Ip(SocketAddr::new(parse_host(host)?, port))),
    }
}

/// A Unix socket address from a path (a leading '@' names an abstract socket).
pub fn unix_addr(path: &[u8]) -> sys::Addr {
    sys::Addr::Unix(path.to_vec())
}

/// libc constants used by the engine's policy, as plain integers.
mod libc_flags {
    pub const NONBLOCK: i32 = libc::O_NONBLOCK;
    pub const ACCMODE: i32 = libc::O_ACCMODE;
    pub const RDONLY: i32 = libc::O_RDONLY;
    pub const WRONLY: i32 = libc::O_WRONLY;
    pub const SOMAXCONN: i32 = libc::SOMAXCONN;
}

/// A registration the user may act on: what ids of listeners and streams resolve to.
enum Target<'a, H> {
    Listener(&'a mut Listener<H>),
    Stream(&'a mut Stream<H>),
}

impl<H> State<H> {
    fn target(&mut self, id: Id) -> Result<Target<'_, H>, Error> {
        match self.entries.get_mut(id) {
            Some(Entry::Listener(l)) => Ok(Target::Listener(l)),
            Some(Entry::Stream(s)) => Ok(Target::Stream(s)),
            Some(Entry::Timer(_)) => Err(Error::Kind),
            Some(Entry::Closed(_)) => Err(Error::Closing),
            Some(Entry::Lingering(_)) | None => Err(Error::Stale),
        }
    }

    fn stream_mut(&mut self, id: Id) -> Result<&mut Stream<H>, Error> {
        match self.target(id)? {
            Target::Stream(s) => Ok(s),
            Target::Listener(_) => Err(Error::Kind),
        }
    }

    /// Queues a pass over `id` at the end of this step, once.
    fn schedule(&mut self, id: Id) {
        let flag = match self.entries.get_mut(id) {
            Some(Entry::Stream(s)) => &mut s.in_service,
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

    /// Adds a deadline for `id`; returns its arming order.
    fn arm(&mut self, deadline: Instant, id: Id) -> u64 {
        self.seq += 1;
        self.timers.push(Reverse((deadline, self.seq, id)));
        self.seq
    }

    /// Arms a stream's idle check, superseding any earlier one.
    fn arm_idle(&mut self, id: Id, due: Instant) {
        let seq = self.arm(due, id);
        if let Some(Entry::Stream(s)) = self.entries.get_mut(id) {
            s.idle_seq = seq;
        }
    }

    /// Sets a stream's phase deadline (connect or graceful-close flush).
    fn arm_deadline(&mut self, id: Id, deadline: Instant) {
        if let Some(Entry::Stream(s)) = self.entries.get_mut(id) {
            s.deadline = Some(deadline);
            s.flushed_since_deadline = false;
        }
        self.arm(deadline, id);
    }
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            low: DEFAULT_LOW_WATER,
            high: DEFAULT_HIGH_WATER,
        }
    }
}

impl<H> Stream<H> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        fd: Fd,
        handler: H,
        opts: Options,
        is_socket: bool,
        readable: bool,
        writable: bool,
        flow: Flow,
        adopted_status: Option<i32>,
    ) -> Self {
        Stream {
            fd,
            handler,
            opts,
            is_socket,
            readable,
            writable,
            adopted_status,
            interest: 0,
            out: VecDeque::new(),
            flow,
            above_high: false,
            paused: false,
            read_eof: false,
            shutdown_wanted: false,
            fin_sent: false,
            user_closed: false,
            closing: None,
            deadline: None,
            flushed_since_deadline: false,
            failed: None,
            in_service: false,
            idle: None,
            last_active: Instant::now(),
            idle_seq: 0,
            connecting: false,
            data_step: 0,
        }
    }

    /// The epoll interest this stream's state calls for.
    fn wanted_interest(&self) -> u32 {
        if self.connecting {
            return ev::OUT | if self.opts.edge { ev::ET } else { 0 };
        }
        // A failed stream reads on despite a pause: what remains is delivered before on_close.
        let reading = self.readable
            && !self.read_eof
            && (!self.paused || self.user_closed || self.failed.is_some());
        let mut interest = if reading { ev::IN | ev::RDHUP } else { 0 };
        if !self.out.is_empty() {
            interest |= ev::OUT;
        }
        if self.opts.edge {
            interest |= ev::ET;
        }
        interest
    }

    /// Tells epoll about a changed interest; no system call in the steady state.
    fn update_interest(&mut self, epfd: Fd, id: Id) {
        let wanted = self.wanted_interest();
        if wanted != self.interest && sys::epoll_modify(epfd, self.fd, wanted, id).is_ok() {
            self.interest = wanted;
        }
    }

    fn write(&self, bufs: &[&[u8]]) -> Result<usize, Errno> {
        if self.is_socket {
            sys::send_vectored(self.fd, bufs)
        } else {
            sys::write_vectored(self.fd, bufs)
        }
    }

    /// How the peer's EOF ends this stream: an orderly close the app asked for with ep_shutdown
    /// is the app's (Local); otherwise the peer ended it.
    fn eof_reason(&self) -> CloseReason {
        if self.shutdown_wanted || self.fin_sent {
            CloseReason::Local
        } else {
            CloseReason::PeerEof
        }
    }

    /// Records progress for the idle timeout (a clock read only when one is set).
    fn touch(&mut self) {
        if self.idle.is_some() {
            self.last_active = Instant::now();
        }
    }

    /// Writes as much of the queue as the kernel takes now; returns the bytes written.
    fn write_queue(&mut self) -> usize {
        let mut written = 0;
        while !self.out.is_empty() {
            let (head, tail) = self.out.as_slices();
            let queued = self.out.len();
            match self.write(&[head, tail]) {
                Ok(n) => {
                    self.out.drain(..n);
                    written += n;
                    if n < queued {
                        break;
                    }
                }
                Err(sys::EAGAIN) => break,
                Err(errno) => {
                    self.fail(errno);
                    break;
                }
            }
        }
        if written > 0 {
            self.touch();
            self.flushed_since_deadline = true;
        }
        written
    }

    /// Records a failed write: nothing more can be sent; close once reads are exhausted.
    fn fail(&mut self, errno: Errno) {
        self.failed.get_or_insert(errno);
        self.out = VecDeque::new();
    }
}

impl<H> Listener<H> {
    fn update_interest(&mut self, epfd: Fd, id: Id) {
        let accepting = !self.paused && self.backoff_until.is_none();
        let wanted = if accepting { ev::IN } else { 0 } | if self.opts.edge { ev::ET } else { 0 };
        if wanted != self.interest && sys::epoll_modify(epfd, self.fd, wanted, id).is_ok() {
            self.interest = wanted;
        }
    }
}
