//! The simulated Xen: one hypervisor model with two front-ends, so everything that needs Xen
//! runs without it.
//!
//! - [`model`]: the hypervisor itself (domains, event channels, grant tables, unmap
//!   notifications), a state machine with no I/O driven by typed requests. Every rule lives here.
//! - [`inproc`]: the in-process front-end ([`SimHypervisor`]): several domains in one process,
//!   for tests, examples and benchmarks (`vchan::sim` builds its backend on it).
//! - [`host`] and [`client`]: the cross-process front-end. [`Host`] serves the model on a Unix
//!   socket (`xensim serve`); [`XensimEvtchn`] and [`XensimGnt`] are a process's device handles,
//!   each one connection, so a dying process's handles close and the host reclaims them; the
//!   stand-in `libxenevtchn`/`libxengnttab` put C programs on it. Private to the crate: `wire`,
//!   their protocol (typed requests and replies, encoded and decoded in one place), and
//!   `process`, how the host names and kills a process safely.
//! - `memory` (private): granted memory (memfds) and mappings stitched from it, read-only when
//!   asked, for both front-ends.
//! - [`toolstack`]: creating and destroying a domain (hypervisor, xenstore home, introduce and
//!   release), once for both.
//!
//! The traits the front-ends implement ([`evtchn::EventChannel`], [`gnttab::GrantShare`],
//! [`gnttab::GrantMap`]) and the real Linux backends live in `evtchn` and `gnttab`, which know
//! nothing of this crate.
//!
//! ```
//! use evtchn::EventChannel;
//! use gnttab::{GrantMap, GrantShare, SharedMemory, SharedPages};
//! use xen_types::DomId;
//! use xensim::SimHypervisor;
//!
//! let xen = SimHypervisor::new();
//! xen.create_domain(DomId(5)).unwrap();
//! let server = xen.open_events(DomId(0)).unwrap();
//! let client = xen.open_events(DomId(5)).unwrap();
//! let server_port = server.bind_unbound_port(DomId(5)).unwrap();
//! let client_port = client.bind_interdomain(DomId(0), server_port).unwrap();
//! client.notify(client_port).unwrap();
//! assert_eq!(server.pending().unwrap(), Some(server_port));
//!
//! let shared = xen.open_sharer(DomId(0)).unwrap().share_pages(DomId(5), 2, true, None).unwrap();
//! let mapped = xen.open_mapper(DomId(5)).unwrap().map_grant_refs(DomId(0), shared.refs(), true, None).unwrap();
//! assert_eq!(mapped.len(), 2 * 4096);
//! assert_eq!(xen.stats().grants, 2);
//! ```

#![deny(unsafe_code)]

use std::sync::{Mutex, MutexGuard, PoisonError};

// The cross-process front-end passes memfds: not under Miri, which has none.
#[cfg(not(miri))]
pub mod client;
#[cfg(not(miri))]
pub mod host;
pub mod inproc;
// Mappings at chosen addresses, and (under Miri) the heap block standing in for a memfd.
#[allow(unsafe_code)]
mod memory;
pub mod model;
// pidfd_open and pidfd_send_signal, which nix does not wrap.
#[cfg(not(miri))]
#[allow(unsafe_code)]
mod process;
pub mod toolstack;
// Under Miri only the environment's names are used: the sockets belong to the cross-process
// front-end.
#[cfg_attr(miri, allow(dead_code))]
mod wire;

#[cfg(not(miri))]
pub use client::{HostControl, XensimEvtchn, XensimGnt, XensimMapping, XensimShared};
#[cfg(not(miri))]
pub use host::Host;
pub use inproc::{SimEvtchn, SimGnt, SimHypervisor, SimMapping, SimShared};
pub use model::Stats;
pub use wire::{env_config, ENV_DIR, ENV_DOMID};

/// Lock a mutex, carrying on after a panic elsewhere: the simulated hypervisor's tables stay
/// usable, as losing the whole simulation would be worse than a half-finished operation.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
