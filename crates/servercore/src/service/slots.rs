//! The worker's table of sessions: one slot per session, reused oldest
//! first, each with a generation so that the key of an earlier session
//! (its driver token) never reaches a later one in the same slot.

use std::collections::VecDeque;

use crate::driver::Token;

/// One place for a session. The generation counts the sessions the slot
/// has held.
struct Slot<T> {
    generation: u32,
    entry: Option<T>,
}

/// Slots indexed by `u32`; a token is the slot (low 32 bits) and its
/// generation (high 32 bits).
pub(crate) struct Slots<T> {
    slots: Vec<Slot<T>>,
    /// Vacant slots, oldest first: a slot is reused as late as possible.
    free: VecDeque<u32>,
    live: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            free: VecDeque::new(),
            live: 0,
        }
    }
}

impl<T> Slots<T> {
    /// Picks a vacant slot for a new session and returns it with its token;
    /// [`fill`](Self::fill) stores the session, [`give_back`](Self::give_back)
    /// returns the slot unused.
    pub(crate) fn reserve(&mut self) -> (u32, Token) {
        let slot = match self.free.pop_front() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.slots[slot as usize].generation;
        (slot, (u64::from(generation) << 32) | u64::from(slot))
    }

    /// Returns a reserved slot that stays unused; it is picked first again.
    pub(crate) fn give_back(&mut self, slot: u32) {
        self.free.push_front(slot);
    }

    /// Stores `entry` in the reserved `slot`.
    pub(crate) fn fill(&mut self, slot: u32, entry: T) {
        let place = &mut self.slots[slot as usize];
        debug_assert!(place.entry.is_none());
        place.entry = Some(entry);
        self.live += 1;
    }

    /// The slot of `token`, if it still holds that token's session.
    pub(crate) fn slot_of(&self, token: Token) -> Option<u32> {
        let slot = token as u32;
        let generation = (token >> 32) as u32;
        let place = self.slots.get(slot as usize)?;
        (place.generation == generation && place.entry.is_some()).then_some(slot)
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.entry.as_ref()
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.entry.as_mut()
    }

    /// Frees the slot of `token` (its session is gone for good); the next
    /// session in it gets a new generation.
    pub(crate) fn remove(&mut self, token: Token) -> Option<T> {
        let slot = self.slot_of(token)?;
        let place = &mut self.slots[slot as usize];
        let entry = place.entry.take()?;
        place.generation = place.generation.wrapping_add(1);
        self.free.push_back(slot);
        self.live -= 1;
        Some(entry)
    }

    /// Empties every slot, handing each entry to `f`.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(T)) {
        for place in &mut self.slots {
            if let Some(entry) = place.entry.take() {
                f(entry);
            }
        }
        self.live = 0;
    }

    /// Sessions held now.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// One past the highest slot index ever used (for walking all slots).
    pub(crate) fn end(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The sessions, with their slots.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, place)| Some((slot as u32, place.entry.as_ref()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_token_never_reaches_the_next_session_of_its_slot() {
        let mut slots = Slots::default();
        let (a, token_a) = slots.reserve();
        slots.fill(a, "first");
        assert_eq!(slots.slot_of(token_a), Some(a));
        assert_eq!(slots.remove(token_a), Some("first"));
        assert_eq!(slots.slot_of(token_a), None);
        let (b, token_b) = slots.reserve();
        slots.fill(b, "second");
        assert_eq!(b, a, "the only slot is reused");
        assert_ne!(token_b, token_a);
        assert_eq!(slots.slot_of(token_a), None);
        assert_eq!(slots.remove(token_a), None);
        assert_eq!(slots.get(b), Some(&"second"));
        assert_eq!(slots.live(), 1);
    }

    #[test]
    fn slots_are_reused_oldest_first_and_a_returned_one_first() {
        let mut slots = Slots::default();
        let tokens: Vec<_> = (0..3)
            .map(|n| {
                let (slot, token) = slots.reserve();
                slots.fill(slot, n);
                token
            })
            .collect();
        slots.remove(tokens[1]);
        slots.remove(tokens[0]);
        let (next, _) = slots.reserve();
        assert_eq!(next, 1, "freed first, reused first");
        slots.give_back(next);
        assert_eq!(slots.reserve().0, 1, "a slot given back is picked again");
    }
}
