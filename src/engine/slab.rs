//! Registrations stored by slot index with a generation, so an id is never reused and an event
//! or a call carrying an old id is recognised as stale even when the kernel reused its fd number.
//! Each slab also carries its loop's tag, so an id of another loop of the process is stale too.

use std::sync::atomic::{AtomicU16, Ordering};

/// A registration id: `(loop tag << 48) | (generation << 24) | slot index`. Never 0, never
/// reused within a loop, and distinct between the loops of a process (until 65,535 loops were
/// created and the tags wrap).
pub type Id = u64;

const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const GENERATION_MASK: u64 = (1 << 24) - 1;
/// Slots beyond this index are never made: a table that full refuses new registrations.
const MAX_SLOTS: usize = 1 << INDEX_BITS;
/// A slot whose generation reached this value is retired for good instead of being reused.
const RETIRED: u32 = GENERATION_MASK as u32;

/// The tag of the next slab made in this process (0 is skipped: it would allow id 0).
static NEXT_TAG: AtomicU16 = AtomicU16::new(1);

fn next_tag() -> u16 {
    loop {
        let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
        if tag != 0 {
            return tag;
        }
    }
}

pub struct Slab<T> {
    /// Each slot with its id: its value's, or while empty, the id its next value will get. A
    /// lookup is then one comparison of the whole id (tag, generation and index at once).
    slots: Vec<(Id, Option<T>)>,
    free: Vec<u32>,
    live: usize,
    /// The generation new slots start at: above every generation of a slot ever cut off the end,
    /// so compacting never lets an old id come back.
    floor: u32,
    /// This slab's tag, in the top 16 bits of every id it hands out.
    tag: u64,
    /// Entries were removed since the last compaction (nothing to give back otherwise).
    shrunk: bool,
}

impl<T> Slab<T> {
    pub fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            floor: 1,
            tag: u64::from(next_tag()) << 48,
            shrunk: false,
        }
    }

    fn make_id(&self, index: usize, generation: u32) -> Id {
        self.tag | (u64::from(generation) << INDEX_BITS) | index as u64
    }

    fn index_of(id: Id) -> usize {
        (id & INDEX_MASK) as usize
    }

    fn generation_of(id: Id) -> u32 {
        ((id >> INDEX_BITS) & GENERATION_MASK) as u32
    }

    /// Stores `value` and returns its new id, or gives the value back when the table is full.
    pub fn insert(&mut self, value: T) -> Result<Id, T> {
        let index = match self.free.pop() {
            Some(index) => index,
            None if self.slots.len() < MAX_SLOTS => {
                self.slots
                    .push((self.make_id(self.slots.len(), self.floor), None));
                (self.slots.len() - 1) as u32
            }
            None => return Err(value),
        };
        let slot = &mut self.slots[index as usize];
        slot.1 = Some(value);
        self.live += 1;
        Ok(slot.0)
    }

    pub fn get(&self, id: Id) -> Option<&T> {
        match self.slots.get(Self::index_of(id)) {
            Some((key, Some(value))) if *key == id => Some(value),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        match self.slots.get_mut(Self::index_of(id)) {
            Some((key, Some(value))) if *key == id => Some(value),
            _ => None,
        }
    }

    /// Removes the value; the id becomes stale forever.
    pub fn remove(&mut self, id: Id) -> Option<T> {
        let index = Self::index_of(id);
        let next = Self::generation_of(id) + 1;
        let next_id = self.make_id(index, next);
        let slot = self.slots.get_mut(index)?;
        if slot.0 != id {
            return None;
        }
        let value = slot.1.take()?;
        self.live -= 1;
        self.shrunk = true;
        slot.0 = next_id;
        if next != RETIRED {
            self.free.push(index as u32);
        }
        Some(value)
    }

    /// Gives memory back after a crowd has left: when at most a quarter of a large table is in
    /// use, free slots at its end are cut off (their generations raise the floor for new slots).
    #[inline(always)]
    pub fn compact(&mut self) {
        // (the check inline: most steps removed nothing)
        if std::mem::take(&mut self.shrunk) {
            self.compact_now();
        }
    }

    #[inline(never)]
    fn compact_now(&mut self) {
        if self.slots.len() < 1024 || self.live * 4 > self.slots.len() {
            return;
        }
        while let Some((id, None)) = self.slots.last() {
            self.floor = self.floor.max(Self::generation_of(*id).saturating_add(1));
            self.slots.pop();
        }
        let len = self.slots.len();
        self.free.retain(|index| (*index as usize) < len);
        if self.floor == RETIRED {
            // Never reached in practice (16 million closes on one slot); stop reusing instead.
            self.free.clear();
        }
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
    }

    /// Every live id, in slot order.
    pub fn ids(&self) -> Vec<Id> {
        self.slots
            .iter()
            .filter_map(|(id, value)| value.as_ref().map(|_| *id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_and_stale_ids_miss() {
        let mut slab = Slab::new();
        let a = slab.insert("a").unwrap();
        assert_ne!(a, 0);
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert("b").unwrap();
        assert_ne!(a, b, "the reused slot must carry a new generation");
        assert!(slab.get(a).is_none());
        assert_eq!(slab.get(b), Some(&"b"));
        assert!(slab.remove(a).is_none());
        assert_eq!(slab.ids(), vec![b]);
    }

    #[test]
    fn compacting_returns_memory_and_never_revives_an_old_id() {
        let mut slab = Slab::new();
        let ids: Vec<Id> = (0..5000).map(|i| slab.insert(i).unwrap()).collect();
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
        let fresh: Vec<Id> = (0..5000).map(|i| slab.insert(i).unwrap()).collect();
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
        let id = slab.insert(1).unwrap();
        slab.slots[0].0 = slab.make_id(0, RETIRED - 1);
        let old = slab.make_id((id & INDEX_MASK) as usize, RETIRED - 1);
        assert_eq!(slab.remove(old), Some(1));
        let next = slab.insert(2).unwrap();
        assert_ne!(
            next & INDEX_MASK,
            0,
            "a retired slot is never handed out again"
        );
    }

    #[test]
    fn an_id_of_another_slab_is_stale_here() {
        let mut first = Slab::new();
        let mut second = Slab::new();
        let a = first.insert("a").unwrap();
        let b = second.insert("b").unwrap();
        assert_ne!(a, b, "the same slot of two slabs gets two ids");
        assert!(second.get(a).is_none() && first.get(b).is_none());
        assert!(second.remove(a).is_none());
        assert_eq!(first.get(a), Some(&"a"));
    }
}
