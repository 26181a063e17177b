//! A fixed-size bitmap allocator: the page pool's pages and the grant table's references.

/// `len` slots (at most `64 * WORDS`), each free or used; runs of free slots are found first-fit.
#[derive(Debug, Clone)]
pub struct Bitmap<const WORDS: usize> {
    used: [u64; WORDS],
    len: usize,
}

impl<const WORDS: usize> Bitmap<WORDS> {
    /// The most slots a bitmap of this size holds.
    pub const CAPACITY: usize = WORDS * 64;

    /// `len` free slots.
    ///
    /// Panics if `len` exceeds [`Self::CAPACITY`].
    pub const fn new(len: usize) -> Bitmap<WORDS> {
        assert!(len <= Self::CAPACITY, "bitmap too small");
        Bitmap {
            used: [0; WORDS],
            len,
        }
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no slots at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether slot `i` is used (slots past the end count as used).
    pub fn is_used(&self, i: usize) -> bool {
        i >= self.len || self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, used: bool) {
        if used {
            self.used[i / 64] |= 1 << (i % 64);
        } else {
            self.used[i / 64] &= !(1 << (i % 64));
        }
    }

    /// How many slots are used.
    pub fn used_count(&self) -> usize {
        (0..self.len).filter(|&i| self.is_used(i)).count()
    }

    /// Take the first run of `count` free slots (count > 0); its first index, or `None`.
    pub fn alloc_run(&mut self, count: usize) -> Option<usize> {
        if count == 0 || count > self.len {
            return None;
        }
        let mut start = 0;
        while start + count <= self.len {
            match (start..start + count).find(|&i| self.is_used(i)) {
                Some(used) => start = used + 1,
                None => {
                    for i in start..start + count {
                        self.set(i, true);
                    }
                    return Some(start);
                }
            }
        }
        None
    }

    /// Mark slot `i` used (reserve it); false if it already was or is out of range.
    pub fn reserve(&mut self, i: usize) -> bool {
        if self.is_used(i) {
            return false;
        }
        self.set(i, true);
        true
    }

    /// Free slot `i`; false if it was not used (a double free, or out of range).
    pub fn free(&mut self, i: usize) -> bool {
        if i >= self.len || !self.is_used(i) {
            return false;
        }
        self.set(i, false);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_first_fit_and_skip_used_slots() {
        let mut map = Bitmap::<2>::new(100);
        assert_eq!(map.alloc_run(3), Some(0));
        assert_eq!(map.alloc_run(62), Some(3));
        assert_eq!(map.alloc_run(1), Some(65));
        assert!(map.free(1));
        assert!(!map.free(1), "a double free is refused");
        // The hole at 1 is too small for two; the next run starts after 65.
        assert_eq!(map.alloc_run(2), Some(66));
        assert_eq!(map.alloc_run(1), Some(1));
        assert_eq!(map.used_count(), 68);
        assert_eq!(map.alloc_run(32), Some(68));
        assert_eq!(map.alloc_run(1), None, "full");
        assert_eq!(map.alloc_run(0), None);
    }

    #[test]
    fn slots_past_the_end_are_never_handed_out() {
        let mut map = Bitmap::<1>::new(10);
        assert_eq!(map.alloc_run(11), None);
        assert_eq!(map.alloc_run(10), Some(0));
        assert!(map.is_used(10) && !map.free(10) && !map.reserve(12));
    }
}
