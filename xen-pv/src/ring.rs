//! The byte rings of the console and xenstore pages: a power-of-two array and two free-running
//! `u32` indices, one written by each end (`xencons_interface`, `xenstore_domain_interface`).
//!
//! A [`ByteRing`] is one direction of such a page, seen from one end: [`ByteRing::produce`] when
//! this end writes it, [`ByteRing::consume`] when it reads it. The other end's index is read
//! once per call and checked: indices more than the ring's size apart are
//! [`PvError::RingCorrupt`], never an out-of-bounds copy.

use core::sync::atomic::Ordering;

use xen_types::memory::SharedRegion;

use crate::error::{PvError, Result};

/// One direction of a shared byte ring.
#[derive(Debug, Clone, Copy)]
pub struct ByteRing<'a> {
    data: SharedRegion<'a>,
    cons: SharedRegion<'a>,
    prod: SharedRegion<'a>,
    name: &'static str,
}

impl<'a> ByteRing<'a> {
    /// The ring whose bytes are `data` (a power of two long) and whose consumer and producer
    /// indices are the 4-byte regions `cons` and `prod`; `name` names it in errors.
    ///
    /// Panics if `data`'s length is not a power of two or an index region is not 4 bytes.
    pub fn new(
        data: SharedRegion<'a>,
        cons: SharedRegion<'a>,
        prod: SharedRegion<'a>,
        name: &'static str,
    ) -> ByteRing<'a> {
        assert!(
            data.len().is_power_of_two(),
            "a ring's size is a power of two"
        );
        assert!(cons.len() == 4 && prod.len() == 4, "ring indices are u32s");
        ByteRing {
            data,
            cons,
            prod,
            name,
        }
    }

    /// The ring's size in bytes.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    fn used(&self, cons: u32, prod: u32) -> Result<usize> {
        let used = prod.wrapping_sub(cons) as usize;
        if used > self.size() {
            return Err(PvError::RingCorrupt(self.name));
        }
        Ok(used)
    }

    /// As the producer: copy as much of `bytes` as fits and publish it. Returns how many bytes
    /// went in (0 when the ring is full); the caller notifies the consumer if that is not 0.
    pub fn produce(&self, bytes: &[u8]) -> Result<usize> {
        // ORDERING: Acquire pairs with the consumer's Release store of its index: the bytes it
        // has released are read by then, so we may overwrite them.
        let cons = self.cons.load_u32(0, Ordering::Acquire);
        let prod = self.prod.load_u32(0, Ordering::Relaxed);
        let free = self.size() - self.used(cons, prod)?;
        let n = free.min(bytes.len());
        self.copy_in(prod, &bytes[..n]);
        // ORDERING: Release publishes the bytes copied above before the index that covers them;
        // it pairs with the consumer's Acquire load of the producer index.
        self.prod
            .store_u32(0, prod.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// As the consumer: copy up to `out.len()` published bytes into `out` and release their
    /// space. Returns how many (0 when the ring is empty); the caller notifies the producer if
    /// that is not 0.
    pub fn consume(&self, out: &mut [u8]) -> Result<usize> {
        // ORDERING: Acquire pairs with the producer's Release store of its index: the bytes it
        // covers are written.
        let prod = self.prod.load_u32(0, Ordering::Acquire);
        let cons = self.cons.load_u32(0, Ordering::Relaxed);
        let n = self.used(cons, prod)?.min(out.len());
        self.copy_out(cons, &mut out[..n]);
        // ORDERING: Release keeps the copies above before the index that frees their space,
        // pairing with the producer's Acquire load of the consumer index.
        self.cons
            .store_u32(0, cons.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// Whether the consumer has taken every published byte.
    pub fn is_empty(&self) -> Result<bool> {
        let cons = self.cons.load_u32(0, Ordering::Acquire);
        let prod = self.prod.load_u32(0, Ordering::Acquire);
        Ok(self.used(cons, prod)? == 0)
    }

    fn copy_in(&self, index: u32, bytes: &[u8]) {
        let start = index as usize & (self.size() - 1);
        let first = bytes.len().min(self.size() - start);
        self.data.copy_in(start, &bytes[..first]);
        self.data.copy_in(0, &bytes[first..]);
    }

    fn copy_out(&self, index: u32, out: &mut [u8]) {
        let start = index as usize & (self.size() - 1);
        let first = out.len().min(self.size() - start);
        self.data.copy_out(start, &mut out[..first]);
        self.data.copy_out(0, &mut out[first..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(8))]
    struct Page([u8; 24]);

    /// A 16-byte ring with its indices at 16 (cons) and 20 (prod).
    fn ring(page: &mut Page) -> ByteRing<'_> {
        let region = SharedRegion::from(&mut page.0[..]);
        ByteRing::new(
            region.subregion(0, 16),
            region.subregion(16, 4),
            region.subregion(20, 4),
            "test",
        )
    }

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let mut page = Page([0; 24]);
        let ring = ring(&mut page);
        let mut out = [0u8; 32];
        let mut next = 0u8;
        let mut expect = 0u8;
        // Odd chunk sizes walk the indices around the ring several times.
        for chunk in [5usize, 11, 3, 16, 7, 9, 13] {
            let bytes: alloc::vec::Vec<u8> = (0..chunk)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            assert_eq!(ring.produce(&bytes).unwrap(), chunk);
            let n = ring.consume(&mut out).unwrap();
            assert_eq!(n, chunk);
            for b in &out[..n] {
                expect = expect.wrapping_add(1);
                assert_eq!(*b, expect);
            }
            assert!(ring.is_empty().unwrap());
        }
    }

    #[test]
    fn a_full_ring_takes_nothing_more() {
        let mut page = Page([0; 24]);
        let ring = ring(&mut page);
        assert_eq!(ring.produce(&[1; 20]).unwrap(), 16);
        assert_eq!(ring.produce(&[2; 4]).unwrap(), 0);
        let mut out = [0u8; 4];
        assert_eq!(ring.consume(&mut out).unwrap(), 4);
        assert_eq!(ring.produce(&[2; 8]).unwrap(), 4);
    }

    #[test]
    fn indices_further_apart_than_the_ring_are_an_error_not_a_copy() {
        let mut page = Page([0; 24]);
        let ring = ring(&mut page);
        // The other end claims 17 bytes in a 16-byte ring.
        ring.prod.store_u32(0, 17, Ordering::Relaxed);
        assert_eq!(
            ring.consume(&mut [0u8; 32]),
            Err(PvError::RingCorrupt("test"))
        );
        assert_eq!(ring.produce(b"x"), Err(PvError::RingCorrupt("test")));
        // Free-running indices that wrap u32 are fine.
        ring.cons.store_u32(0, u32::MAX - 1, Ordering::Relaxed);
        ring.prod.store_u32(0, 2, Ordering::Relaxed);
        assert_eq!(ring.consume(&mut [0u8; 32]).unwrap(), 4);
    }
}
