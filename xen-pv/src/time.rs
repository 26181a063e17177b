//! Xen's system time, read from a vCPU's time record (`vcpu_time_info`) and the TSC.
//!
//! Xen publishes, per vCPU, its system time (nanoseconds since it booted) at a TSC stamp and the
//! TSC's scale; the guest extrapolates with `rdtsc`. `SCHEDOP_poll` takes its timeout in the same
//! system time, so an [`Instant`] is directly a poll deadline.

use core::sync::atomic::{fence, Ordering};
use core::time::Duration;

use xen_types::memory::SharedRegion;

use crate::abi::VcpuTimeInfo;
use core::mem::offset_of;

/// A point in Xen's system time (nanoseconds since the hypervisor booted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// `self + d`, saturating (a deadline too far away never comes).
    pub fn after(self, d: Duration) -> Instant {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(ns))
    }

    /// How long from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// One consistent copy of a time record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRecord {
    /// The TSC when `system_time` was taken.
    pub tsc_timestamp: u64,
    /// System time at `tsc_timestamp`.
    pub system_time: u64,
    /// The scale's multiplier (a 32.32 fixed-point fraction).
    pub tsc_to_system_mul: u32,
    /// The scale's shift.
    pub tsc_shift: i8,
}

impl TimeRecord {
    /// The system time at TSC value `tsc`. A TSC behind the stamp (read on a vCPU Xen has not
    /// updated yet) counts as the stamp.
    pub fn system_time_at(&self, tsc: u64) -> Instant {
        let delta = tsc.saturating_sub(self.tsc_timestamp);
        let shifted = if self.tsc_shift >= 0 {
            // A shift of more than 31 would overflow any real TSC delta; Xen uses -1..=3 or so.
            delta.checked_shl(self.tsc_shift as u32).unwrap_or(u64::MAX)
        } else {
            delta >> self.tsc_shift.unsigned_abs().min(63)
        };
        let ns = ((u128::from(shifted) * u128::from(self.tsc_to_system_mul)) >> 32) as u64;
        Instant(self.system_time.saturating_add(ns))
    }
}

const VERSION: usize = offset_of!(VcpuTimeInfo, version);
const TSC_TIMESTAMP: usize = offset_of!(VcpuTimeInfo, tsc_timestamp);
const SYSTEM_TIME: usize = offset_of!(VcpuTimeInfo, system_time);
const MUL: usize = offset_of!(VcpuTimeInfo, tsc_to_system_mul);
const SHIFT: usize = offset_of!(VcpuTimeInfo, tsc_shift);

fn load_u64(region: SharedRegion<'_>, offset: usize) -> u64 {
    // Two halves: the seqlock around the reads makes the pair consistent.
    let lo = region.load_u32(offset, Ordering::Relaxed);
    let hi = region.load_u32(offset + 4, Ordering::Relaxed);
    u64::from(lo) | (u64::from(hi) << 32)
}

/// Read a consistent copy of the 32-byte time record `record` (Xen's seqlock: an odd version
/// means an update is under way; a changed version means one happened while we read).
pub fn read_time_record(record: SharedRegion<'_>) -> TimeRecord {
    loop {
        // ORDERING: Acquire pairs with Xen's write barrier after it makes the version even
        // again, so the fields read next are at least as new as this version.
        let before = record.load_u32(VERSION, Ordering::Acquire);
        if before & 1 == 1 {
            core::hint::spin_loop();
            continue;
        }
        let copy = TimeRecord {
            tsc_timestamp: load_u64(record, TSC_TIMESTAMP),
            system_time: load_u64(record, SYSTEM_TIME),
            tsc_to_system_mul: record.load_u32(MUL, Ordering::Relaxed),
            tsc_shift: record.load_u8(SHIFT, Ordering::Relaxed) as i8,
        };
        // ORDERING: the fields' loads stay before the second version load (a reader's seqlock
        // fence), pairing with Xen's write barrier before it bumps the version to odd.
        fence(Ordering::Acquire);
        if record.load_u32(VERSION, Ordering::Relaxed) == before {
            return copy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(8))]
    struct Record([u8; 32]);

    fn put(region: SharedRegion<'_>, offset: usize, value: u64) {
        region.store_u32(offset, value as u32, Ordering::Relaxed);
        region.store_u32(offset + 4, (value >> 32) as u32, Ordering::Relaxed);
    }

    #[test]
    fn scaling_follows_the_pvclock_formula() {
        // A 2 GHz TSC: shift 0, mul 2^31 (0.5 ns per tick).
        let rec = TimeRecord {
            tsc_timestamp: 1_000,
            system_time: 5_000_000,
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 0,
        };
        assert_eq!(rec.system_time_at(1_000), Instant(5_000_000));
        assert_eq!(rec.system_time_at(3_000), Instant(5_001_000));
        // A shift of -1 halves the delta first; +1 doubles it.
        let slow = TimeRecord {
            tsc_shift: -1,
            ..rec
        };
        assert_eq!(slow.system_time_at(5_000), Instant(5_001_000));
        let fast = TimeRecord {
            tsc_shift: 1,
            ..rec
        };
        assert_eq!(fast.system_time_at(2_000), Instant(5_001_000));
        // A TSC behind the stamp is the stamp, never a wrap to the far future.
        assert_eq!(rec.system_time_at(10), Instant(5_000_000));
    }

    #[test]
    fn a_consistent_record_is_read_whole() {
        let mut buf = Record([0; 32]);
        let region = SharedRegion::from(&mut buf.0[..]);
        put(region, TSC_TIMESTAMP, 0x1_0000_0002);
        put(region, SYSTEM_TIME, 0x3_0000_0004);
        region.store_u32(MUL, 7, Ordering::Relaxed);
        region.store_u8(SHIFT, (-2i8) as u8, Ordering::Relaxed);
        region.store_u32(VERSION, 4, Ordering::Relaxed);
        let rec = read_time_record(region);
        assert_eq!(
            rec,
            TimeRecord {
                tsc_timestamp: 0x1_0000_0002,
                system_time: 0x3_0000_0004,
                tsc_to_system_mul: 7,
                tsc_shift: -2,
            }
        );
    }

    #[test]
    fn instants_saturate() {
        assert_eq!(
            Instant(u64::MAX - 1).after(Duration::from_secs(1)),
            Instant(u64::MAX)
        );
        assert_eq!(Instant(5).since(Instant(9)), Duration::ZERO);
        assert_eq!(Instant(9).since(Instant(5)), Duration::from_nanos(4));
    }
}
