//! What an endpoint needs from the platform: grant sharing, grant mapping, event channels and a
//! key store. A platform (real Xen, the simulated host, a test double) implements [`Backend`] once.

use std::io;

use evtchn::EventChannel;
use gnttab::{GrantMap, GrantShare};
use xenstore::XenStore;

/// A platform's devices, as one domain sees them. Each endpoint opens its own handles, as
/// libxenvchan does.
pub trait Backend {
    /// Event-channel handle.
    type Events: EventChannel;
    /// Grant-sharing handle (used by servers).
    type Sharer: GrantShare;
    /// Grant-mapping handle (used by clients).
    type Mapper: GrantMap;
    /// Xenstore connection.
    type Store: XenStore + Send + Sync + 'static;

    /// Open an event-channel handle.
    fn open_events(&self) -> io::Result<Self::Events>;
    /// Open a grant-sharing handle.
    fn open_sharer(&self) -> io::Result<Self::Sharer>;
    /// Open a grant-mapping handle.
    fn open_mapper(&self) -> io::Result<Self::Mapper>;
    /// Connect to the key store.
    fn open_store(&self) -> xenstore::Result<Self::Store>;
}
