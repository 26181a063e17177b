//! Shared set-up for the endpoint tests: a simulated host with two domains and a connected pair.
#![allow(dead_code)]

use std::time::Duration;

use vchan::sim::{SimDomain, SimXen};
use vchan::{Address, RingSizes, Vchan};
use xen_types::DomId;

pub const SERVER: DomId = DomId(0);
pub const CLIENT: DomId = DomId(7);

pub type Endpoint = Vchan<SimDomain>;

pub struct Host {
    pub xen: SimXen,
    pub server_dom: SimDomain,
    pub client_dom: SimDomain,
}

impl Host {
    pub fn new() -> Host {
        let xen = SimXen::new();
        let server_dom = xen.domain(SERVER);
        let client_dom = xen.create_domain(CLIENT).unwrap();
        Host {
            xen,
            server_dom,
            client_dom,
        }
    }

    pub fn pair(&self, sizes: RingSizes) -> (Endpoint, Endpoint) {
        let server = Vchan::server(&self.server_dom, CLIENT, &Address::Port(1), sizes).unwrap();
        let client = Vchan::client(&self.client_dom, SERVER, &Address::Port(1), None).unwrap();
        (server, client)
    }

    /// The leak check every test ends with.
    pub fn assert_clean(&self) {
        if let Err(leaks) = self.xen.check_leaks() {
            panic!("leaked: {leaks}");
        }
    }
}

/// Bytes that reveal reordering, loss and duplication: a counter's little-endian bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// Every ring size class of the protocol, as (server_read, server_write) minimums.
pub const PLACEMENTS: [(usize, usize, &str); 7] = [
    (0, 0, "in-page 1024 left, 2048 right"),
    (2048, 1024, "in-page 2048 left, 1024 right"),
    (4096, 4096, "one page each"),
    (2000, 65536, "in-page 2048 left, 64 KiB right"),
    (65536, 1000, "64 KiB left, in-page 2048 right"),
    (65536, 65536, "64 KiB each"),
    (1 << 20, 1 << 20, "1 MiB each"),
];

pub const BOUND: Duration = Duration::from_secs(10);

/// The simulated backend type, for tests that name its associated types.
pub type SimDomainAlias = SimDomain;
