//! What a connection keeps of its flow settings, small (memory per idle connection): the
//! watermarks and the idle timeout, in 32 bits each.

use std::time::Duration;

use super::{DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER, MAX_QUEUE};

/// Flow-control watermarks of a connection (or a listener's default for its connections).
/// Kept in 32 bits (memory per connection): a queue never holds more than MAX_QUEUE bytes, so
/// a mark saturated at 4 GiB compares with it exactly as the mark given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flow {
    low: u32,
    high: u32,
}

impl Flow {
    pub(super) fn new(low: usize, high: usize) -> Self {
        let mark = |bytes: usize| u32::try_from(bytes).unwrap_or(u32::MAX);
        Flow {
            low: mark(low),
            high: mark(high),
        }
    }

    #[inline(always)]
    pub(super) fn low(self) -> usize {
        self.low as usize
    }

    #[inline(always)]
    pub(super) fn high(self) -> usize {
        self.high as usize
    }
}

impl Default for Flow {
    fn default() -> Self {
        Flow::new(DEFAULT_LOW_WATER, DEFAULT_HIGH_WATER)
    }
}

const _: () = assert!(MAX_QUEUE < u32::MAX as usize);

/// An idle timeout as kept per connection: whole ms (at least 1), 0 for none.
pub(super) fn idle_ms(idle: Option<Duration>) -> u32 {
    idle.map_or(0, |idle| {
        u32::try_from(idle.as_millis()).unwrap_or(u32::MAX).max(1)
    })
}

pub(super) fn idle_of(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}
