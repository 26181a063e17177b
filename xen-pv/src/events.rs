//! The 2-level event-channel bitmaps in `shared_info`: which ports are pending and masked.
//!
//! Xen sets a port's pending bit when the other end notifies it (and wakes a vCPU polling the
//! port, masked or not); this crate never takes upcalls, so it only ever tests and clears bits
//! and polls. Port `p` is bit `p % 64` of 64-bit word `p / 64`, which on little-endian x86 is
//! bit `p % 8` of byte `p / 8`: the bits are reached with atomic byte operations, which x86
//! makes coherent with Xen's locked bit operations on the words.

use core::mem::offset_of;
use core::sync::atomic::Ordering;

use xen_types::memory::SharedRegion;
use xen_types::Port;

use crate::abi::{SharedInfo, EVTCHN_2L_NR_CHANNELS, EVTCHN_WORDS};
use crate::error::{PvError, Result};

/// The pending and mask bitmaps of a `shared_info` page.
#[derive(Debug, Clone, Copy)]
pub struct EventBits<'a> {
    pending: SharedRegion<'a>,
    mask: SharedRegion<'a>,
}

fn place(port: Port) -> Result<(usize, u8)> {
    if port.0 >= EVTCHN_2L_NR_CHANNELS {
        return Err(PvError::BadPort(port.0));
    }
    Ok(((port.0 / 8) as usize, 1 << (port.0 % 8)))
}

impl<'a> EventBits<'a> {
    /// The bitmaps of the `shared_info` page `shared_info`.
    pub fn new(shared_info: SharedRegion<'a>) -> EventBits<'a> {
        EventBits {
            pending: shared_info
                .subregion(offset_of!(SharedInfo, evtchn_pending), EVTCHN_WORDS * 8),
            mask: shared_info.subregion(offset_of!(SharedInfo, evtchn_mask), EVTCHN_WORDS * 8),
        }
    }

    /// Clear `port`'s pending bit; whether it was set (an event arrived since the last clear).
    pub fn take_pending(&self, port: Port) -> Result<bool> {
        let (byte, bit) = place(port)?;
        // ORDERING: SeqCst (a locked AND) orders the clear before whatever the caller reads
        // next (ring indices), so an event sent after those writes is never lost: it sets the
        // bit again and the next poll returns at once.
        Ok(self.pending.fetch_and_u8(byte, !bit, Ordering::SeqCst) & bit != 0)
    }

    /// Whether `port` is pending (without clearing it).
    pub fn is_pending(&self, port: Port) -> Result<bool> {
        let (byte, bit) = place(port)?;
        Ok(self.pending.load_u8(byte, Ordering::SeqCst) & bit != 0)
    }

    /// Whether `port` is masked.
    pub fn is_masked(&self, port: Port) -> Result<bool> {
        let (byte, bit) = place(port)?;
        Ok(self.mask.load_u8(byte, Ordering::SeqCst) & bit != 0)
    }

    /// Mask `port` (a guest-local change: unmasking takes `EVTCHNOP_unmask`, so that Xen can
    /// deliver what became pending meanwhile).
    pub fn mask(&self, port: Port) -> Result<()> {
        let (byte, bit) = place(port)?;
        self.mask.fetch_or_u8(byte, bit, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[repr(C, align(8))]
    struct Page([u8; size_of::<SharedInfo>()]);

    #[test]
    fn port_bits_are_the_words_bits_on_little_endian() {
        let mut page = Page([0; size_of::<SharedInfo>()]);
        let region = SharedRegion::from(&mut page.0[..]);
        let bits = EventBits::new(region);
        // Xen sets bit 67 % 64 = 3 of word 1: byte 8 + 0, bit 3.
        let word = offset_of!(SharedInfo, evtchn_pending) + 8;
        region.store_u8(word, 1 << 3, Ordering::Relaxed);
        assert!(bits.is_pending(Port(67)).unwrap());
        assert!(!bits.is_pending(Port(66)).unwrap());
        assert!(bits.take_pending(Port(67)).unwrap());
        assert!(!bits.take_pending(Port(67)).unwrap(), "taken once");
        assert_eq!(region.load_u8(word, Ordering::Relaxed), 0);
        // Port 4095 is the last bit of the last word.
        bits.mask(Port(4095)).unwrap();
        assert!(bits.is_masked(Port(4095)).unwrap());
        let last = offset_of!(SharedInfo, evtchn_mask) + EVTCHN_WORDS * 8 - 1;
        assert_eq!(region.load_u8(last, Ordering::Relaxed), 0x80);
    }

    #[test]
    fn a_port_beyond_the_2_level_abi_is_an_error() {
        let mut page = Page([0; size_of::<SharedInfo>()]);
        let bits = EventBits::new(SharedRegion::from(&mut page.0[..]));
        assert_eq!(bits.take_pending(Port(4096)), Err(PvError::BadPort(4096)));
        assert_eq!(bits.mask(Port(u32::MAX)), Err(PvError::BadPort(u32::MAX)));
    }
}
