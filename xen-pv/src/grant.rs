//! Grant tables, from the granting side: the entries Xen reads (`grant_entry_v1`), the refs
//! and pool pages they use, and the rule for ending a grant.
//!
//! **The MSA02 rule.** A grant ends only while the grantee does not map the page: Xen sets
//! `GTF_reading`/`GTF_writing` in the entry's flags while a mapping exists, and the entry is
//! cleared with a compare-exchange that fails if either bit appears meanwhile (Mini-OS's
//! `gnttab_end_access`). A page whose grant cannot end is kept out of use (quarantined) and
//! retried later: reusing it would hand the peer whatever we put there next (mirage-xen before
//! 3.3.0 did exactly that).

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use xen_types::memory::SharedRegion;
use xen_types::{DomId, GrantRef};

use crate::abi::{
    GrantEntryV1, GNTTAB_NR_RESERVED_ENTRIES, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY,
    GTF_WRITING, PAGE_SIZE,
};
use crate::error::{PvError, Result};
use crate::pool::Bitmap;

/// Grant entries per table frame.
pub const REFS_PER_FRAME: usize = PAGE_SIZE / core::mem::size_of::<GrantEntryV1>();
/// The words of the pool's bitmap: at most 2,048 pages (8 MiB).
pub const POOL_WORDS: usize = 32;
/// The words of the refs' bitmap: at most 4,096 refs (8 table frames).
pub const REF_WORDS: usize = 64;

/// Our grant table: `nr_frames` pages of `grant_entry_v1`, which Xen reads and updates.
#[derive(Debug, Clone, Copy)]
pub struct GrantTable<'a> {
    entries: SharedRegion<'a>,
}

impl<'a> GrantTable<'a> {
    /// The table whose entries are `entries` (a whole number of 8-byte entries).
    pub fn new(entries: SharedRegion<'a>) -> GrantTable<'a> {
        assert!(entries.len() % 8 == 0, "a grant table is whole entries");
        GrantTable { entries }
    }

    /// The number of entries.
    pub fn capacity(&self) -> usize {
        self.entries.len() / 8
    }

    fn offset(&self, r: GrantRef) -> Result<usize> {
        let i = r.0 as usize;
        if r.0 < GNTTAB_NR_RESERVED_ENTRIES || i >= self.capacity() {
            return Err(PvError::BadGrantRef(r.0));
        }
        Ok(i * 8)
    }

    /// Let `domid` map machine frame `frame` through `r` (read-only if `readonly`).
    pub fn grant(&self, r: GrantRef, domid: DomId, frame: u64, readonly: bool) -> Result<()> {
        let frame = u32::try_from(frame).map_err(|_| PvError::FrameTooLarge(frame))?;
        let off = self.offset(r)?;
        self.entries.store_u16(off + 2, domid.0, Ordering::Relaxed);
        self.entries.store_u32(off + 4, frame, Ordering::Relaxed);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        // ORDERING: Release puts the domid and frame in place before the flags that let Xen
        // use the entry (Mini-OS's wmb() before the flags); Xen reads flags first.
        self.entries.store_u16(off, flags, Ordering::Release);
        Ok(())
    }

    /// End the grant `r`, unless the grantee maps the page: then [`PvError::GrantInUse`] and
    /// the entry is left as it is.
    pub fn end(&self, r: GrantRef) -> Result<()> {
        let off = self.offset(r)?;
        let mut flags = self.entries.load_u16(off, Ordering::Acquire);
        loop {
            if flags & (GTF_READING | GTF_WRITING) != 0 {
                return Err(PvError::GrantInUse);
            }
            // ORDERING: SeqCst: the compare-exchange is the one atomic step that decides
            // between our end and Xen's mapping (which sets GTF_reading with its own cmpxchg).
            match self.entries.compare_exchange_u16(
                off,
                flags,
                0,
                Ordering::SeqCst,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => flags = now,
            }
        }
    }

    /// Whether the grantee maps `r`'s page now.
    pub fn is_mapped(&self, r: GrantRef) -> Result<bool> {
        let off = self.offset(r)?;
        Ok(self.entries.load_u16(off, Ordering::Acquire) & (GTF_READING | GTF_WRITING) != 0)
    }
}

/// Pages granted to a domain: a run of pool pages and one ref per page.
#[derive(Debug, PartialEq, Eq)]
pub struct SharedRun {
    /// The pool index of the first page.
    pub first_page: usize,
    /// The refs, one per page, in page order.
    pub refs: Vec<GrantRef>,
}

/// The pool's pages, the grant refs, and the grants that could not end yet.
#[derive(Debug)]
pub struct Book<'a> {
    table: GrantTable<'a>,
    pages: Bitmap<POOL_WORDS>,
    refs: Bitmap<REF_WORDS>,
    quarantine: Vec<(GrantRef, usize)>,
}

impl<'a> Book<'a> {
    /// A book over `table` and a pool of `pool_pages` pages, none in use; the reserved refs
    /// (0-7, which the toolstack fills for the console and xenstore) are never handed out.
    pub fn new(table: GrantTable<'a>, pool_pages: usize) -> Book<'a> {
        let mut refs = Bitmap::new(table.capacity().min(Bitmap::<REF_WORDS>::CAPACITY));
        for r in 0..GNTTAB_NR_RESERVED_ENTRIES as usize {
            refs.reserve(r);
        }
        Book {
            table,
            pages: Bitmap::new(pool_pages),
            refs,
            quarantine: Vec::new(),
        }
    }

    /// The grant table.
    pub fn table(&self) -> GrantTable<'a> {
        self.table
    }

    /// Take `count` contiguous pool pages (not granted); the first one's index.
    pub fn alloc_pages(&mut self, count: usize) -> Result<usize> {
        self.reap();
        self.pages
            .alloc_run(count)
            .ok_or(PvError::OutOfPages(count))
    }

    /// Reserve pool page `page` for good (a page given up to a mapping of Xen's, such as
    /// shared_info); false if it was in use.
    pub fn reserve_page(&mut self, page: usize) -> bool {
        self.pages.reserve(page)
    }

    /// Give back pages taken with [`alloc_pages`](Self::alloc_pages).
    pub fn free_pages(&mut self, first: usize, count: usize) {
        for page in first..first + count {
            self.pages.free(page);
        }
    }

    /// Grant `count` contiguous pool pages to `domid`. `prepare(page)` is called for each page
    /// before its grant exists (it zeroes the page) and returns the page's machine frame.
    pub fn share(
        &mut self,
        domid: DomId,
        count: usize,
        readonly: bool,
        mut prepare: impl FnMut(usize) -> u64,
    ) -> Result<SharedRun> {
        let first_page = self.alloc_pages(count)?;
        let mut refs = Vec::with_capacity(count);
        for page in first_page..first_page + count {
            let granted = match self.refs.alloc_run(1) {
                None => Err(PvError::OutOfGrantRefs),
                Some(r) => {
                    let r = GrantRef(r as u32);
                    let frame = prepare(page);
                    match self.table.grant(r, domid, frame, readonly) {
                        Ok(()) => Ok(r),
                        Err(e) => {
                            self.refs.free(r.0 as usize);
                            Err(e)
                        }
                    }
                }
            };
            match granted {
                Ok(r) => refs.push(r),
                Err(e) => {
                    // Nobody has these refs yet (they were never published): they end at once.
                    let granted = refs.len();
                    self.unshare(SharedRun { first_page, refs });
                    self.free_pages(first_page + granted, count - granted);
                    return Err(e);
                }
            }
        }
        Ok(SharedRun { first_page, refs })
    }

    /// End the grants of `run` and free its pages; a page the grantee still maps stays out of
    /// use until [`reap`](Self::reap) finds its grant ended.
    pub fn unshare(&mut self, run: SharedRun) {
        for (i, r) in run.refs.into_iter().enumerate() {
            self.end_or_quarantine(r, run.first_page + i);
        }
    }

    fn end_or_quarantine(&mut self, r: GrantRef, page: usize) -> bool {
        match self.table.end(r) {
            Ok(()) => {
                self.refs.free(r.0 as usize);
                self.pages.free(page);
                true
            }
            Err(_) => {
                self.quarantine.push((r, page));
                false
            }
        }
    }

    /// Retry the grants that could not end; returns how many pages came back.
    pub fn reap(&mut self) -> usize {
        let waiting = core::mem::take(&mut self.quarantine);
        let mut back = 0;
        for (r, page) in waiting {
            if self.end_or_quarantine(r, page) {
                back += 1;
            }
        }
        back
    }

    /// Pages whose grant could not end yet.
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Pool pages in use (shared, lent to mappings, quarantined or reserved).
    pub fn pages_in_use(&self) -> usize {
        self.pages.used_count()
    }

    /// Grant refs in use, the reserved ones included.
    pub fn refs_in_use(&self) -> usize {
        self.refs.used_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[repr(C, align(8))]
    struct Frame([u8; PAGE_SIZE]);

    fn flags(table: &GrantTable<'_>, r: GrantRef) -> u16 {
        table.entries.load_u16(r.0 as usize * 8, Ordering::Relaxed)
    }

    /// Xen's side of a mapping: set GTF_reading (and GTF_writing) on the entry.
    fn xen_maps(table: &GrantTable<'_>, r: GrantRef, writable: bool) {
        let bits = GTF_READING | if writable { GTF_WRITING } else { 0 };
        table
            .entries
            .fetch_or_u8(r.0 as usize * 8, bits as u8, Ordering::SeqCst);
    }

    fn xen_unmaps(table: &GrantTable<'_>, r: GrantRef) {
        let bits = (GTF_READING | GTF_WRITING) as u8;
        table
            .entries
            .fetch_and_u8(r.0 as usize * 8, !bits, Ordering::SeqCst);
    }

    #[test]
    fn an_entry_is_laid_out_as_xen_reads_it() {
        let mut frame = Frame([0; PAGE_SIZE]);
        let table = GrantTable::new(SharedRegion::from(&mut frame.0[..]));
        assert_eq!(table.capacity(), REFS_PER_FRAME);
        table
            .grant(GrantRef(9), DomId(3), 0x1234_5678, true)
            .unwrap();
        let e = table.entries;
        assert_eq!(
            e.load_u16(72, Ordering::Relaxed),
            GTF_PERMIT_ACCESS | GTF_READONLY
        );
        assert_eq!(e.load_u16(74, Ordering::Relaxed), 3);
        assert_eq!(e.load_u32(76, Ordering::Relaxed), 0x1234_5678);
        assert_eq!(
            table.grant(GrantRef(10), DomId(3), 1 << 32, false),
            Err(PvError::FrameTooLarge(1 << 32))
        );
        // The toolstack's reserved refs and refs past the table are refused.
        assert_eq!(
            table.grant(GrantRef(1), DomId(0), 1, false),
            Err(PvError::BadGrantRef(1))
        );
        assert_eq!(table.end(GrantRef(512)), Err(PvError::BadGrantRef(512)));
    }

    #[test]
    fn a_grant_the_peer_maps_does_not_end_msa02() {
        let mut frame = Frame([0; PAGE_SIZE]);
        let table = GrantTable::new(SharedRegion::from(&mut frame.0[..]));
        let r = GrantRef(8);
        table.grant(r, DomId(0), 77, false).unwrap();
        xen_maps(&table, r, true);
        assert!(table.is_mapped(r).unwrap());
        assert_eq!(table.end(r), Err(PvError::GrantInUse));
        assert_eq!(
            flags(&table, r) & GTF_PERMIT_ACCESS,
            GTF_PERMIT_ACCESS,
            "left as it was"
        );
        xen_unmaps(&table, r);
        table.end(r).unwrap();
        assert_eq!(flags(&table, r), 0);
    }

    fn book(frame: &mut Frame) -> Book<'_> {
        Book::new(GrantTable::new(SharedRegion::from(&mut frame.0[..])), 16)
    }

    #[test]
    fn sharing_uses_unreserved_refs_and_prepares_pages_before_granting() {
        let mut frame = Frame([0; PAGE_SIZE]);
        let mut book = book(&mut frame);
        let table = book.table();
        let mut prepared = vec![];
        let run = book
            .share(DomId(2), 3, false, |page| {
                // The pages before this one are granted, this one not yet.
                let granted = (8..16).filter(|&r| flags(&table, GrantRef(r)) != 0).count();
                assert_eq!(granted, page);
                prepared.push(page);
                100 + page as u64
            })
            .unwrap();
        assert_eq!(prepared, vec![0, 1, 2]);
        assert_eq!(run.refs, vec![GrantRef(8), GrantRef(9), GrantRef(10)]);
        assert_eq!(table.entries.load_u32(9 * 8 + 4, Ordering::Relaxed), 101);
        assert_eq!(book.refs_in_use(), 8 + 3);
        book.unshare(run);
        assert_eq!((book.pages_in_use(), book.refs_in_use()), (0, 8));
    }

    #[test]
    fn a_page_still_mapped_is_quarantined_until_its_grant_ends() {
        let mut frame = Frame([0; PAGE_SIZE]);
        let mut book = book(&mut frame);
        let table = book.table();
        let run = book.share(DomId(2), 2, false, |p| p as u64).unwrap();
        let mapped = run.refs[0];
        xen_maps(&table, mapped, false);
        book.unshare(run);
        assert_eq!(book.quarantined(), 1);
        assert_eq!(
            book.pages_in_use(),
            1,
            "the mapped page stays out of the pool"
        );
        // The pool never hands the quarantined page out: 15 are left.
        assert_eq!(book.alloc_pages(16), Err(PvError::OutOfPages(16)));
        let all_free = book.alloc_pages(15).unwrap();
        assert_eq!(all_free, 1);
        assert_eq!(book.pages_in_use(), 16);
        book.free_pages(all_free, 15);
        assert_eq!(book.reap(), 0);
        xen_unmaps(&table, mapped);
        assert_eq!(book.reap(), 1);
        assert_eq!(
            (book.quarantined(), book.pages_in_use(), book.refs_in_use()),
            (0, 0, 8)
        );
    }

    #[test]
    fn running_out_of_refs_undoes_the_share() {
        let mut frame = Frame([0; PAGE_SIZE]);
        // A table of 10 entries: refs 8 and 9 only.
        let mut book = Book::new(GrantTable::new(SharedRegion::from(&mut frame.0[..80])), 16);
        assert_eq!(
            book.share(DomId(1), 3, false, |p| p as u64),
            Err(PvError::OutOfGrantRefs)
        );
        assert_eq!((book.pages_in_use(), book.refs_in_use()), (0, 8));
        let run = book.share(DomId(1), 2, true, |p| p as u64).unwrap();
        assert_eq!(run.refs, vec![GrantRef(8), GrantRef(9)]);
    }
}
