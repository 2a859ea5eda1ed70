//! Signals as ordinary callbacks on the loop's thread. The loop blocks each watched signal in the
//! thread that starts watching it and reads it from one signalfd per loop, so no code runs in a
//! signal handler. Stopping the last handle of a signal gives the thread its old mask back.

use std::collections::BTreeMap;

use super::{insert, Entry, Error, Handler, Id, Loop, Options, SIGNAL_TOKEN};
use crate::sys::{self, ev, Fd};

/// A signal handle: `handler.on_signal` runs for each delivery of `signo`.
pub(super) struct Signal<H> {
    pub signo: i32,
    pub handler: H,
    /// Does not keep ep_run running.
    pub unref: bool,
}

/// The loop's signalfd and what it watches.
#[derive(Default)]
pub(super) struct Signals {
    fd: Option<Fd>,
    watched: BTreeMap<i32, Watch>,
    /// Handles that keep the loop running (not `unref`).
    keeping: usize,
}

struct Watch {
    /// The handles of this signal, in the order they were started (the order they are called).
    ids: Vec<Id>,
    /// This loop blocked the signal (it was not blocked in the thread before).
    blocked_here: bool,
}

impl Signals {
    pub(super) fn keep_alive(&self) -> bool {
        self.keeping > 0
    }
}

impl<H: Handler> Loop<H> {
    /// Starts calling `handler.on_signal` on the loop's thread for every delivery of `signo`.
    /// See `ep_signal_start`.
    pub fn signal_start(&self, signo: i32, opts: Options, handler: H) -> Result<Id, Error> {
        self.check_open()?;
        if !sys::signal_watchable(signo) {
            return Err(Error::Os(sys::EINVAL));
        }
        if !self.signals.borrow().watched.contains_key(&signo) {
            self.watch(signo)?;
        }
        let entry = Entry::Signal(Signal {
            signo,
            handler,
            unref: opts.unref,
        });
        let inserted = insert(&mut self.state.borrow_mut().entries, entry);
        let mut signals = self.signals.borrow_mut();
        let Some(watch) = signals.watched.get_mut(&signo) else {
            unreachable!("watched above")
        };
        match inserted {
            Ok(id) => {
                watch.ids.push(id);
                signals.keeping += usize::from(!opts.unref);
                Ok(id)
            }
            Err(e) => {
                if watch.ids.is_empty() {
                    drop(signals);
                    self.unwatch(signo);
                }
                Err(e)
            }
        }
    }

    /// Stops a signal handle; the last one of a signal gives the thread its old mask back.
    pub fn signal_stop(&self, id: Id) -> Result<(), Error> {
        let signal = {
            let mut st = self.state.borrow_mut();
            match st.entries.get(id) {
                Some(Entry::Signal(_)) => {}
                Some(Entry::Lingering(_) | Entry::Closed(_)) | None => return Err(Error::Stale),
                Some(_) => return Err(Error::Kind),
            }
            match st.entries.remove(id) {
                Some(Entry::Signal(signal)) => signal,
                _ => unreachable!("matched above"),
            }
        };
        let mut signals = self.signals.borrow_mut();
        signals.keeping -= usize::from(!signal.unref);
        let Some(watch) = signals.watched.get_mut(&signal.signo) else {
            unreachable!("a live handle's signal is watched")
        };
        watch.ids.retain(|&other| other != id);
        if watch.ids.is_empty() {
            drop(signals);
            self.unwatch(signal.signo);
        }
        Ok(())
    }

    /// Blocks `signo` in this thread and adds it to the loop's signalfd.
    fn watch(&self, signo: i32) -> Result<(), Error> {
        let mut signals = self.signals.borrow_mut();
        let was_blocked = sys::block_signal(signo)?;
        let mut set: Vec<i32> = signals.watched.keys().copied().collect();
        set.push(signo);
        let added = sys::signalfd_watch(signals.fd, &set).and_then(|fd| {
            if signals.fd.is_none() {
                if let Err(e) = sys::epoll_add(self.epfd, fd, ev::IN, SIGNAL_TOKEN) {
                    sys::close(fd);
                    return Err(e);
                }
                signals.fd = Some(fd);
            }
            Ok(())
        });
        if let Err(e) = added {
            if !was_blocked {
                let _ = sys::unblock_signal(signo);
            }
            return Err(Error::Os(e));
        }
        signals.watched.insert(
            signo,
            Watch {
                ids: Vec::new(),
                blocked_here: !was_blocked,
            },
        );
        Ok(())
    }

    /// Takes `signo` out of the signalfd and puts the thread's mask back as it was.
    fn unwatch(&self, signo: i32) {
        let mut signals = self.signals.borrow_mut();
        let Some(watch) = signals.watched.remove(&signo) else {
            return;
        };
        let rest: Vec<i32> = signals.watched.keys().copied().collect();
        if let Some(fd) = signals.fd {
            if rest.is_empty() {
                if !self.forked.get() {
                    let _ = sys::epoll_delete(self.epfd, fd);
                }
                sys::close(fd);
                signals.fd = None;
            } else {
                let _ = sys::signalfd_watch(Some(fd), &rest);
            }
        }
        if watch.blocked_here {
            // A delivery that came while the signal was watched belongs to the handle, not to
            // the disposition the unblocking would hand it to.
            sys::discard_pending(signo);
            let _ = sys::unblock_signal(signo);
        }
    }

    /// The signalfd is readable: call every handle of every signal read, in delivery order.
    pub(super) fn signal_pass(&self) {
        let Some(fd) = self.signals.borrow().fd else {
            return;
        };
        let Ok(signos) = sys::signalfd_read(fd) else {
            return;
        };
        for signo in signos {
            let ids = match self.signals.borrow().watched.get(&signo) {
                Some(watch) => watch.ids.clone(),
                None => continue,
            };
            for id in ids {
                // A handle stopped by an earlier callback of this delivery is not called.
                let handler = match self.state.borrow().entries.get(id) {
                    Some(Entry::Signal(signal)) => signal.handler.clone(),
                    _ => continue,
                };
                self.call(|| handler.on_signal(self, id, signo));
                self.deliver_closes();
            }
        }
    }
}
