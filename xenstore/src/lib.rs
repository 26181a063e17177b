//! Xenstore: the wire protocol, a client, a store and a daemon.
//!
//! The [`XenStore`] trait is the one interface every user of the store programs against (vchan's
//! negotiation, the tools): it is implemented by the socket client and by a connection to the
//! in-process store, so the same code runs on real Xen, on the simulated host and in unit tests.
//!
//! ```
//! # #[cfg(feature = "store")] {
//! use std::time::Duration;
//! use xenstore::local::LocalStore;
//! use xenstore::{DomId, TxId, XenStore};
//!
//! let store = LocalStore::new(); // the in-process store of the simulation
//! let dom0 = store.connect(DomId(0));
//! dom0.watch("/vm", "vm-changed").unwrap();
//! dom0.transaction(|tx| {
//!     dom0.write(tx, "/vm/ring-ref", b"8")?;
//!     dom0.write(tx, "/vm/event-channel", b"3")
//! })
//! .unwrap();
//! let first = dom0.next_watch_event(Some(Duration::from_secs(5))).unwrap().unwrap();
//! assert_eq!(first.path, "/vm"); // a new watch fires once at once
//! assert_eq!(dom0.read(TxId::NONE, "/vm/ring-ref").unwrap(), b"8");
//! # }
//! ```
//!
//! Modules: [`wire`] (the sans-IO codec), [`store`] (the tree and its semantics), [`local`] (the
//! in-process store), [`client`] (libxenstore's counterpart over a socket or `/dev/xen/xenbus`),
//! [`daemon`] (serves a store over one Unix socket per domain).
//!
//! # Features
//!
//! Without features the crate is `no_std` (with `alloc`): the codec ([`wire`]), the error names,
//! permissions and the [`XenStore`] trait, for a guest with no OS (the `xen-pv` platform crate).
//!
//! - `std`: the client ([`client`]) and `io::Error` conversions. A dom0 tool that only talks to
//!   a real xenstored (`default-features = false, features = ["std"]`) links nothing else.
//! - `store`: the in-memory store with xenstored's semantics ([`store`]) and the in-process store
//!   ([`local`]); implies `std`.
//! - `daemon` (default): the socket daemon ([`daemon`]); implies `store`.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;
use core::time::Duration;

#[cfg(feature = "std")]
pub mod client;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "store")]
pub mod local;
#[cfg(feature = "store")]
pub mod store;
pub mod wire;

pub use xen_types::DomId;

/// A transaction id; [`TxId::NONE`] means "outside any transaction".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u32);

impl TxId {
    /// No transaction.
    pub const NONE: TxId = TxId(0);
}

/// The errors a xenstore daemon names on the wire (`ERROR` replies carry the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Errno {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
}

impl Errno {
    /// Every error name, in the order of xs_wire.h's table.
    pub const ALL: [Errno; 16] = [
        Errno::EINVAL,
        Errno::EACCES,
        Errno::EEXIST,
        Errno::EISDIR,
        Errno::ENOENT,
        Errno::ENOMEM,
        Errno::ENOSPC,
        Errno::EIO,
        Errno::ENOTEMPTY,
        Errno::ENOSYS,
        Errno::EROFS,
        Errno::EBUSY,
        Errno::EAGAIN,
        Errno::EISCONN,
        Errno::E2BIG,
        Errno::EPERM,
    ];

    /// The name as it appears on the wire (without the NUL).
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EINVAL => "EINVAL",
            Errno::EACCES => "EACCES",
            Errno::EEXIST => "EEXIST",
            Errno::EISDIR => "EISDIR",
            Errno::ENOENT => "ENOENT",
            Errno::ENOMEM => "ENOMEM",
            Errno::ENOSPC => "ENOSPC",
            Errno::EIO => "EIO",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::ENOSYS => "ENOSYS",
            Errno::EROFS => "EROFS",
            Errno::EBUSY => "EBUSY",
            Errno::EAGAIN => "EAGAIN",
            Errno::EISCONN => "EISCONN",
            Errno::E2BIG => "E2BIG",
            Errno::EPERM => "EPERM",
        }
    }

    /// The matching Linux errno value (for `io::Error` conversion and C shims).
    #[cfg(feature = "std")]
    pub const fn raw_os_error(self) -> i32 {
        use nix::errno::Errno as Sys;
        match self {
            Errno::EINVAL => Sys::EINVAL as i32,
            Errno::EACCES => Sys::EACCES as i32,
            Errno::EEXIST => Sys::EEXIST as i32,
            Errno::EISDIR => Sys::EISDIR as i32,
            Errno::ENOENT => Sys::ENOENT as i32,
            Errno::ENOMEM => Sys::ENOMEM as i32,
            Errno::ENOSPC => Sys::ENOSPC as i32,
            Errno::EIO => Sys::EIO as i32,
            Errno::ENOTEMPTY => Sys::ENOTEMPTY as i32,
            Errno::ENOSYS => Sys::ENOSYS as i32,
            Errno::EROFS => Sys::EROFS as i32,
            Errno::EBUSY => Sys::EBUSY as i32,
            Errno::EAGAIN => Sys::EAGAIN as i32,
            Errno::EISCONN => Sys::EISCONN as i32,
            Errno::E2BIG => Sys::E2BIG as i32,
            Errno::EPERM => Sys::EPERM as i32,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Errno {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Errno::ALL.into_iter().find(|e| e.name() == s).ok_or(())
    }
}

/// What a domain may do with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: nothing.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

/// One entry of a node's permission list. The first entry names the owner, and its access is the
/// default for every domain not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain this entry is about.
    pub domid: DomId,
    /// What it may do.
    pub access: Access,
}

impl Perm {
    /// A permission entry.
    pub const fn new(domid: DomId, access: Access) -> Perm {
        Perm { domid, access }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letter = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        write!(f, "{letter}{}", self.domid)
    }
}

impl FromStr for Perm {
    type Err = XenstoreError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || XenstoreError::Protocol(format!("invalid permission {s:?}"));
        let mut chars = s.chars();
        let access = match chars.next().ok_or_else(bad)? {
            'n' => Access::None,
            'r' => Access::Read,
            'w' => Access::Write,
            'b' => Access::Both,
            _ => return Err(bad()),
        };
        let domid = chars.as_str().parse().map_err(|_| bad())?;
        Ok(Perm { domid, access })
    }
}

/// A watch firing: the path that changed (or the watched special path) and the watch's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed.
    pub path: String,
    /// The token given when the watch was registered.
    pub token: String,
}

/// Everything that can go wrong talking to a xenstore.
#[derive(Debug, thiserror::Error)]
pub enum XenstoreError {
    /// The daemon answered with an error name.
    #[error("xenstore replied {0}")]
    Errno(Errno),
    /// The connection to the daemon failed.
    #[cfg(feature = "std")]
    #[error("xenstore connection failed")]
    Io(#[from] std::io::Error),
    /// A message broke the wire protocol.
    #[error("xenstore protocol violation: {0}")]
    Protocol(String),
}

impl XenstoreError {
    /// The wire error name, if the daemon sent one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            XenstoreError::Errno(e) => Some(*e),
            _ => None,
        }
    }
}

impl From<Errno> for XenstoreError {
    fn from(e: Errno) -> Self {
        XenstoreError::Errno(e)
    }
}

#[cfg(feature = "std")]
impl From<XenstoreError> for std::io::Error {
    fn from(e: XenstoreError) -> Self {
        match e {
            XenstoreError::Io(io) => io,
            XenstoreError::Errno(errno) => std::io::Error::from_raw_os_error(errno.raw_os_error()),
            XenstoreError::Protocol(_) => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = XenstoreError> = core::result::Result<T, E>;

/// The operations of a xenstore connection, as one domain sees the store.
///
/// Relative paths resolve under `/local/domain/<the connection's domid>/`.
pub trait XenStore {
    /// Read a node's value.
    fn read(&self, tx: TxId, path: &str) -> Result<Vec<u8>>;
    /// Write a node's value, creating it and any missing parents.
    fn write(&self, tx: TxId, path: &str, value: &[u8]) -> Result<()>;
    /// Create a node with an empty value (no error if it exists).
    fn mkdir(&self, tx: TxId, path: &str) -> Result<()>;
    /// Remove a node and everything under it.
    fn rm(&self, tx: TxId, path: &str) -> Result<()>;
    /// The names of a node's children.
    fn directory(&self, tx: TxId, path: &str) -> Result<Vec<String>>;
    /// A node's permission list (owner first).
    fn get_perms(&self, tx: TxId, path: &str) -> Result<Vec<Perm>>;
    /// Replace a node's permission list (owner first).
    fn set_perms(&self, tx: TxId, path: &str, perms: &[Perm]) -> Result<()>;
    /// Begin a transaction.
    fn transaction_start(&self) -> Result<TxId>;
    /// Commit (`commit = true`) or abort a transaction; a conflicting commit fails with `EAGAIN`.
    fn transaction_end(&self, tx: TxId, commit: bool) -> Result<()>;
    /// Register a watch; it fires once at once, then on every change at or under `path`.
    fn watch(&self, path: &str, token: &str) -> Result<()>;
    /// Remove a watch.
    fn unwatch(&self, path: &str, token: &str) -> Result<()>;
    /// Wait for the next watch event on this connection: `Ok(None)` when `timeout` passes first.
    fn next_watch_event(&self, timeout: Option<Duration>) -> Result<Option<WatchEvent>>;
    /// The home path of a domain (`/local/domain/<domid>`).
    fn get_domain_path(&self, domid: DomId) -> Result<String>;

    /// Run `body` in a transaction and commit it, starting again while the commit reports `EAGAIN`.
    /// An error from `body` aborts the transaction and is returned.
    fn transaction<T>(&self, mut body: impl FnMut(TxId) -> Result<T>) -> Result<T>
    where
        Self: Sized,
    {
        loop {
            let tx = self.transaction_start()?;
            let value = match body(tx) {
                Ok(value) => value,
                Err(e) => {
                    // The body's error is the one worth reporting; an abort failure adds nothing.
                    let _ = self.transaction_end(tx, false);
                    return Err(e);
                }
            };
            match self.transaction_end(tx, true) {
                Ok(()) => return Ok(value),
                Err(XenstoreError::Errno(Errno::EAGAIN)) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

macro_rules! forward_xenstore {
    ($($ty:ty),*) => {$(
        /// Forwards every call to the store behind the reference.
        impl<S: XenStore + ?Sized> XenStore for $ty {
            fn read(&self, tx: TxId, path: &str) -> Result<Vec<u8>> {
                (**self).read(tx, path)
            }
            fn write(&self, tx: TxId, path: &str, value: &[u8]) -> Result<()> {
                (**self).write(tx, path, value)
            }
            fn mkdir(&self, tx: TxId, path: &str) -> Result<()> {
                (**self).mkdir(tx, path)
            }
            fn rm(&self, tx: TxId, path: &str) -> Result<()> {
                (**self).rm(tx, path)
            }
            fn directory(&self, tx: TxId, path: &str) -> Result<Vec<String>> {
                (**self).directory(tx, path)
            }
            fn get_perms(&self, tx: TxId, path: &str) -> Result<Vec<Perm>> {
                (**self).get_perms(tx, path)
            }
            fn set_perms(&self, tx: TxId, path: &str, perms: &[Perm]) -> Result<()> {
                (**self).set_perms(tx, path, perms)
            }
            fn transaction_start(&self) -> Result<TxId> {
                (**self).transaction_start()
            }
            fn transaction_end(&self, tx: TxId, commit: bool) -> Result<()> {
                (**self).transaction_end(tx, commit)
            }
            fn watch(&self, path: &str, token: &str) -> Result<()> {
                (**self).watch(path, token)
            }
            fn unwatch(&self, path: &str, token: &str) -> Result<()> {
                (**self).unwatch(path, token)
            }
            fn next_watch_event(&self, timeout: Option<Duration>) -> Result<Option<WatchEvent>> {
                (**self).next_watch_event(timeout)
            }
            fn get_domain_path(&self, domid: DomId) -> Result<String> {
                (**self).get_domain_path(domid)
            }
        }
    )*};
}

forward_xenstore!(&S, Box<S>, alloc::sync::Arc<S>);

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    #[test]
    fn errno_values_are_the_system_ones() {
        let kind = |e: Errno| std::io::Error::from_raw_os_error(e.raw_os_error()).kind();
        assert_eq!(kind(Errno::ENOENT), ErrorKind::NotFound);
        assert_eq!(kind(Errno::EACCES), ErrorKind::PermissionDenied);
        assert_eq!(kind(Errno::EEXIST), ErrorKind::AlreadyExists);
        assert_eq!(kind(Errno::EINVAL), ErrorKind::InvalidInput);
        assert_eq!(kind(Errno::EAGAIN), ErrorKind::WouldBlock);
        // Linux's numbers, which the C shims hand on unchanged.
        assert_eq!(Errno::EPERM.raw_os_error(), 1);
        assert_eq!(Errno::ENOSPC.raw_os_error(), 28);
        let mut raw: Vec<i32> = Errno::ALL.iter().map(|e| e.raw_os_error()).collect();
        raw.sort_unstable();
        raw.dedup();
        assert_eq!(raw.len(), Errno::ALL.len(), "distinct values");
    }
}
