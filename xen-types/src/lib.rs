//! Identifier newtypes shared by every crate of the toolkit.
//!
//! Xen names domains, event-channel ports and grant references with bare integers; mixing them up
//! is a classic bug. These newtypes keep them apart in every public signature.
//!
//! [`memory`] is the one safe surface through which every crate reaches memory shared with
//! another domain: bounds-checked atomics and raw copies, never a reference.
//!
//! ```
//! use xen_types::{DomId, GrantRef, Port};
//! let dom0 = DomId::DOM0;
//! assert_eq!(dom0.to_string(), "0");
//! assert_eq!("7".parse::<DomId>().unwrap(), DomId(7));
//! assert!(GrantRef(0).is_reserved());
//! assert!(Port(0).is_reserved());
//! ```
#![no_std]
#![deny(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

use core::fmt;
use core::num::ParseIntError;
use core::str::FromStr;

// The one place with `unsafe`: shared memory's safe surface rests on its constructor's contract.
#[allow(unsafe_code)]
pub mod memory;

/// A Xen domain id (`domid_t`, 16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomId(pub u16);

impl DomId {
    /// The control domain.
    pub const DOM0: DomId = DomId(0);
    /// `DOMID_SELF`: the calling domain, as understood by the hypervisor.
    pub const SELF: DomId = DomId(0x7ff0);
    /// The first domain id reserved for special purposes; real domains are below it.
    pub const FIRST_RESERVED: DomId = DomId(0x7ff0);

    /// Whether this names a real (non-special) domain.
    pub const fn is_normal(self) -> bool {
        self.0 < Self::FIRST_RESERVED.0
    }
}

/// An event-channel port number, local to the domain that bound it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u32);

impl Port {
    /// Port 0 is never a valid bound port; the vchan client rejects it.
    pub const fn is_reserved(self) -> bool {
        self.0 == 0
    }
}

/// A grant reference, local to the granting domain's grant table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantRef(pub u32);

impl GrantRef {
    /// Grant 0 is reserved by Xen (and rejected by the vchan client): never hand it out.
    pub const fn is_reserved(self) -> bool {
        self.0 == 0
    }
}

macro_rules! id_impls {
    ($($ty:ident($inner:ty)),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl FromStr for $ty {
            type Err = ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse::<$inner>().map($ty)
            }
        }
        impl From<$ty> for $inner {
            fn from(id: $ty) -> $inner {
                id.0
            }
        }
    )*};
}
id_impls!(DomId(u16), Port(u32), GrantRef(u32));

/// The size of a Xen page, and of every granted page.
pub const PAGE_SIZE: usize = 4096;

/// What the kernel does for us when a shared or mapped region goes away, whether by an orderly
/// unmap or because the process died: clear one byte of the region, send one event, or both
/// (gntalloc's and gntdev's `SET_UNMAP_NOTIFY`). A platform with no such thing (a guest with no
/// OS) has nothing to do for it: vchan's close clears its live byte and notifies by hand anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnmapNotify {
    /// Byte offset within the region to set to 0.
    pub clear_byte: Option<usize>,
    /// A port of the calling domain to send an event on.
    pub event: Option<Port>,
}
