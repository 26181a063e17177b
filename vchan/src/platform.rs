//! What the channel core needs of a platform: event channels, grant sharing and mapping, and a
//! key store, each named after libxen's calls. `no_std`.
//!
//! These are the consumer's view, as vm-memory puts it: only what a vchan needs, not the
//! provider's whole API. The store is xenstore's own [`XenStore`] trait (`no_std` too); the
//! others are defined here. A platform implements them once:
//! - the `std` platforms (real Xen, the in-process simulation, `xensim`) through their own
//!   crates' traits (`evtchn::EventChannel`, `gnttab::GrantShare`/`GrantMap`), which implement
//!   these (see the blanket impls below, and [`Backend`](crate::Backend));
//! - a guest with no OS (the `xen-pv` crate) directly.
//!
//! Every call completes without waiting for the peer: an ioctl or a hypercall, one store round
//! trip. Waiting for the peer (an event, a store change, a deadline) is a driver's job, never the
//! core's.

use core::fmt;

pub use xen_types::memory::{AsSharedRegion, SharedRegion};
pub use xen_types::{DomId, GrantRef, Port, UnmapNotify};
pub use xenstore::{Access, Errno, Perm, TxId, XenStore, XenstoreError};

/// An event-channel handle: the operations on ports (`xenevtchn_*`). Taking delivered events
/// and waiting for them belong to the drivers (a pollable fd, a hypercall).
pub trait EventChannels {
    /// What an operation fails with.
    type Error: fmt::Debug + fmt::Display;
    /// Allocate a port that `remote` may bind to.
    fn bind_unbound_port(&self, remote: DomId) -> Result<Port, Self::Error>;
    /// Bind a local port to `remote_port`, an unbound port of `remote` allocated for us.
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, Self::Error>;
    /// Send an event to the other end of `port`.
    fn notify(&self, port: Port) -> Result<(), Self::Error>;
    /// Re-arm `port` after an event was taken from it.
    fn unmask(&self, port: Port) -> Result<(), Self::Error>;
    /// Release `port`.
    fn unbind(&self, port: Port) -> Result<(), Self::Error>;
}

/// Pages granted to another domain: their refs and the memory. Dropping the value ends the grants
/// (a platform must not end a grant the peer still maps: MirageOS' MSA02).
pub trait GrantedPages: AsSharedRegion {
    /// One grant ref per page, in page order.
    fn refs(&self) -> &[GrantRef];
}

/// A handle that shares this domain's pages (`xengntshr_*`, gntalloc).
pub trait GrantShare {
    /// What an operation fails with.
    type Error: fmt::Debug + fmt::Display;
    /// The shared pages.
    type Pages: GrantedPages;
    /// Share `count` zeroed, contiguous pages with `domid`, read-only unless `writable`;
    /// `notify` fires when our side's mapping goes away (if the platform has the notion).
    fn share_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> Result<Self::Pages, Self::Error>;
}

/// A handle that maps other domains' grants (`xengnttab_*`, gntdev).
pub trait GrantMap {
    /// What an operation fails with.
    type Error: fmt::Debug + fmt::Display;
    /// A mapping; dropping it unmaps.
    type Mapping: AsSharedRegion;
    /// Map `refs`, granted by `domid`, as one contiguous region, read-only unless `writable`;
    /// `notify` fires when the mapping goes away (if the platform has the notion).
    fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> Result<Self::Mapping, Self::Error>;

    /// Arrange `notify` for a mapping made without one (gntdev's `SET_UNMAP_NOTIFY` works on a
    /// mapping that exists): a client sets it once it has joined, so that a failed attempt,
    /// whose mapping goes at once, clears nobody's live byte. A platform with no such notion
    /// does nothing.
    fn set_unmap_notify(
        &self,
        mapping: &Self::Mapping,
        notify: UnmapNotify,
    ) -> Result<(), Self::Error>;
}

/// A domain's devices as the core uses them: one event-channel handle, one grant-sharing handle
/// (servers), one grant-mapping handle (clients), one store connection, each opened per
/// endpoint as libxenvchan does. Device operations share one error type.
pub trait Platform {
    /// What opening a device, or an operation on an event channel or a grant, fails with.
    type DeviceError: fmt::Debug + fmt::Display;
    /// The event-channel handle.
    type Events: EventChannels<Error = Self::DeviceError>;
    /// The grant-sharing handle.
    type Sharer: GrantShare<Error = Self::DeviceError>;
    /// The grant-mapping handle.
    type Mapper: GrantMap<Error = Self::DeviceError>;
    /// The store connection (xenstore's own trait, `no_std` too).
    type Store: XenStore;

    /// Open an event-channel handle.
    fn events(&self) -> Result<Self::Events, Self::DeviceError>;
    /// Open a grant-sharing handle.
    fn sharer(&self) -> Result<Self::Sharer, Self::DeviceError>;
    /// Open a grant-mapping handle.
    fn mapper(&self) -> Result<Self::Mapper, Self::DeviceError>;
    /// Connect to the store.
    fn store(&self) -> Result<Self::Store, XenstoreError>;
}

/// The `std` platforms: each of their crates' traits gives the core's.
#[cfg(feature = "std")]
mod std_platforms {
    use std::io;

    use super::*;
    use crate::Backend;

    impl<E: evtchn::EventChannel> EventChannels for E {
        type Error = io::Error;
        #[inline]
        fn bind_unbound_port(&self, remote: DomId) -> io::Result<Port> {
            evtchn::EventChannel::bind_unbound_port(self, remote)
        }
        #[inline]
        fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> io::Result<Port> {
            evtchn::EventChannel::bind_interdomain(self, remote, remote_port)
        }
        #[inline]
        fn notify(&self, port: Port) -> io::Result<()> {
            evtchn::EventChannel::notify(self, port)
        }
        #[inline]
        fn unmask(&self, port: Port) -> io::Result<()> {
            evtchn::EventChannel::unmask(self, port)
        }
        #[inline]
        fn unbind(&self, port: Port) -> io::Result<()> {
            evtchn::EventChannel::unbind(self, port)
        }
    }

    /// Lends the region through `SharedMemory::region` (read-only views for read-only mappings).
    pub struct Shared<T>(pub(crate) T);

    impl<T: gnttab::SharedMemory> AsSharedRegion for Shared<T> {
        #[inline]
        fn region(&self) -> SharedRegion<'_> {
            gnttab::SharedMemory::region(&self.0)
        }
    }

    impl<T: gnttab::SharedPages> GrantedPages for Shared<T> {
        fn refs(&self) -> &[GrantRef] {
            self.0.refs()
        }
    }

    impl<S: gnttab::GrantShare> GrantShare for S {
        type Error = io::Error;
        type Pages = Shared<S::Pages>;
        fn share_pages(
            &self,
            domid: DomId,
            count: usize,
            writable: bool,
            notify: Option<UnmapNotify>,
        ) -> io::Result<Self::Pages> {
            gnttab::GrantShare::share_pages(self, domid, count, writable, notify).map(Shared)
        }
    }

    impl<M: gnttab::GrantMap> GrantMap for M {
        type Error = io::Error;
        type Mapping = Shared<M::Mapping>;
        fn map_grant_refs(
            &self,
            domid: DomId,
            refs: &[GrantRef],
            writable: bool,
            notify: Option<UnmapNotify>,
        ) -> io::Result<Self::Mapping> {
            gnttab::GrantMap::map_grant_refs(self, domid, refs, writable, notify).map(Shared)
        }

        fn set_unmap_notify(&self, mapping: &Self::Mapping, notify: UnmapNotify) -> io::Result<()> {
            gnttab::GrantMap::set_unmap_notify(self, &mapping.0, notify)
        }
    }

    impl<B: Backend> Platform for B {
        type DeviceError = io::Error;
        type Events = B::Events;
        type Sharer = B::Sharer;
        type Mapper = B::Mapper;
        type Store = B::Store;
        fn events(&self) -> io::Result<B::Events> {
            self.open_events()
        }
        fn sharer(&self) -> io::Result<B::Sharer> {
            self.open_sharer()
        }
        fn mapper(&self) -> io::Result<B::Mapper> {
            self.open_mapper()
        }
        fn store(&self) -> Result<B::Store, XenstoreError> {
            self.open_store()
        }
    }
}
#[cfg(feature = "std")]
pub use std_platforms::Shared;
