//! The bytes of an ep_poll() step's events: one buffer reused from step to step, which reads
//! for EP_QUEUE registrations land in directly (see `EventQueue::read_data` in batch.rs).

/// The least room a read is lent in the step's data (see StepData::room).
const MIN_ROOM: usize = 16 * 1024;

/// The bytes of a step's events. The storage is kept initialized up to its capacity and `len` says
/// how much of it the step used, so a read can land in it directly without zeroing it first, and
/// it moves only when a step needs more than its capacity: only when `len` grows past every length
/// handed out before (the guarantee `ep_poll_result` states).
#[derive(Default)]
pub(super) struct StepData {
    pub(super) storage: Vec<u8>,
    pub(super) len: usize,
}

impl StepData {
    /// Appends `parts`; returns where they start.
    pub(super) fn append(&mut self, parts: &[&[u8]]) -> u64 {
        let offset = self.len;
        let total: usize = parts.iter().map(|part| part.len()).sum();
        if offset + total > self.storage.len() {
            // Grow (the only move), keeping only what the step holds, initialized to capacity.
            self.storage.truncate(offset);
            self.storage.reserve(total);
            self.storage.resize(self.storage.capacity(), 0);
        }
        for part in parts {
            self.storage[self.len..self.len + part.len()].copy_from_slice(part);
            self.len += part.len();
        }
        offset as u64
    }

    /// Up to `size` bytes of room after what the step holds, as much as the storage has without
    /// moving; None below [`MIN_ROOM`] (a read into less is not worth its system call: the loop's
    /// own buffer takes it, and the append that follows grows the storage).
    pub(super) fn room(&mut self, size: usize) -> Option<&mut [u8]> {
        let spare = self.storage.len() - self.len;
        if spare < MIN_ROOM.min(size) {
            return None;
        }
        Some(&mut self.storage[self.len..self.len + spare.min(size)])
    }
}

#[cfg(test)]
mod tests {
    use super::{StepData, MIN_ROOM};

    /// The guarantee ep_poll_result documents: the step's data moves only when a step holds more
    /// than the storage ever had room for, never to lend room for a read.
    #[test]
    fn step_data_moves_only_when_a_step_outgrows_it() {
        let mut data = StepData::default();
        assert!(data.room(16).is_none(), "no room lent by moving");
        data.append(&[&[1; 100], &[2; 28]]);
        let (at, capacity) = (data.storage.as_ptr(), data.storage.len());
        assert!(capacity >= 128);
        assert_eq!(
            &data.storage[..data.len],
            [[1; 100].as_slice(), &[2; 28]].concat()
        );
        // A later step, smaller than the largest so far: no move, whatever is asked; the room
        // lent is what the storage has left, down to MIN_ROOM.
        data.len = 0;
        data.append(&[&[3; 64]]);
        let spare = capacity - 64;
        assert!(
            data.room(MIN_ROOM).is_none() == (spare < MIN_ROOM),
            "less room than MIN_ROOM is not lent"
        );
        assert_eq!(data.room(16).map(|room| room.len()), Some(16));
        assert!(
            data.room(capacity).is_none(),
            "room beyond the storage would move it"
        );
        let room = data.room(spare).expect("room within the storage");
        assert_eq!(room.len(), spare);
        room.fill(4);
        data.len = capacity;
        assert_eq!(data.storage.as_ptr(), at);
        assert_eq!(data.storage[63..65], [3, 4]);
        // Outgrowing it moves it (it may), with every byte kept and the spare room initialized.
        data.append(&[&[5; 10]]);
        assert_eq!(data.len, capacity + 10);
        assert_eq!(data.storage.len(), data.storage.capacity());
        assert_eq!(data.storage[capacity - 1..capacity + 1], [4, 5]);
        // A large storage lends a large ask only what it has left, or nothing below MIN_ROOM.
        data.len = 0;
        data.append(&[&vec![6; 3 * MIN_ROOM]]);
        data.len = 0;
        assert_eq!(
            data.room(usize::MAX).map(|room| room.len()),
            Some(data.storage.len())
        );
        data.len = data.storage.len() - MIN_ROOM;
        assert_eq!(data.room(1 << 20).map(|room| room.len()), Some(MIN_ROOM));
        data.len += 1;
        assert!(data.room(1 << 20).is_none());
    }
}
