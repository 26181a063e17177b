//! The real-Xen backend: the Linux `/dev/xen` devices and the xenstore daemon.
//!
//! [`XenDomain`] implements [`Backend`] with [`gnttab::linux::Gntshr`] (gntalloc),
//! [`gnttab::linux::Gnttab`] (gntdev), [`evtchn::linux::Evtchn`] and
//! [`xenstore::client::Client`] (the daemon's Unix socket, or `/dev/xen/xenbus` in a guest,
//! found as libxenstore finds them). [`available`] tells whether this machine is a Xen domain
//! whose devices can be opened, so a tool can pick this backend at run time:
//!
//! ```no_run
//! use std::io::Write;
//! use vchan::xen::{self, XenDomain};
//! use vchan::{Address, RingSizes, Vchan};
//! use xen_types::DomId;
//!
//! if xen::available() {
//!     let xen = XenDomain::new();
//!     let mut server = Vchan::server(&xen, DomId(3), &Address::Port(1), RingSizes::default())?;
//!     server.wait_connected(None)?;
//!     server.write_all(b"hello, domain 3")?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Loopback (serving a client in the same domain) is allowed: it works with the Debian 6.1
//! kernel on Xen 4.17 and the QEMU tier (`tests/qemu`) runs it, but some older Linux kernels are
//! known to crash in gntalloc doing it (see PROTOCOL.md §7); do not rely on it there.

use std::io;
use std::path::PathBuf;

use evtchn::linux::{Evtchn, EVTCHN_PATH};
use gnttab::linux::{Gntshr, Gnttab, GNTALLOC_PATH, GNTDEV_PATH};
use xenstore::client::Client;

use crate::backend::Backend;

/// This domain as seen through the Linux Xen devices and the xenstore daemon.
///
/// Device paths default to `/dev/xen/{evtchn,gntalloc,gntdev}`; they can be changed for
/// containers or test rigs that put them elsewhere.
#[derive(Debug, Clone)]
pub struct XenDomain {
    evtchn: PathBuf,
    gntalloc: PathBuf,
    gntdev: PathBuf,
}

impl Default for XenDomain {
    fn default() -> Self {
        XenDomain {
            evtchn: PathBuf::from(EVTCHN_PATH),
            gntalloc: PathBuf::from(GNTALLOC_PATH),
            gntdev: PathBuf::from(GNTDEV_PATH),
        }
    }
}

impl XenDomain {
    /// The standard device paths.
    pub fn new() -> XenDomain {
        XenDomain::default()
    }

    /// Use the devices under `dir` (named `evtchn`, `gntalloc`, `gntdev`) instead of `/dev/xen`.
    pub fn with_device_dir(dir: impl Into<PathBuf>) -> XenDomain {
        let dir = dir.into();
        XenDomain {
            evtchn: dir.join("evtchn"),
            gntalloc: dir.join("gntalloc"),
            gntdev: dir.join("gntdev"),
        }
    }

    /// Open each device once and close it again: `Ok` when all three can be used (the store is
    /// not contacted). The error names the first device that could not be opened.
    pub fn probe(&self) -> io::Result<()> {
        Evtchn::open_path(&self.evtchn)?;
        Gntshr::open_path(&self.gntalloc)?;
        Gnttab::open_path(&self.gntdev)?;
        Ok(())
    }
}

/// Whether this process can use real Xen: the event-channel, gntalloc and gntdev devices under
/// `/dev/xen` open read-write (which needs the `xen-evtchn`, `xen-gntalloc` and `xen-gntdev`
/// drivers and, usually, root).
pub fn available() -> bool {
    XenDomain::new().probe().is_ok()
}

impl Backend for XenDomain {
    type Events = Evtchn;
    type Sharer = Gntshr;
    type Mapper = Gnttab;
    type Store = Client;

    fn open_events(&self) -> io::Result<Evtchn> {
        Evtchn::open_path(&self.evtchn)
    }

    fn open_sharer(&self) -> io::Result<Gntshr> {
        Gntshr::open_path(&self.gntalloc)
    }

    fn open_mapper(&self) -> io::Result<Gnttab> {
        Gnttab::open_path(&self.gntdev)
    }

    fn open_store(&self) -> xenstore::Result<Client> {
        Client::open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Address, RingSizes, Vchan, VchanError};
    use xen_types::DomId;

    #[test]
    fn missing_devices_are_reported_not_panicked_on() {
        let xen = XenDomain::with_device_dir("/nonexistent/xen");
        let err = xen.probe().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/xen/evtchn"), "{err}");
        assert!(xen.open_events().is_err());
        assert!(xen.open_sharer().is_err());
        assert!(xen.open_mapper().is_err());
    }

    #[test]
    fn a_server_without_xen_fails_with_an_error() {
        // With no xenstore daemon reachable (or no devices) this must be a clean error.
        let xen = XenDomain::with_device_dir("/nonexistent/xen");
        if xenstore::client::Client::open().is_ok() {
            return; // Running inside a Xen domain: covered by the QEMU tier instead.
        }
        let result = Vchan::server(&xen, DomId(1), &Address::Port(1), RingSizes::default());
        // (A daemon started meanwhile by another test would move the failure to the devices.)
        assert!(
            matches!(
                result,
                Err(VchanError::Xenstore(_) | VchanError::Backend { .. })
            ),
            "{result:?}"
        );
    }
}
