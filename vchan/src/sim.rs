//! The embedded simulated Xen: several domains in one process, for tests, examples and
//! benchmarks with no hypervisor.
//!
//! [`SimXen`] bundles the simulated hypervisor's in-process front-end
//! ([`xensim::SimHypervisor`]: event channels, grant tables, unmap notifications) and an
//! in-process xenstore ([`xenstore::local`]), with domains made by the same toolstack as
//! `xensim create` ([`xensim::toolstack`]); [`SimDomain`] is one domain's view of them and
//! implements [`Backend`]. [`SimXen::check_leaks`] is the clean-up check: once every endpoint is
//! gone, no grant, mapping, port or xenstore key may remain.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use xen_types::DomId;
use xensim::toolstack::{self, LocalDomainStore, ToolstackError};
use xensim::{SimEvtchn, SimGnt, SimHypervisor};
use xenstore::local::{LocalConnection, LocalStore};
use xenstore::{TxId, XenStore};

use crate::backend::Backend;

/// A simulated Xen host: dom0 exists from the start; create more domains with
/// [`create_domain`](SimXen::create_domain).
#[derive(Clone)]
pub struct SimXen {
    hypervisor: SimHypervisor,
    store: LocalStore,
    /// The store's nodes that belong to the host itself (domains' home directories).
    baseline: Arc<Mutex<BTreeSet<String>>>,
}

impl Default for SimXen {
    fn default() -> Self {
        SimXen::new()
    }
}

impl SimXen {
    /// A host with dom0 and nothing else.
    pub fn new() -> SimXen {
        let xen = SimXen {
            hypervisor: SimHypervisor::new(),
            store: LocalStore::new(),
            baseline: Arc::new(Mutex::new(BTreeSet::new())),
        };
        toolstack::write_domain_home(&xen.store.connect(DomId::DOM0), DomId::DOM0, "Domain-0")
            .expect("a fresh in-process store accepts dom0's keys");
        xen.note_baseline();
        xen
    }

    /// Create domain `domid`, as a toolstack does: make it in the hypervisor, write its home
    /// directory (`/local/domain/<domid>` with `domid` and `name` = `sim-<domid>`, owned by the
    /// domain) and introduce it.
    pub fn create_domain(&self, domid: DomId) -> Result<SimDomain, ToolstackError> {
        let store = LocalDomainStore::new(&self.store);
        toolstack::create_domain(&self.hypervisor, &store, domid, &format!("sim-{domid}"))?;
        self.note_baseline();
        Ok(self.domain(domid))
    }

    /// Destroy domain `domid`, as `xl destroy` does: its handles close (their unmap
    /// notifications fire), its home goes and it is released.
    pub fn destroy_domain(&self, domid: DomId) -> Result<(), ToolstackError> {
        let store = LocalDomainStore::new(&self.store);
        toolstack::destroy_domain(&self.hypervisor, &store, domid)?;
        let mut baseline = self.baseline.lock().unwrap_or_else(PoisonError::into_inner);
        baseline.retain(|p| !p.starts_with(&toolstack::domain_home(domid)));
        Ok(())
    }

    fn note_baseline(&self) {
        let mut baseline = self.baseline.lock().unwrap_or_else(PoisonError::into_inner);
        baseline.extend(self.store.paths());
    }

    /// Domain `domid`'s view of the host. Its devices open only while the domain exists
    /// ([`create_domain`](Self::create_domain); dom0 always does).
    pub fn domain(&self, domid: DomId) -> SimDomain {
        SimDomain {
            xen: self.clone(),
            domid,
        }
    }

    /// The in-process xenstore.
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// The simulated hypervisor.
    pub fn hypervisor(&self) -> &SimHypervisor {
        &self.hypervisor
    }

    /// What is still allocated beyond the host's own state.
    pub fn leaks(&self) -> Leaks {
        let baseline = self.baseline.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = self.hypervisor.stats();
        Leaks {
            grants: stats.grants as usize,
            mappings: stats.mappings as usize,
            ports: stats.ports as usize,
            keys: self.leaked_keys(&baseline),
        }
    }

    /// New nodes that hold a value. Empty directories are not counted: a server removes the
    /// directories it created when it closes, but not ones another server created and shared.
    fn leaked_keys(&self, baseline: &BTreeSet<String>) -> Vec<String> {
        let dom0 = self.store.connect(DomId::DOM0);
        self.store
            .paths()
            .into_iter()
            .filter(|p| !baseline.contains(p))
            .filter(|p| dom0.read(TxId::NONE, p).map_or(true, |v| !v.is_empty()))
            .collect()
    }

    /// `Ok` when nothing leaked, else a report of what remains.
    pub fn check_leaks(&self) -> Result<(), Leaks> {
        let leaks = self.leaks();
        if leaks.is_clean() {
            Ok(())
        } else {
            Err(leaks)
        }
    }
}

/// What a [`SimXen`] still holds that no endpoint should.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaks {
    /// Grants still offered.
    pub grants: usize,
    /// Grant mappings still held.
    pub mappings: usize,
    /// Event-channel ports still bound.
    pub ports: usize,
    /// Xenstore nodes with a value, beyond the domains' home directories.
    pub keys: Vec<String>,
}

impl Leaks {
    /// Whether nothing remains.
    pub fn is_clean(&self) -> bool {
        self.grants == 0 && self.mappings == 0 && self.ports == 0 && self.keys.is_empty()
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} grants, {} mappings, {} ports and {} xenstore keys remain {:?}",
            self.grants,
            self.mappings,
            self.ports,
            self.keys.len(),
            self.keys
        )
    }
}

impl std::error::Error for Leaks {}

/// One simulated domain's devices.
#[derive(Clone)]
pub struct SimDomain {
    xen: SimXen,
    domid: DomId,
}

impl SimDomain {
    /// The domain's id.
    pub fn domid(&self) -> DomId {
        self.domid
    }
}

impl Backend for SimDomain {
    type Events = SimEvtchn;
    type Sharer = SimGnt;
    type Mapper = SimGnt;
    type Store = LocalConnection;

    fn open_events(&self) -> io::Result<SimEvtchn> {
        self.xen.hypervisor.open_events(self.domid)
    }

    fn open_sharer(&self) -> io::Result<SimGnt> {
        self.xen.hypervisor.open_sharer(self.domid)
    }

    fn open_mapper(&self) -> io::Result<SimGnt> {
        self.xen.hypervisor.open_mapper(self.domid)
    }

    fn open_store(&self) -> xenstore::Result<LocalConnection> {
        Ok(self.xen.store.connect(self.domid))
    }
}

// Real endpoints on real memory: not under the loom build.
#[cfg(all(test, not(vchan_loom)))]
mod tests {
    use super::*;
    use crate::{Address, RingSizes, State, Vchan, VchanError};

    /// The endpoint on the in-process simulation, in non-blocking mode on one thread (so that
    /// Miri can run it): connect, both directions with wrap-around, half-close, close, no leak.
    #[test]
    fn an_endpoint_pair_moves_data_both_ways_and_closes_clean() {
        let xen = SimXen::new();
        let dom0 = xen.domain(DomId(0));
        let guest = xen.create_domain(DomId(1)).expect("create domain 1");
        let sizes = RingSizes {
            server_read: 1024,
            server_write: 2048,
        };
        let server = Vchan::server(&dom0, DomId(1), &Address::Port(9), sizes).expect("server");
        let client = Vchan::client(&guest, DomId(0), &Address::Port(9), None).expect("client");
        for v in [&server, &client] {
            v.set_nonblocking(true);
        }
        assert_eq!(server.state().expect("state"), State::Connected);
        // More than either ring holds, so both wrap: write what fits, read what is there.
        let up: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let down: Vec<u8> = (0..7000u32).map(|i| (i * 13 + 1) as u8).collect();
        let (mut sent_up, mut sent_down) = (0, 0);
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 700];
        while got_up.len() < up.len() || got_down.len() < down.len() {
            let step = |r: Result<usize, VchanError>| match r {
                Ok(n) => n,
                Err(VchanError::WouldBlock) => 0,
                Err(e) => panic!("{e}"),
            };
            sent_up += step(client.write(&up[sent_up..(sent_up + 900).min(up.len())]));
            sent_down += step(server.write(&down[sent_down..(sent_down + 900).min(down.len())]));
            let n = step(server.read(&mut buf));
            got_up.extend_from_slice(&buf[..n]);
            let n = step(client.read(&mut buf));
            got_down.extend_from_slice(&buf[..n]);
        }
        assert!(got_up == up && got_down == down, "the bytes differ");
        // Half-close: the server reads the end, and can still answer.
        client.shutdown_write().expect("half-close");
        assert_eq!(server.read(&mut buf).expect("end of stream"), 0);
        assert_eq!(server.write(b"bye").expect("answer"), 3);
        assert_eq!(client.read(&mut buf).expect("the answer"), 3);
        client.close().expect("close the client");
        server.close().expect("close the server");
        xen.check_leaks().expect("nothing left behind");
    }
}
