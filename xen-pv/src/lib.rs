//! A `no_std` platform for Rust x86-64 Xen PV guests with no OS (unikernels).
//!
//! What a PV guest needs of Xen, from boot to shutdown: the ELF notes and entry point, the
//! hypercall page, the console ring, the page pool and its mappings, grant tables (granting
//! pages to a domain, and mapping another domain's), event channels (waited on with
//! `SCHEDOP_poll`, upcalls masked: no interrupt handler), a monotonic clock from the vCPU's
//! time record, and a xenstore client over the ring that reuses the `xenstore` crate's codec.
//!
//! The crate builds on the host too: everything that is logic rather than hypervisor access is
//! here for unit tests ([`ring`], [`console`], [`store`], [`events`], [`grant`], [`pool`],
//! [`time`], and the ABI in [`abi`]); the x86-64 PV code itself is the `pv` module, compiled
//! only for `target_os = "none"` (`cargo doc --target x86_64-unknown-none` shows it). Pages that Xen or a peer writes are reached only through
//! [`xen_types::memory::SharedRegion`].
//!
//! ```
//! use xen_types::memory::SharedRegion;
//! use xen_pv::ring::ByteRing;
//!
//! // A ring as the console and xenstore pages have them: 16 bytes and two u32 indices.
//! #[repr(C, align(8))]
//! struct Page([u8; 24]);
//! let mut page = Page([0; 24]);
//! let region = SharedRegion::from(&mut page.0[..]);
//! let ring = ByteRing::new(region.subregion(0, 16), region.subregion(16, 4), region.subregion(20, 4), "demo");
//! assert_eq!(ring.produce(b"hello").unwrap(), 5);
//! let mut out = [0u8; 8];
//! assert_eq!(ring.consume(&mut out).unwrap(), 5);
//! assert_eq!(&out[..5], b"hello");
//! ```
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

pub mod abi;
pub mod console;
pub mod error;
pub mod events;
pub mod grant;
pub mod pool;
// The one place with `unsafe`: hypercalls, the boot code, the .bss memory and the views of
// pages Xen or a peer writes.
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
#[allow(unsafe_code)]
pub mod pv;
pub mod ring;
pub mod store;
pub mod time;

pub use error::{PvError, Result};
pub use time::Instant;

/// One end of an event channel as a ring sees it: kick the other end, and wait for it.
pub trait Doorbell {
    /// Send an event to the other end.
    fn ring(&self);
    /// Wait until the other end sends an event (a spurious wake-up is allowed) or `deadline`
    /// passes: `false` once the deadline has passed.
    fn wait(&self, deadline: Instant) -> bool;
    /// The current time.
    fn now(&self) -> Instant;
}

impl<D: Doorbell + ?Sized> Doorbell for &D {
    fn ring(&self) {
        (**self).ring()
    }
    fn wait(&self, deadline: Instant) -> bool {
        (**self).wait(deadline)
    }
    fn now(&self) -> Instant {
        (**self).now()
    }
}
