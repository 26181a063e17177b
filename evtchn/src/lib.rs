//! Xen event channels.
//!
//! [`EventChannel`] is the portable surface: what a consumer such as vchan needs from an event
//! channel handle, named after libxenevtchn's calls. Backends:
//! - [`linux`]: real Xen, through `/dev/xen/evtchn`.
//! - the simulated Xen (crate `xensim`): in process and across processes.
#![deny(unsafe_code)]

use std::io;
use std::os::fd::AsFd;

pub use xen_types::{DomId, Port};

#[cfg(target_os = "linux")]
pub mod linux;

/// An open event-channel handle (`xenevtchn_handle`): a set of bound ports and one pollable fd that
/// becomes readable while any of them has an event pending.
///
/// Delivery follows the Linux driver: a port that fires is masked until [`unmask`] re-arms it, and
/// events that arrive while it is masked coalesce into one.
///
/// [`unmask`]: EventChannel::unmask
pub trait EventChannel: AsFd + Send + Sync {
    /// Allocate a port that `remote` may bind to with [`bind_interdomain`](Self::bind_interdomain).
    fn bind_unbound_port(&self, remote: DomId) -> io::Result<Port>;
    /// Bind a local port to `remote_port`, an unbound port of `remote` that was allocated for us.
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> io::Result<Port>;
    /// Send an event to the other end of `port`.
    fn notify(&self, port: Port) -> io::Result<()>;
    /// The next port with a delivered event, or `None` when nothing is pending. Never blocks: wait
    /// for the fd to become readable first.
    fn pending(&self) -> io::Result<Option<Port>>;
    /// Re-arm a port after its event was taken with [`pending`](Self::pending).
    fn unmask(&self, port: Port) -> io::Result<()>;
    /// Release a port.
    fn unbind(&self, port: Port) -> io::Result<()>;
}
