//! Connecting by host name without blocking the loop: the name is resolved by a small pool of
//! threads (getaddrinfo), the addresses come back through the loop's wakeup eventfd, and they are
//! tried in order. Meanwhile the connection exists (its id is returned at once) as a connecting
//! stream whose descriptor is a placeholder that never becomes ready, so ep_close, ep_abort,
//! ep_send and the connect timeout work on it exactly as on a connecting socket.
//!
//! The threads never touch a loop: they hold only the loop's mailbox, which the loop closes
//! (under its lock) before its eventfd goes, so a lookup still running when the loop is freed
//! finds the mailbox closed and drops its answer.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::stream::{Access, Phase, Stream};
use super::{CloseReason, Entry, Error, FdFate, Flow, Handler, Id, Loop, Options};
use std::os::fd::IntoRawFd;

use crate::sys::{self, Errno, Fd};

/// Lookups running at once in the process; more wait in the queue.
const MAX_WORKERS: usize = 4;

/// What a lookup hands back: the addresses in order, or the error (see `sys::resolve`).
type Answer = Result<Vec<SocketAddr>, Errno>;

/// The part of a loop the resolver threads hold.
struct Mailbox {
    inbox: Mutex<Inbox>,
}

struct Inbox {
    /// The loop's wakeup eventfd; None once the loop is being freed (answers are dropped).
    wake_fd: Option<Fd>,
    answers: Vec<(Id, Answer)>,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn deliver(&self, id: Id, answer: Answer) {
        let mut inbox = self.lock();
        // Signalled under the lock: the loop cannot close the eventfd in between.
        if let Some(fd) = inbox.wake_fd {
            inbox.answers.push((id, answer));
            let _ = sys::eventfd_signal(fd);
        }
    }
}

/// The connections of a loop that are resolving or have addresses left to try.
pub(super) struct Lookups {
    mailbox: Arc<Mailbox>,
    pending: RefCell<HashMap<Id, Attempts>>,
}

#[derive(Default)]
struct Attempts {
    /// Addresses not tried yet.
    left: VecDeque<SocketAddr>,
    /// The error of the last attempt that failed: the connection's on_close if none is left.
    last_err: Errno,
}

impl Lookups {
    pub(super) fn new(wake_fd: Fd) -> Self {
        Lookups {
            mailbox: Arc::new(Mailbox {
                inbox: Mutex::new(Inbox {
                    wake_fd: Some(wake_fd),
                    answers: Vec::new(),
                }),
            }),
            pending: RefCell::default(),
        }
    }

    /// No answer is taken from now on (the loop is being freed); lookups still running end
    /// without touching it.
    pub(super) fn close(&self) {
        let mut inbox = self.mailbox.lock();
        inbox.wake_fd = None;
        inbox.answers.clear();
    }

    /// The connection ended: whatever its lookup or its other addresses bring is ignored.
    pub(super) fn forget(&self, id: Id) {
        let mut pending = self.pending.borrow_mut();
        // (most connections never had a lookup: no hashing for them, at every close)
        if !pending.is_empty() {
            pending.remove(&id);
        }
    }
}

impl<H: Handler> Loop<H> {
    /// Connects to `host` (a numeric address, or a name resolved off the loop's thread) and
    /// `port`. See `ep_connect`.
    pub fn connect_host(
        &self,
        host: &str,
        port: u16,
        timeout: Option<Duration>,
        opts: Options,
        handler: H,
    ) -> Result<Id, Error> {
        match host.parse::<IpAddr>() {
            Ok(ip) => self.connect(
                &sys::Addr::Ip(SocketAddr::new(ip, port)),
                timeout,
                opts,
                handler,
            ),
            // No host name is empty or has a ':' (an IPv6 address that did not parse, a port).
            Err(_) if host.is_empty() || host == "*" || host.contains(':') => {
                Err(Error::Os(sys::EINVAL))
            }
            Err(_) => self.connect_by_name(host, port, timeout, opts, handler),
        }
    }

    fn connect_by_name(
        &self,
        host: &str,
        port: u16,
        timeout: Option<Duration>,
        opts: Options,
        handler: H,
    ) -> Result<Id, Error> {
        self.check_open()?;
        // An empty epoll set: a descriptor that never becomes ready, standing in for the socket
        // until an address is known.
        let placeholder = sys::epoll_create()?.into_raw_fd();
        let opts = Options {
            borrow: false,
            ..opts
        };
        let mut stream = Stream::new(
            placeholder,
            handler,
            opts,
            Access::socket(),
            Flow::default(),
        );
        stream.phase = Phase::Connecting { then: None };
        let id = self
            .add_stream(stream)
            .inspect_err(|_| sys::close(placeholder))?;
        if let Some(timeout) = timeout {
            self.state
                .borrow_mut()
                .arm_deadline(id, Instant::now() + timeout);
        }
        self.lookups
            .pending
            .borrow_mut()
            .insert(id, Attempts::default());
        submit(Job {
            host: host.to_owned(),
            port,
            id,
            mailbox: Arc::clone(&self.lookups.mailbox),
        });
        Ok(id)
    }

    /// Takes the answers of finished lookups and starts connecting (or ends the connection).
    pub(super) fn run_resolved(&self) {
        let answers = std::mem::take(&mut self.lookups.mailbox.lock().answers);
        for (id, answer) in answers {
            match self.lookups.pending.borrow_mut().get_mut(&id) {
                Some(attempts) => {
                    if let Ok(addrs) = &answer {
                        attempts.left = addrs.iter().copied().collect();
                    }
                }
                None => continue, // ended while its name was resolving
            }
            match answer {
                Ok(_) => self.next_attempt(id),
                Err(err) => {
                    self.lookups.forget(id);
                    self.terminate(id, CloseReason::Error, err, FdFate::Close);
                }
            }
            self.deliver_closes();
        }
    }

    /// Starts a connect to the next address left; ends the connection with the last error when
    /// none is left.
    fn next_attempt(&self, id: Id) {
        loop {
            let next = {
                let mut pending = self.lookups.pending.borrow_mut();
                let Some(attempts) = pending.get_mut(&id) else {
                    return;
                };
                attempts.left.pop_front().ok_or(attempts.last_err)
            };
            let addr = match next {
                Ok(addr) => addr,
                Err(err) => {
                    self.lookups.forget(id);
                    return self.terminate(id, CloseReason::from_errno(err), err, FdFate::Close);
                }
            };
            let failed = match sys::connect(&sys::Addr::Ip(addr)) {
                Ok(fd) => {
                    let fd = fd.into_raw_fd();
                    if self.nodelay_wanted(id) {
                        // Best effort, as for a numeric connect: a failure only costs latency.
                        let _ = sys::set_nodelay(fd);
                    }
                    match self.replace_fd(id, fd) {
                        Ok(()) => return,
                        Err(err) => err,
                    }
                }
                // (A socket made before the failure is dropped, so closed, here.)
                Err((_, err)) => err,
            };
            if let Some(attempts) = self.lookups.pending.borrow_mut().get_mut(&id) {
                attempts.last_err = failed;
            }
        }
    }

    /// The connection's descriptor becomes `fd`, a socket whose connect is under way.
    /// The connection wants TCP_NODELAY (no EP_NAGLE).
    fn nodelay_wanted(&self, id: Id) -> bool {
        matches!(self.state.borrow().entries.get(id), Some(Entry::Stream(s)) if !s.opts.nagle)
    }

    fn replace_fd(&self, id: Id, fd: Fd) -> Result<(), Errno> {
        let mut st = self.state.borrow_mut();
        let Some(Entry::Stream(s)) = st.entries.get_mut(id) else {
            sys::close(fd);
            return Ok(());
        };
        let interest = s.wanted_interest();
        if let Err(err) = sys::epoll_add(self.epfd, fd, interest, id) {
            sys::close(fd);
            return Err(err);
        }
        let old = std::mem::replace(&mut s.fd, fd);
        s.interest = interest;
        let _ = sys::epoll_delete(self.epfd, old);
        sys::close(old);
        Ok(())
    }

    /// A connection is about to end because a connect failed: with addresses left, the next one
    /// is tried instead and true returned. Any other end forgets the connection's lookup.
    pub(super) fn retry_connect(&self, id: Id, reason: CloseReason, err: Errno) -> bool {
        let retry = matches!(reason, CloseReason::Error | CloseReason::PeerReset)
            && matches!(self.state.borrow().entries.get(id), Some(Entry::Stream(s)) if s.connecting())
            && match self.lookups.pending.borrow_mut().get_mut(&id) {
                Some(attempts) if !attempts.left.is_empty() => {
                    attempts.last_err = err;
                    true
                }
                _ => false,
            };
        if retry {
            self.next_attempt(id);
        } else {
            self.lookups.forget(id);
        }
        retry
    }
}

// ---------------------------------------------------------------------------------------------
// The resolver threads, shared by every loop of the process.

struct Job {
    host: String,
    port: u16,
    id: Id,
    mailbox: Arc<Mailbox>,
}

struct Pool {
    queue: VecDeque<Job>,
    workers: usize,
    /// The process the workers belong to: a child after fork() has none of them.
    pid: u32,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    queue: VecDeque::new(),
    workers: 0,
    pid: 0,
});

fn pool() -> MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Queues a lookup; a worker is started for it unless enough are running. Workers end when the
/// queue is empty, so an idle process holds no resolver thread.
fn submit(job: Job) {
    let mut pool = pool();
    let pid = std::process::id();
    if pool.pid != pid {
        pool.pid = pid;
        pool.workers = 0;
        pool.queue.clear();
    }
    pool.queue.push_back(job);
    if pool.workers >= MAX_WORKERS {
        return;
    }
    pool.workers += 1;
    let started = std::thread::Builder::new()
        .name("eploop-resolve".into())
        .spawn(work);
    if let Err(e) = started {
        pool.workers -= 1;
        if pool.workers == 0 {
            // Nobody will run the queue: fail what waits rather than leave it hanging.
            let errno = e.raw_os_error().unwrap_or(sys::EAGAIN);
            for job in std::mem::take(&mut pool.queue) {
                job.mailbox.deliver(job.id, Err(errno));
            }
        }
    }
}

fn work() {
    loop {
        let job = {
            let mut pool = pool();
            match pool.queue.pop_front() {
                Some(job) => job,
                None => {
                    pool.workers -= 1;
                    return;
                }
            }
        };
        let answer = sys::resolve(&job.host, job.port);
        job.mailbox.deliver(job.id, answer);
    }
}
