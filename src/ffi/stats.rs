//! The loop's counters.

use std::ffi::c_int;

use super::ep_loop;
use super::errors::EP_ENULL;

/// Counters of a loop's life (see ep_get_stats()). ABI: fields are only ever appended at the end
/// (a minor version may add some), and ep_get_stats() writes no more than the size its caller
/// passes, so a program built against an older, smaller ep_stats keeps working.
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
    /// on_close calls so far, indexed by ep_close_reason (index 0 unused). Room for 15 reasons:
    /// close reasons a later minor version adds are counted here without a layout change.
    pub closes: [u64; 16],
}

/// Copies the loop's counters into `*out`: `size` must be the caller's `sizeof(ep_stats)`, and at
/// most that many bytes are written (the first `size` bytes of the library's ep_stats; fields the
/// caller's older header lacks are not written, and bytes a newer header has beyond the library's
/// struct are zeroed). Returns 0, EP_ENULL (NULL out), -EINVAL (`size` smaller than the first
/// field, 8), or a loop error (EP_ENULL, EP_ETHREAD, EP_EFORK, EP_EPANIC).
///
/// # Safety
/// `lp` as for ep_loop_free(); `out` NULL or writable for `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn ep_get_stats(lp: *mut ep_loop, out: *mut ep_stats, size: usize) -> c_int {
    if out.is_null() {
        return EP_ENULL;
    }
    if size < std::mem::size_of::<u64>() {
        return -libc::EINVAL;
    }
    with_loop!(lp, |boxed| {
        let counted = boxed.engine.stats();
        let mut closes = [0; 16];
        closes[..counted.closes.len()].copy_from_slice(&counted.closes);
        let stats = ep_stats {
            open: counted.open,
            lingering: counted.lingering,
            timers: counted.timers,
            accepted: counted.accepted,
            accept_overloads: counted.accept_overloads,
            stale_events: counted.stale_events,
            bytes_in: counted.bytes_in,
            bytes_out: counted.bytes_out,
            closes,
        };
        let ours = std::mem::size_of::<ep_stats>();
        let out = out.cast::<u8>();
        // SAFETY: `out` is writable for `size` bytes (contract); `stats` is a live, initialised
        // repr(C) value of `ours` bytes, and at most min(size, ours) of them are copied.
        unsafe {
            std::ptr::copy_nonoverlapping(
                std::ptr::from_ref(&stats).cast::<u8>(),
                out,
                size.min(ours),
            );
        }
        if size > ours {
            // SAFETY: as above; the bytes from `ours` to `size` are the caller's.
            unsafe { out.add(ours).write_bytes(0, size - ours) };
        }
        0
    })
}
