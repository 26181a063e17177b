//! The PV console: the output half of the console ring page, drained by xenconsoled in dom0.
//!
//! (A domU's `console_io` hypercall is refused by a non-debug Xen; the ring is the console.)

use core::fmt;
use core::mem::offset_of;
use core::time::Duration;

use xen_types::memory::SharedRegion;

use crate::abi::{XenconsInterface, XENCONS_OUT_SIZE};
use crate::ring::ByteRing;
use crate::Doorbell;

/// How long a write waits for xenconsoled to make room before it drops the rest: a console
/// nobody drains must not stop the guest.
pub const STALL_LIMIT: Duration = Duration::from_secs(2);

/// The console's output ring and its event channel.
#[derive(Debug)]
pub struct Console<'a, D: Doorbell> {
    out: ByteRing<'a>,
    bell: D,
}

impl<'a, D: Doorbell> Console<'a, D> {
    /// The console on the ring page `page` (at least a `xencons_interface` long), notifying
    /// through `bell`.
    pub fn new(page: SharedRegion<'a>, bell: D) -> Console<'a, D> {
        let out = ByteRing::new(
            page.subregion(offset_of!(XenconsInterface, output), XENCONS_OUT_SIZE),
            page.subregion(offset_of!(XenconsInterface, out_cons), 4),
            page.subregion(offset_of!(XenconsInterface, out_prod), 4),
            "console",
        );
        Console { out, bell }
    }

    /// Write `bytes`, waiting while the ring is full; returns how many went in, fewer than
    /// asked only if xenconsoled took nothing for [`STALL_LIMIT`] or broke the ring's indices.
    pub fn write(&self, bytes: &[u8]) -> usize {
        let mut done = 0;
        let mut deadline = self.bell.now().after(STALL_LIMIT);
        while done < bytes.len() {
            match self.out.produce(&bytes[done..]) {
                Ok(0) => {
                    if !self.bell.wait(deadline) {
                        return done;
                    }
                }
                Ok(n) => {
                    done += n;
                    self.bell.ring();
                    deadline = self.bell.now().after(STALL_LIMIT);
                }
                Err(_) => return done,
            }
        }
        done
    }
}

impl<D: Doorbell> fmt::Write for &Console<'_, D> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.write(s.as_bytes()) == s.len() {
            Ok(())
        } else {
            Err(fmt::Error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Instant;
    use alloc::vec::Vec;
    use core::cell::{Cell, RefCell};
    use core::fmt::Write;

    #[repr(C, align(8))]
    struct Page([u8; 4096]);

    /// xenconsoled's side: drains the ring into `log` when the guest waits (if `draining`).
    struct FakeConsoled<'a> {
        ring: ByteRing<'a>,
        log: RefCell<Vec<u8>>,
        draining: bool,
        rings: Cell<usize>,
        clock: Cell<u64>,
    }

    impl Doorbell for &FakeConsoled<'_> {
        fn ring(&self) {
            self.rings.set(self.rings.get() + 1);
        }
        fn wait(&self, deadline: Instant) -> bool {
            self.clock.set(self.clock.get() + 100_000_000);
            if self.draining {
                let mut buf = [0u8; 300];
                let n = self.ring.consume(&mut buf).unwrap();
                self.log.borrow_mut().extend_from_slice(&buf[..n]);
            }
            self.now() < deadline
        }
        fn now(&self) -> Instant {
            Instant(self.clock.get())
        }
    }

    fn consoled(region: SharedRegion<'_>, draining: bool) -> FakeConsoled<'_> {
        FakeConsoled {
            ring: Console::new(region, NoBell).out,
            log: RefCell::new(Vec::new()),
            draining,
            rings: Cell::new(0),
            clock: Cell::new(0),
        }
    }

    struct NoBell;
    impl Doorbell for NoBell {
        fn ring(&self) {}
        fn wait(&self, _: Instant) -> bool {
            false
        }
        fn now(&self) -> Instant {
            Instant(0)
        }
    }

    #[test]
    fn a_write_longer_than_the_ring_arrives_whole_and_in_order() {
        let mut page = Page([0; 4096]);
        let region = SharedRegion::from(&mut page.0[..]);
        let consoled = consoled(region, true);
        let console = Console::new(region, &consoled);
        let text: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(console.write(&text), text.len());
        let mut rest = [0u8; 4096];
        let n = consoled.ring.consume(&mut rest).unwrap();
        consoled.log.borrow_mut().extend_from_slice(&rest[..n]);
        assert_eq!(*consoled.log.borrow(), text);
        assert!(
            consoled.rings.get() >= 3,
            "xenconsoled is notified as the ring fills"
        );
        // Only the output half is touched: the input ring stays as it was.
        assert_eq!(
            region.load_u32(
                offset_of!(XenconsInterface, in_prod),
                core::sync::atomic::Ordering::Relaxed
            ),
            0
        );
    }

    #[test]
    fn a_console_nobody_drains_gives_up_instead_of_hanging() {
        let mut page = Page([0; 4096]);
        let region = SharedRegion::from(&mut page.0[..]);
        let consoled = consoled(region, false);
        let mut console = &Console::new(region, &consoled);
        assert_eq!(console.write(&[b'x'; 3000]), XENCONS_OUT_SIZE);
        assert!(write!(console, "more").is_err());
    }
}
