//! The send variants beyond `send`: several buffers as one unit, a buffer without a copy, and a
//! file range. Each returns as `send` does, and follows its one-channel rule (see `ops.rs`).

use super::ops::sendable;
use super::outq::{FileRange, Segment};
use super::{Error, Handler, Id, Loop, MAX_QUEUE};
use crate::sys::{self, Fd, MAX_IOV};

impl<H: Handler> Loop<H> {
    /// Sends several buffers as one ordered unit: written with one vectored write when nothing
    /// is queued; only what the kernel did not take is copied into the queue. Returns as send().
    pub fn send_vectored(&self, id: Id, bufs: &[&[u8]]) -> Result<bool, Error> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(s) = sendable(st, id)? else {
            return Ok(true);
        };
        let total = bufs
            .iter()
            .try_fold(0usize, |sum, b| sum.checked_add(b.len()))
            .ok_or(Error::Os(sys::ENOBUFS))?;
        if total > MAX_QUEUE - s.out.copied_len() {
            return Err(Error::Os(sys::ENOBUFS));
        }
        let mut written = 0;
        if s.out.is_empty() && !s.connecting() {
            while written < total {
                let (window, n, wanted) = window(bufs, written);
                match s.write(&window[..n]) {
                    Ok(k) => {
                        written += k;
                        if k < wanted {
                            break;
                        }
                    }
                    Err(sys::EAGAIN) => break,
                    Err(errno) => {
                        s.write_failed(errno);
                        st.stats.bytes_out += written as u64;
                        st.schedule(id);
                        return Ok(true);
                    }
                }
            }
        }
        if written < total {
            s.out
                .try_reserve(total - written)
                .map_err(|_| Error::Os(sys::ENOMEM))?;
            let mut skip = written;
            for buf in bufs {
                let k = skip.min(buf.len());
                skip -= k;
                s.out.extend(&buf[k..]);
            }
            s.queued_more();
            s.update_interest(self.epfd, id);
        }
        if written > 0 {
            s.touch();
        }
        let above_high = s.out.len() > s.flow.high();
        st.stats.bytes_out += written as u64;
        Ok(above_high)
    }

    /// Sends a buffer without copying it: `seg` stays queued until the kernel took all of it,
    /// then is dropped (released) at the next safe point, outside any handler call's borrow of
    /// the loop — never from inside this call. Once the peer is gone it is released unsent (and
    /// Ok(true) returned). On an error it is handed back untouched: the caller keeps it.
    pub fn send_borrowed<S: Segment + 'static>(&self, id: Id, seg: S) -> Result<bool, (Error, S)> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let s = match sendable(st, id) {
            Ok(Some(s)) => s,
            Ok(None) => {
                st.released.push(Box::new(seg));
                return Ok(true);
            }
            Err(e) => return Err((e, seg)),
        };
        let len = seg.bytes().len();
        let mut start = 0;
        if s.out.is_empty() && !s.connecting() {
            while start < len {
                match s.write_one(&seg.bytes()[start..]) {
                    Ok(n) => start += n,
                    Err(sys::EAGAIN) => break,
                    Err(errno) => {
                        s.write_failed(errno);
                        st.released.push(Box::new(seg));
                        st.stats.bytes_out += start as u64;
                        st.schedule(id);
                        return Ok(true);
                    }
                }
            }
        }
        s.out.push_borrowed(Box::new(seg), start);
        if start < len {
            s.queued_more();
            s.update_interest(self.epfd, id);
        }
        if start > 0 {
            s.touch();
        }
        let above_high = s.out.len() > s.flow.high();
        let mut finished = Vec::new();
        s.out.take_finished(&mut finished);
        st.released.append(&mut finished);
        st.stats.bytes_out += start as u64;
        Ok(above_high)
    }

    /// Sends `length` bytes of the file `file` from `offset` (length 0: to its current end),
    /// in order with everything queued before and after, with sendfile(2). The loop sends from
    /// its own duplicate of `file`, so the caller may close it at once. A file that turns out
    /// shorter than the range fails the connection with ENODATA (reported by on_close).
    pub fn send_file(&self, id: Id, file: Fd, offset: u64, length: u64) -> Result<bool, Error> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(s) = sendable(st, id)? else {
            return Ok(true);
        };
        let info = sys::file_info(file)?;
        if !info.regular {
            return Err(Error::Os(sys::EINVAL));
        }
        if sys::status_flags(file)? & libc::O_ACCMODE == libc::O_WRONLY {
            return Err(Error::Os(sys::EBADF));
        }
        let end = if length == 0 {
            info.size
        } else {
            offset.checked_add(length).ok_or(Error::Os(sys::EINVAL))?
        };
        let count = end
            .checked_sub(offset)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| {
                n.checked_add(s.out.len())
                    .is_some_and(|t| t <= isize::MAX as usize)
            })
            .ok_or(Error::Os(sys::EINVAL))?;
        if count == 0 {
            return Ok(s.out.len() > s.flow.high());
        }
        let fd = sys::dup_cloexec(file)?;
        let write_now = s.out.is_empty() && !s.connecting();
        s.out.push_file(FileRange {
            fd,
            offset,
            remaining: count,
        });
        let written = if write_now { s.write_queue() } else { 0 };
        if s.failure().is_some() {
            st.stats.bytes_out += written as u64;
            st.schedule(id);
            return Ok(true);
        }
        if !s.out.is_empty() {
            s.queued_more();
            s.update_interest(self.epfd, id);
        }
        let above_high = s.out.len() > s.flow.high();
        st.stats.bytes_out += written as u64;
        Ok(above_high)
    }
}

/// The non-empty parts of `bufs` after the first `skip` bytes, at most MAX_IOV of them, and how
/// many bytes they hold.
fn window<'a>(bufs: &[&'a [u8]], mut skip: usize) -> ([&'a [u8]; MAX_IOV], usize, usize) {
    let mut out: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
    let (mut n, mut bytes) = (0, 0);
    for buf in bufs {
        let k = skip.min(buf.len());
        skip -= k;
        let part = &buf[k..];
        if part.is_empty() {
            continue;
        }
        if n == MAX_IOV {
            break;
        }
        out[n] = part;
        n += 1;
        bytes += part.len();
    }
    (out, n, bytes)
}
