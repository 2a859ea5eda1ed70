//! Registrations stored by slot index with a generation, so an id is never reused and an event
//! or a call carrying an old id is recognised as stale even when the kernel reused its fd number.

/// A registration id: `(generation << 32) | slot index`. Never 0, never reused.
pub type Id = u64;

/// A slot whose generation reached this value is retired for good instead of being reused.
const RETIRED: u32 = u32::MAX;

pub struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    live: usize,
    /// The generation new slots start at: above every generation of a slot ever cut off the end,
    /// so compacting never lets an old id come back.
    floor: u32,
}

impl<T> Slab<T> {
    pub fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            floor: 1,
        }
    }

    fn split(id: Id) -> (usize, u32) {
        ((id & 0xffff_ffff) as usize, (id >> 32) as u32)
    }

    /// Stores `value` and returns its new id.
    pub fn insert(&mut self, value: T) -> Id {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push((self.floor, None));
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.1 = Some(value);
        self.live += 1;
        (u64::from(slot.0) << 32) | u64::from(index)
    }

    pub fn get(&self, id: Id) -> Option<&T> {
        let (index, generation) = Self::split(id);
        match self.slots.get(index) {
            Some((g, Some(value))) if *g == generation => Some(value),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        let (index, generation) = Self::split(id);
        match self.slots.get_mut(index) {
            Some((g, Some(value))) if *g == generation => Some(value),
            _ => None,
        }
    }

    /// Removes the value; the id becomes stale forever.
    pub fn remove(&mut self, id: Id) -> Option<T> {
        let (index, generation) = Self::split(id);
        let slot = self.slots.get_mut(index)?;
        if slot.0 != generation {
            return None;
        }
        let value = slot.1.take()?;
        self.live -= 1;
        slot.0 += 1;
        if slot.0 != RETIRED {
            self.free.push(index as u32);
        }
        Some(value)
    }

    /// Gives memory back after a crowd has left: when at most a quarter of a large table is in
    /// use, free slots at its end are cut off (their generations raise the floor for new slots).
    pub fn compact(&mut self) {
        if self.slots.len() < 1024 || self.live * 4 > self.slots.len() {
            return;
        }
        while let Some((generation, None)) = self.slots.last() {
            self.floor = self.floor.max(generation.saturating_add(1));
            self.slots.pop();
        }
        let len = self.slots.len();
        self.free.retain(|index| (*index as usize) < len);
        if self.floor == RETIRED {
            // Never reached in practice (4 billion closes on one slot); stop reusing instead.
            self.free.clear();
        }
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
    }

    /// Every live id, in slot order.
    pub fn ids(&self) -> Vec<Id> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (_, value))| value.is_some())
            .map(|(index, (generation, _))| (u64::from(*generation) << 32) | index as u64)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_and_stale_ids_miss() {
        let mut slab = Slab::new();
        let a = slab.insert("a");
        assert_ne!(a, 0);
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert("b");
        assert_ne!(a, b, "the reused slot must carry a new generation");
        assert!(slab.get(a).is_none());
        assert_eq!(slab.get(b), Some(&"b"));
        assert!(slab.remove(a).is_none());
        assert_eq!(slab.ids(), vec![b]);
    }

    #[test]
    fn compacting_returns_memory_and_never_revives_an_old_id() {
        let mut slab = Slab::new();
        let ids: Vec<Id> = (0..5000).map(|i| slab.insert(i)).collect();
        let keep = ids[10];
        for id in &ids {
            if *id != keep {
                slab.remove(*id);
            }
        }
        slab.compact();
        assert_eq!(slab.slots.len(), 11, "trailing free slots are cut off");
        assert!(slab.slots.capacity() < 100 && slab.free.len() == 10);
        assert_eq!(slab.get(keep), Some(&10));
        let fresh: Vec<Id> = (0..5000).map(|i| slab.insert(i)).collect();
        for old in &ids {
            if *old != keep {
                assert!(slab.get(*old).is_none(), "old id {old:#x} came back");
                assert!(!fresh.contains(old));
            }
        }
    }

    #[test]
    fn exhausted_generation_retires_the_slot() {
        let mut slab: Slab<u8> = Slab::new();
        let id = slab.insert(1);
        slab.slots[0].0 = RETIRED - 1;
        let old = (u64::from(RETIRED - 1) << 32) | (id & 0xffff_ffff);
        assert_eq!(slab.remove(old), Some(1));
        let next = slab.insert(2);
        assert_ne!(
            next & 0xffff_ffff,
            0,
            "a retired slot is never handed out again"
        );
    }
}
