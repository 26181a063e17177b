//! What the glue tests share: two domains of the in-process simulated Xen, test data, and (with
//! `tls`) a test PKI.
#![allow(dead_code)]

use std::time::Duration;

use conduit_vchan::{Connector, ListenOptions, Xen};
use vchan::sim::SimXen;
use xen_types::DomId;

#[cfg(feature = "tls")]
pub mod pki;

/// The domain that serves, and the one that connects.
pub const SERVER: DomId = DomId(5);
pub const CLIENT: DomId = DomId(0);

/// An in-process simulated Xen with a server domain; checks on drop that nothing leaked.
pub struct Sim {
    pub xen: SimXen,
    pub server: Xen,
    pub client: Xen,
}

impl Sim {
    pub fn new() -> Sim {
        let xen = SimXen::new();
        let server = Xen::Sim(xen.create_domain(SERVER).unwrap());
        let client = Xen::Sim(xen.domain(CLIENT));
        Sim {
            xen,
            server,
            client,
        }
    }

    pub fn listen_options(&self) -> ListenOptions {
        ListenOptions::new().xen(self.server.clone())
    }

    pub fn connector(&self) -> Connector {
        Connector::new()
            .xen(self.client.clone())
            .timeout(Duration::from_secs(5))
    }

    /// Nothing of any vchan or of the rendezvous is left.
    pub fn assert_clean(&self) {
        if let Err(leaks) = self.xen.check_leaks() {
            panic!("leaked: {leaks}");
        }
        let left: Vec<String> = self
            .xen
            .store()
            .paths()
            .into_iter()
            .filter(|p| p.contains("/data/conduit/"))
            .collect();
        assert!(left.is_empty(), "rendezvous keys left: {left:?}");
    }

    /// Wait (bounded) until every vchan and rendezvous key is gone: a listener dropped inside a
    /// runtime ends its rendezvous thread within a tick, without being joined.
    pub fn wait_clean(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let leaks = self.xen.check_leaks().err().map(|l| l.to_string());
            let left = self
                .xen
                .store()
                .paths()
                .into_iter()
                .any(|p| p.contains("/data/conduit/"));
            if leaks.is_none() && !left {
                return;
            }
            if std::time::Instant::now() > deadline {
                self.assert_clean();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Deterministic bytes that show loss, reordering and duplication.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
