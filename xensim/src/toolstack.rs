//! The toolstack: what `xl create` and `xl destroy` do around the hypervisor, in one place for
//! both front-ends.
//!
//! Creating a domain makes it in the hypervisor, writes its xenstore home
//! (`/local/domain/<domid>` with `domid` and `name`, owned by the domain, readable by nobody
//! else but the privileged dom0) and introduces it to xenstore (`@introduceDomain`). Destroying
//! it destroys it in the hypervisor (its handles close, their unmap notifications fire, its
//! processes die), removes its home and releases it (`@releaseDomain`): a peer that reads the
//! home learns the domain is gone.

use std::fmt;
use std::io;

use xen_types::DomId;
use xenstore::local::{LocalConnection, LocalStore};
use xenstore::{Access, Perm, TxId, XenStore, XenstoreError};

#[cfg(not(miri))]
use crate::client::HostControl;
#[cfg(not(miri))]
use crate::host::Host;
use crate::inproc::SimHypervisor;

/// The hypervisor's side of domain life, as a front-end offers it to the toolstack.
pub trait DomainControl {
    /// Create domain `domid` (`EEXIST` if it exists).
    fn create_domain(&self, domid: DomId) -> io::Result<()>;
    /// Destroy domain `domid` (`ESRCH` if it does not exist).
    fn destroy_domain(&self, domid: DomId) -> io::Result<()>;
}

impl DomainControl for SimHypervisor {
    fn create_domain(&self, domid: DomId) -> io::Result<()> {
        SimHypervisor::create_domain(self, domid)
    }
    fn destroy_domain(&self, domid: DomId) -> io::Result<()> {
        SimHypervisor::destroy_domain(self, domid)
    }
}

#[cfg(not(miri))]
impl DomainControl for HostControl {
    fn create_domain(&self, domid: DomId) -> io::Result<()> {
        HostControl::create_domain(self, domid)
    }
    fn destroy_domain(&self, domid: DomId) -> io::Result<()> {
        HostControl::destroy_domain(self, domid)
    }
}

#[cfg(not(miri))]
impl DomainControl for Host {
    fn create_domain(&self, domid: DomId) -> io::Result<()> {
        Host::create_domain(self, domid)
    }
    fn destroy_domain(&self, domid: DomId) -> io::Result<()> {
        Host::destroy_domain(self, domid)
    }
}

/// The store's side: dom0's connection, and introducing and releasing domains.
pub trait DomainStore {
    /// Dom0's connection, through which the toolstack writes.
    fn dom0(&self) -> &impl XenStore;
    /// Introduce `domid` (`@introduceDomain`).
    fn introduce(&self, domid: DomId) -> xenstore::Result<()>;
    /// Release `domid` (`@releaseDomain`).
    fn release(&self, domid: DomId) -> xenstore::Result<()>;
}

/// A xenstored (ours under `xensim serve`, or any other) reached as dom0.
impl DomainStore for xenstore::client::Client {
    fn dom0(&self) -> &impl XenStore {
        self
    }
    fn introduce(&self, domid: DomId) -> xenstore::Result<()> {
        xenstore::client::Client::introduce(self, domid, 0, 0)
    }
    fn release(&self, domid: DomId) -> xenstore::Result<()> {
        xenstore::client::Client::release(self, domid)
    }
}

/// An in-process store, with dom0's connection to it.
#[derive(Debug)]
pub struct LocalDomainStore {
    store: LocalStore,
    dom0: LocalConnection,
}

impl LocalDomainStore {
    /// The toolstack's view of `store`.
    pub fn new(store: &LocalStore) -> LocalDomainStore {
        LocalDomainStore {
            store: store.clone(),
            dom0: store.connect(DomId::DOM0),
        }
    }
}

impl DomainStore for LocalDomainStore {
    fn dom0(&self) -> &impl XenStore {
        &self.dom0
    }
    fn introduce(&self, domid: DomId) -> xenstore::Result<()> {
        self.store.introduce_domain(domid);
        Ok(())
    }
    fn release(&self, domid: DomId) -> xenstore::Result<()> {
        self.store.release_domain(domid);
        Ok(())
    }
}

/// What went wrong in the toolstack, and on which side.
#[derive(Debug)]
pub enum ToolstackError {
    /// The domain exists already (create).
    Exists(DomId),
    /// The domain does not exist (destroy).
    NoSuchDomain(DomId),
    /// Dom0 cannot be destroyed.
    Dom0,
    /// The hypervisor refused.
    Hypervisor(DomId, io::Error),
    /// The store refused; a domain being created was destroyed again.
    Store(DomId, XenstoreError),
}

impl fmt::Display for ToolstackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolstackError::Exists(d) => write!(f, "domain {d} already exists"),
            ToolstackError::NoSuchDomain(d) => write!(f, "domain {d} does not exist"),
            ToolstackError::Dom0 => write!(f, "dom0 cannot be destroyed"),
            ToolstackError::Hypervisor(d, _) => write!(f, "the hypervisor refused domain {d}"),
            ToolstackError::Store(d, _) => write!(f, "xenstore refused domain {d}'s keys"),
        }
    }
}

impl std::error::Error for ToolstackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ToolstackError::Hypervisor(_, e) => Some(e),
            ToolstackError::Store(_, e) => Some(e),
            _ => None,
        }
    }
}

/// A domain's xenstore home.
pub fn domain_home(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// Write `domid`'s home with its `domid` and `name` keys, owned by the domain (dom0 reads
/// everything anyway; other domains read nothing of it).
pub fn write_domain_home(store: &impl XenStore, domid: DomId, name: &str) -> xenstore::Result<()> {
    let home = domain_home(domid);
    let perms = [Perm::new(domid, Access::None)];
    store.transaction(|tx| {
        store.mkdir(tx, &home)?;
        store.set_perms(tx, &home, &perms)?;
        for (key, value) in [("domid", domid.to_string()), ("name", name.to_owned())] {
            let path = format!("{home}/{key}");
            store.write(tx, &path, value.as_bytes())?;
            store.set_perms(tx, &path, &perms)?;
        }
        Ok(())
    })
}

fn errno(e: &io::Error) -> Option<nix::errno::Errno> {
    e.raw_os_error().map(nix::errno::Errno::from_raw)
}

/// Create domain `domid` named `name`: in the hypervisor, its home, and introduced. If the store
/// refuses, the domain is destroyed again.
pub fn create_domain(
    hypervisor: &impl DomainControl,
    store: &impl DomainStore,
    domid: DomId,
    name: &str,
) -> Result<(), ToolstackError> {
    hypervisor
        .create_domain(domid)
        .map_err(|e| match errno(&e) {
            Some(nix::errno::Errno::EEXIST) => ToolstackError::Exists(domid),
            _ => ToolstackError::Hypervisor(domid, e),
        })?;
    let keys = write_domain_home(store.dom0(), domid, name).and_then(|()| store.introduce(domid));
    if let Err(e) = keys {
        let _ = hypervisor.destroy_domain(domid);
        return Err(ToolstackError::Store(domid, e));
    }
    Ok(())
}

/// Destroy domain `domid`: in the hypervisor, then its home goes and it is released.
pub fn destroy_domain(
    hypervisor: &impl DomainControl,
    store: &impl DomainStore,
    domid: DomId,
) -> Result<(), ToolstackError> {
    if domid == DomId::DOM0 {
        return Err(ToolstackError::Dom0);
    }
    hypervisor
        .destroy_domain(domid)
        .map_err(|e| match errno(&e) {
            Some(nix::errno::Errno::ESRCH) => ToolstackError::NoSuchDomain(domid),
            _ => ToolstackError::Hypervisor(domid, e),
        })?;
    store
        .dom0()
        .rm(TxId::NONE, &domain_home(domid))
        .and_then(|()| store.release(domid))
        .map_err(|e| ToolstackError::Store(domid, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_domain_has_its_home_and_a_destroyed_one_has_none() {
        let hypervisor = SimHypervisor::new();
        let store = LocalStore::new();
        let tools = LocalDomainStore::new(&store);
        write_domain_home(tools.dom0(), DomId::DOM0, "Domain-0").unwrap();
        create_domain(&hypervisor, &tools, DomId(4), "four").unwrap();
        assert!(hypervisor.domain_exists(DomId(4)));
        assert!(store.is_domain_introduced(DomId(4)));
        let guest = store.connect(DomId(4));
        assert_eq!(
            guest.read(TxId::NONE, "/local/domain/4/name").unwrap(),
            b"four"
        );
        let other = store.connect(DomId::DOM0);
        assert_eq!(
            other.get_perms(TxId::NONE, "/local/domain/4").unwrap(),
            [Perm::new(DomId(4), Access::None)]
        );
        assert!(matches!(
            create_domain(&hypervisor, &tools, DomId(4), "again"),
            Err(ToolstackError::Exists(DomId(4)))
        ));
        destroy_domain(&hypervisor, &tools, DomId(4)).unwrap();
        assert!(!hypervisor.domain_exists(DomId(4)));
        assert!(!store.is_domain_introduced(DomId(4)));
        assert!(other.read(TxId::NONE, "/local/domain/4").is_err());
        assert!(matches!(
            destroy_domain(&hypervisor, &tools, DomId(4)),
            Err(ToolstackError::NoSuchDomain(DomId(4)))
        ));
        assert!(matches!(
            destroy_domain(&hypervisor, &tools, DomId::DOM0),
            Err(ToolstackError::Dom0)
        ));
    }
}
