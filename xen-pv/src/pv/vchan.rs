//! The platform under the vchan channel core: [`Devices`] implements the core's traits
//! (`vchan::platform`) and its bare driver's ([`BarePlatform`]) with this crate's hypercalls,
//! so that a guest runs `vchan::bare::BareVchan` directly on Xen.
//!
//! ```ignore
//! use vchan::bare::BareVchan;
//! use vchan::{Address, RingSizes};
//! use xen_pv::pv::{Platform, ShutdownReason};
//! use xen_types::DomId;
//!
//! fn main(platform: &'static Platform) -> ! {
//!     let devices = platform.devices();
//!     let address = Address::Path("data/vchan/0/1".into());
//!     let sent = BareVchan::server(&devices, DomId::DOM0, &address, RingSizes::default())
//!         .and_then(|mut chan| {
//!             chan.write_all(b"hello, dom0")?;
//!             chan.close()
//!         });
//!     platform.shutdown(match sent {
//!         Ok(()) => ShutdownReason::Poweroff,
//!         Err(_) => ShutdownReason::Crash,
//!     })
//! }
//! xen_pv::entry!(main);
//! ```
//!
//! What differs from the Linux devices:
//! - **No unmap notification.** A guest has none (gntalloc and gntdev arrange it in Linux's
//!   kernel): the `notify` of a share or a map is ignored and `set_unmap_notify` does nothing.
//!   A clean close still tells the peer, since the core's close clears our live byte and sends
//!   the event itself; a guest that crashes or is destroyed tells nothing, and the peer's own
//!   liveness look (dom0 sees the guest's home go) covers that.
//! - **Grants end under the MSA02 rule.** Dropping a share ([`SharedPages`]) ends each grant
//!   only if the peer does not map it; a page still mapped stays out of the pool until its
//!   grant can end ([`Platform::reap_grants`], and before every allocation).
//! - **Waiting is `SCHEDOP_poll`** on the vchan's port with upcalls masked; the clock is Xen's
//!   system time, so a deadline is passed to Xen as it is.

use core::time::Duration;

use vchan::bare::BarePlatform;
use vchan::platform::{self as core_platform, GrantedPages, XenstoreError};
use xen_types::{DomId, GrantRef, Port, UnmapNotify};

use super::{ForeignMapping, Platform, PortBell, SharedPages};
use crate::error::PvError;
use crate::store::StoreClient;
use crate::time::Instant;

/// The guest's event channels, grants and store as the vchan channel core opens them. Every
/// "handle" is this same value: a guest has one set of devices, and its ports, grants and
/// mappings are owned by the values the calls return (the core closes each port it binds).
#[derive(Debug, Clone, Copy)]
pub struct Devices {
    platform: &'static Platform,
}

impl Platform {
    /// The devices of this guest for the vchan channel core and its bare driver.
    pub fn devices(&'static self) -> Devices {
        Devices { platform: self }
    }
}

impl Devices {
    /// The platform underneath.
    pub fn platform(&self) -> &'static Platform {
        self.platform
    }
}

impl core_platform::EventChannels for Devices {
    type Error = PvError;
    fn bind_unbound_port(&self, remote: DomId) -> Result<Port, PvError> {
        self.platform.bind_unbound_port(remote)
    }
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PvError> {
        self.platform.bind_interdomain(remote, remote_port)
    }
    fn notify(&self, port: Port) -> Result<(), PvError> {
        self.platform.notify(port)
    }
    fn unmask(&self, port: Port) -> Result<(), PvError> {
        self.platform.unmask(port)
    }
    fn unbind(&self, port: Port) -> Result<(), PvError> {
        self.platform.unbind(port)
    }
}

impl GrantedPages for SharedPages<'static> {
    fn refs(&self) -> &[GrantRef] {
        SharedPages::refs(self)
    }
}

impl core_platform::GrantShare for Devices {
    type Error = PvError;
    type Pages = SharedPages<'static>;
    /// Grant `count` zeroed pages; `notify` is ignored (a guest has no unmap notification).
    fn share_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
        _notify: Option<UnmapNotify>,
    ) -> Result<SharedPages<'static>, PvError> {
        self.platform.share_pages(domid, count, writable)
    }
}

impl core_platform::GrantMap for Devices {
    type Error = PvError;
    type Mapping = ForeignMapping<'static>;
    /// Map `refs` into one range; `notify` is ignored (a guest has no unmap notification).
    fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
        _notify: Option<UnmapNotify>,
    ) -> Result<ForeignMapping<'static>, PvError> {
        self.platform.map_grant_refs(domid, refs, writable)
    }

    /// Nothing to arrange: a guest has no unmap notification (its clean close clears the live
    /// byte and notifies instead).
    fn set_unmap_notify(&self, _: &ForeignMapping<'static>, _: UnmapNotify) -> Result<(), PvError> {
        Ok(())
    }
}

impl core_platform::Platform for Devices {
    type DeviceError = PvError;
    type Events = Devices;
    type Sharer = Devices;
    type Mapper = Devices;
    type Store = &'static StoreClient<'static, PortBell>;

    fn events(&self) -> Result<Devices, PvError> {
        Ok(*self)
    }
    fn sharer(&self) -> Result<Devices, PvError> {
        Ok(*self)
    }
    fn mapper(&self) -> Result<Devices, PvError> {
        Ok(*self)
    }
    fn store(&self) -> Result<Self::Store, XenstoreError> {
        Ok(self.platform.store())
    }
}

/// Xen's system time as the bare driver's clock (nanoseconds since Xen booted).
fn instant(at: Duration) -> Instant {
    Instant(u64::try_from(at.as_nanos()).unwrap_or(u64::MAX))
}

impl BarePlatform for Devices {
    fn clear_event(&self, _: &Devices, port: Port) -> Result<(), PvError> {
        self.platform.take_event(port).map(drop)
    }

    fn wait_event(
        &self,
        _: &Devices,
        port: Port,
        deadline: Option<Duration>,
    ) -> Result<(), PvError> {
        self.platform
            .wait_event(&[port], deadline.map(instant))
            .map(drop)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.platform.now().0)
    }
}
