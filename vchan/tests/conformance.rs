//! One conformance suite over the three drivers of the channel core: blocking ([`Vchan`]),
//! tokio ([`AsyncVchan`], on a runtime built without timers) and bare ([`BareVchan`], the
//! guest's driver, here on the simulated Xen). Every case runs over each driver, both ends
//! driven by it, and a last case mixes the drivers pairwise. What a user relies on, whatever the
//! driver: bytes cross both ways at every ring placement in both roles; a half-close delivers
//! the request, then the end, and the reply still flows; a close loses nothing and the end of
//! the stream comes after every byte; a hostile peer's corrupt ring is a typed error, never a
//! hang; a destroyed peer domain ends a sleeping dom0 endpoint (the liveness look); `drained`
//! returns once the peer has read everything. Each case ends with the leak check.
#![cfg(feature = "tokio")]

mod common;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use common::*;
use gnttab::{GrantMap, SharedMemory};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use vchan::bare::BareVchan;
use vchan::sim::SimDomain;
use vchan::{abi, Address, AsyncVchan, Backend, RingSizes, State, Vchan, VchanError};
use xen_types::{DomId, GrantRef};
use xenstore::{TxId, XenStore};

/// A failed call, as the user sees it whatever the driver reports it as.
#[derive(Debug, PartialEq, Eq)]
enum Fail {
    PeerClosed,
    ShutDown,
    Corrupted,
    TimedOut,
    Other(String),
}

fn classify(e: &VchanError) -> Fail {
    match e {
        VchanError::PeerClosed => Fail::PeerClosed,
        VchanError::ShutDown => Fail::ShutDown,
        VchanError::RingCorrupted(_) => Fail::Corrupted,
        VchanError::TimedOut => Fail::TimedOut,
        other => Fail::Other(other.to_string()),
    }
}

/// The typed error inside an `io::Error` from `AsyncRead`/`AsyncWrite`.
fn classify_io(e: io::Error) -> Fail {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<VchanError>())
    {
        Some(inner) => classify(inner),
        None => Fail::Other(e.to_string()),
    }
}

/// One endpoint of some driver, used from the test's threads.
trait End: Send + Sync {
    fn read(&self, buf: &mut [u8]) -> Result<usize, Fail>;
    fn write(&self, buf: &[u8]) -> Result<usize, Fail>;
    fn shutdown_write(&self) -> Result<(), Fail>;
    fn drained(&self) -> Result<(), Fail>;
    fn data_ready(&self) -> usize;
    fn state(&self) -> State;
    fn close(self: Box<Self>) -> Result<(), Fail>;

    fn write_all(&self, mut buf: &[u8]) -> Result<(), Fail> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn read_to_end(&self) -> Result<Vec<u8>, Fail> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 40_000];
        loop {
            match self.read(&mut buf)? {
                0 => return Ok(got),
                n => got.extend_from_slice(&buf[..n]),
            }
        }
    }
}

/// A way of driving the core.
trait Driver: Sync {
    fn name(&self) -> &'static str;
    /// Whether one endpoint may be read on one thread while another thread writes it.
    fn duplex(&self) -> bool;
    fn server(
        &self,
        dom: &SimDomain,
        client: DomId,
        at: &Address,
        sizes: RingSizes,
    ) -> Box<dyn End>;
    fn client(&self, dom: &SimDomain, server: DomId, at: &Address) -> Box<dyn End>;
}

// ---- blocking ----------------------------------------------------------------------------------

struct Blocking;

impl End for Vchan<SimDomain> {
    fn read(&self, buf: &mut [u8]) -> Result<usize, Fail> {
        Vchan::read(self, buf).map_err(|e| classify(&e))
    }
    fn write(&self, buf: &[u8]) -> Result<usize, Fail> {
        Vchan::write(self, buf).map_err(|e| classify(&e))
    }
    fn shutdown_write(&self) -> Result<(), Fail> {
        Vchan::shutdown_write(self).map_err(|e| classify(&e))
    }
    fn drained(&self) -> Result<(), Fail> {
        Vchan::drained(self).map_err(|e| classify(&e))
    }
    fn data_ready(&self) -> usize {
        Vchan::data_ready(self).unwrap()
    }
    fn state(&self) -> State {
        Vchan::state(self).unwrap()
    }
    fn close(self: Box<Self>) -> Result<(), Fail> {
        Vchan::close(*self).map_err(|e| classify(&e))
    }
}

impl Driver for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }
    fn duplex(&self) -> bool {
        true
    }
    fn server(
        &self,
        dom: &SimDomain,
        client: DomId,
        at: &Address,
        sizes: RingSizes,
    ) -> Box<dyn End> {
        Box::new(Vchan::server(dom, client, at, sizes).unwrap())
    }
    fn client(&self, dom: &SimDomain, server: DomId, at: &Address) -> Box<dyn End> {
        Box::new(Vchan::client(dom, server, at, Some(BOUND)).unwrap())
    }
}

// ---- tokio -------------------------------------------------------------------------------------

struct Tokio;

/// One runtime for every async endpoint of the suite, with I/O and no timers: the driver, its
/// liveness look included, must need none.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_io()
            .build()
            .unwrap()
    })
}

/// An async endpoint used from several threads: the lock is held only during one poll, as
/// `tokio::io::split` does, so a reader and a writer task interleave.
struct AsyncEnd(Mutex<AsyncVchan<SimDomain>>);

impl AsyncEnd {
    fn poll<T>(
        &self,
        mut f: impl FnMut(
            Pin<&mut AsyncVchan<SimDomain>>,
            &mut std::task::Context<'_>,
        ) -> std::task::Poll<T>,
    ) -> T {
        runtime().block_on(poll_fn(|cx| {
            let mut ep = self.0.lock().unwrap();
            f(Pin::new(&mut *ep), cx)
        }))
    }
}

impl End for AsyncEnd {
    fn read(&self, buf: &mut [u8]) -> Result<usize, Fail> {
        self.poll(|ep, cx| {
            let mut read = ReadBuf::new(buf);
            ep.poll_read(cx, &mut read)
                .map(|r| r.map(|()| read.filled().len()))
        })
        .map_err(classify_io)
    }
    fn write(&self, buf: &[u8]) -> Result<usize, Fail> {
        self.poll(|ep, cx| ep.poll_write(cx, buf))
            .map_err(classify_io)
    }
    fn shutdown_write(&self) -> Result<(), Fail> {
        self.poll(|ep, cx| ep.poll_shutdown(cx))
            .map_err(classify_io)
    }
    fn drained(&self) -> Result<(), Fail> {
        self.poll(|ep, cx| ep.poll_drained(cx))
            .map_err(|e| classify(&e))
    }
    fn data_ready(&self) -> usize {
        self.0.lock().unwrap().data_ready().unwrap()
    }
    fn state(&self) -> State {
        self.0.lock().unwrap().state().unwrap()
    }
    fn close(self: Box<Self>) -> Result<(), Fail> {
        let _inside = runtime().enter();
        drop(self.0.into_inner().unwrap());
        Ok(())
    }
}

impl Driver for Tokio {
    fn name(&self) -> &'static str {
        "tokio"
    }
    fn duplex(&self) -> bool {
        true
    }
    fn server(
        &self,
        dom: &SimDomain,
        client: DomId,
        at: &Address,
        sizes: RingSizes,
    ) -> Box<dyn End> {
        let ep = runtime()
            .block_on(AsyncVchan::server(dom, client, at, sizes))
            .unwrap();
        Box::new(AsyncEnd(Mutex::new(ep)))
    }
    fn client(&self, dom: &SimDomain, server: DomId, at: &Address) -> Box<dyn End> {
        let ep = runtime()
            .block_on(AsyncVchan::client(dom, server, at, Some(BOUND)))
            .unwrap();
        Box::new(AsyncEnd(Mutex::new(ep)))
    }
}

// ---- bare --------------------------------------------------------------------------------------

struct Bare;

/// The bare driver has no threads of its own: one caller at a time (the lock is held for a
/// whole call), so it is not duplex.
struct BareEnd(Mutex<BareVchan<'static, SimDomain>>);

/// A platform that outlives the endpoint (the bare driver borrows it).
fn leak(dom: &SimDomain) -> &'static SimDomain {
    Box::leak(Box::new(dom.clone()))
}

impl End for BareEnd {
    fn read(&self, buf: &mut [u8]) -> Result<usize, Fail> {
        self.0.lock().unwrap().read(buf).map_err(|e| classify(&e))
    }
    fn write(&self, buf: &[u8]) -> Result<usize, Fail> {
        self.0.lock().unwrap().write(buf).map_err(|e| classify(&e))
    }
    fn shutdown_write(&self) -> Result<(), Fail> {
        self.0
            .lock()
            .unwrap()
            .shutdown_write()
            .map_err(|e| classify(&e))
    }
    fn drained(&self) -> Result<(), Fail> {
        self.0.lock().unwrap().drained().map_err(|e| classify(&e))
    }
    fn data_ready(&self) -> usize {
        self.0.lock().unwrap().data_ready().unwrap()
    }
    fn state(&self) -> State {
        self.0.lock().unwrap().state().unwrap()
    }
    fn close(self: Box<Self>) -> Result<(), Fail> {
        self.0
            .into_inner()
            .unwrap()
            .close()
            .map_err(|e| classify(&e))
    }
}

impl Driver for Bare {
    fn name(&self) -> &'static str {
        "bare"
    }
    fn duplex(&self) -> bool {
        false
    }
    fn server(
        &self,
        dom: &SimDomain,
        client: DomId,
        at: &Address,
        sizes: RingSizes,
    ) -> Box<dyn End> {
        let mut ep = BareVchan::server(leak(dom), client, at, sizes).unwrap();
        ep.set_timeout(Some(BOUND));
        Box::new(BareEnd(Mutex::new(ep)))
    }
    fn client(&self, dom: &SimDomain, server: DomId, at: &Address) -> Box<dyn End> {
        let mut ep = BareVchan::client(leak(dom), server, at, Some(BOUND)).unwrap();
        ep.set_timeout(Some(BOUND));
        Box::new(BareEnd(Mutex::new(ep)))
    }
}

const DRIVERS: [&dyn Driver; 3] = [&Blocking, &Tokio, &Bare];

/// Run `case` on its own thread and fail if it has not finished within `bound`: a hang is a
/// failure with the case's name, never a stuck suite.
fn bounded(what: &str, bound: Duration, case: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let runner = thread::spawn(move || {
        case();
        let _ = done.send(());
    });
    match finished.recv_timeout(bound) {
        Ok(()) => runner.join().unwrap(),
        // The case panicked: its panic is the failure.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = runner.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after {bound:?}"),
    }
}

/// A server in dom0 and a client in domain 7, both of `driver`, at integer port `port`.
fn pair(
    host: &Host,
    driver: &dyn Driver,
    port: u32,
    sizes: RingSizes,
) -> (Box<dyn End>, Box<dyn End>) {
    let at = Address::Port(port);
    let server = driver.server(&host.server_dom, CLIENT, &at, sizes);
    assert_eq!(server.state(), State::WaitingForPeer);
    let client = driver.client(&host.client_dom, SERVER, &at);
    assert_eq!(server.state(), State::Connected);
    assert_eq!(client.state(), State::Connected);
    (server, client)
}

/// The exchange every driver can make: the client writes its data and shuts down writing,
/// then reads the reply to its end; the server reads the request to its end, then writes the
/// reply and shuts down. Each end is used by one thread.
fn exchange(server: Box<dyn End>, client: Box<dyn End>, up: Vec<u8>, down: Vec<u8>) {
    let (server, client): (Arc<dyn End>, Arc<dyn End>) = (server.into(), client.into());
    let serving = {
        let (server, up, down) = (Arc::clone(&server), up.clone(), down.clone());
        thread::spawn(move || {
            assert!(server.read_to_end().unwrap() == up, "request bytes differ");
            server.write_all(&down).unwrap();
            server.shutdown_write().unwrap();
        })
    };
    client.write_all(&up).unwrap();
    client.shutdown_write().unwrap();
    assert!(client.read_to_end().unwrap() == down, "reply bytes differ");
    serving.join().unwrap();
}

/// Both ends read and write at once, on separate threads, until each has what the other sent.
fn duplex(server: Arc<dyn End>, client: Arc<dyn End>, up: Vec<u8>, down: Vec<u8>) {
    thread::scope(|s| {
        let server_reads = s.spawn(|| server.read_to_end().unwrap());
        let client_reads = s.spawn(|| client.read_to_end().unwrap());
        s.spawn(|| {
            server.write_all(&down).unwrap();
            server.shutdown_write().unwrap();
        });
        client.write_all(&up).unwrap();
        client.shutdown_write().unwrap();
        assert!(
            server_reads.join().unwrap() == up,
            "client-to-server bytes differ"
        );
        assert!(
            client_reads.join().unwrap() == down,
            "server-to-client bytes differ"
        );
    });
}

fn each_driver(case: fn(&'static dyn Driver)) {
    for driver in DRIVERS {
        case(driver);
    }
}

#[test]
fn bytes_cross_both_ways_at_every_placement_in_both_roles() {
    each_driver(|driver| {
        bounded(driver.name(), Duration::from_secs(120), move || {
            for (index, (read, write, name)) in PLACEMENTS.into_iter().enumerate() {
                let host = Host::new();
                let sizes = RingSizes {
                    server_read: read,
                    server_write: write,
                };
                let (server, client) = pair(&host, driver, index as u32 + 1, sizes);
                let up = pattern(700_000, index as u64);
                let down = pattern(500_000, 50 + index as u64);
                if driver.duplex() {
                    let (server, client): (Arc<dyn End>, Arc<dyn End>) =
                        (server.into(), client.into());
                    duplex(Arc::clone(&server), Arc::clone(&client), up, down);
                    drop((server, client));
                } else {
                    exchange(server, client, up, down);
                }
                host.assert_clean();
                println!("{}: {name}: ok", driver.name());
            }
        });
    });
}

#[test]
fn a_half_close_delivers_the_request_then_the_end_and_the_reply_still_flows() {
    each_driver(|driver| {
        bounded(driver.name(), BOUND, move || {
            let host = Host::new();
            let (server, client) = pair(&host, driver, 1, RingSizes::default());
            let request = pattern(10_000, 1);
            // A reply three rings long: the server writes while the client reads.
            let reply = pattern(3 * 2048, 2);
            let (server, client): (Arc<dyn End>, Arc<dyn End>) = (server.into(), client.into());
            let serving = {
                let (server, request, reply) =
                    (Arc::clone(&server), request.clone(), reply.clone());
                thread::spawn(move || {
                    assert!(server.read_to_end().unwrap() == request);
                    assert_eq!(
                        server.read(&mut [0u8; 8]).unwrap(),
                        0,
                        "the end stays the end"
                    );
                    server.write_all(&reply).unwrap();
                })
            };
            client.write_all(&request).unwrap();
            client.shutdown_write().unwrap();
            assert_eq!(client.write(b"late").unwrap_err(), Fail::ShutDown);
            client.shutdown_write().unwrap();
            let mut got = vec![0u8; reply.len()];
            let mut filled = 0;
            while filled < got.len() {
                filled += client.read(&mut got[filled..]).unwrap();
            }
            assert!(got == reply);
            serving.join().unwrap();
            assert_eq!(
                client.state(),
                State::Connected,
                "a half-close is not a close"
            );
            drop((server, client));
            host.assert_clean();
        });
    });
}

#[test]
fn a_close_loses_nothing_and_the_end_comes_after_every_byte() {
    each_driver(|driver| {
        bounded(driver.name(), BOUND, move || {
            for writer_is_server in [true, false] {
                let host = Host::new();
                let (server, client) = pair(
                    &host,
                    driver,
                    1,
                    RingSizes {
                        server_read: 4096,
                        server_write: 4096,
                    },
                );
                let (writer, reader) = if writer_is_server {
                    (server, client)
                } else {
                    (client, server)
                };
                let data = pattern(100_000, 3);
                let reader: Arc<dyn End> = reader.into();
                let reading = {
                    let reader = Arc::clone(&reader);
                    thread::spawn(move || reader.read_to_end().unwrap())
                };
                writer.write_all(&data).unwrap();
                // Closed at once after the last write: the reader still gets every byte.
                writer.close().unwrap();
                assert!(reading.join().unwrap() == data, "bytes lost at the close");
                assert_eq!(reader.read(&mut [0u8; 16]).unwrap(), 0);
                assert_eq!(reader.state(), State::PeerClosed);
                assert_eq!(reader.write(b"x").unwrap_err(), Fail::PeerClosed);
                drop(reader);
                host.assert_clean();
            }
        });
    });
}

/// The server's control page, mapped again as the client domain: a third party with the peer's
/// access that the endpoints do not know about.
fn map_server_page(host: &Host, port: u32) -> impl SharedMemory {
    let store = host.client_dom.open_store().unwrap();
    let path = format!("/local/domain/{SERVER}/data/vchan/{CLIENT}/{port}/ring-ref");
    let raw = store.read(TxId::NONE, &path).unwrap();
    let ring_ref = GrantRef(String::from_utf8(raw).unwrap().parse().unwrap());
    host.client_dom
        .open_mapper()
        .unwrap()
        .map_grant_refs(SERVER, &[ring_ref], true, None)
        .unwrap()
}

#[test]
fn a_hostile_peers_corrupt_ring_is_a_typed_error_for_a_sleeping_reader_and_a_writer() {
    each_driver(|driver| {
        bounded(driver.name(), BOUND, move || {
            let host = Host::new();
            let (server, client) = pair(&host, driver, 1, RingSizes::default());
            let page = map_server_page(&host, 1);
            let server: Arc<dyn End> = server.into();
            let reading = {
                let server = Arc::clone(&server);
                thread::spawn(move || server.read(&mut [0u8; 64]))
            };
            // The reader is asleep (or about to be); the peer claims 5000 bytes in a 1 KiB ring
            // and sends an event.
            thread::sleep(Duration::from_millis(50));
            page.region().store_u32(abi::LEFT_PROD, 5000, SeqCst);
            client.shutdown_write().unwrap();
            assert_eq!(reading.join().unwrap().unwrap_err(), Fail::Corrupted);
            // A consumer index ahead of everything written.
            page.region().store_u32(abi::RIGHT_CONS, 9999, SeqCst);
            assert_eq!(server.write(&[1u8; 4000]).unwrap_err(), Fail::Corrupted);
            drop((page, server, client));
            host.assert_clean();
        });
    });
}

#[test]
fn a_destroyed_peer_domain_ends_a_sleeping_dom0_endpoint_in_either_role() {
    // The toolstack removes the domain's home; its kernel never runs again, so no unmap
    // notification clears a live byte and no event comes: only the liveness look can tell. The
    // bound is far above the look's period and below the driver's own timeout (the bare
    // driver's), so a missed death fails the case.
    each_driver(|driver| {
        bounded(driver.name(), Duration::from_secs(8), move || {
            for dom0_serves in [true, false] {
                let host = Host::new();
                let sizes = RingSizes {
                    server_read: 4096,
                    server_write: 4096,
                };
                let (dom0_end, guest_end) = if dom0_serves {
                    pair(&host, driver, 1, sizes)
                } else {
                    let at = Address::Port(2);
                    let server = driver.server(&host.client_dom, SERVER, &at, sizes);
                    let client = driver.client(&host.server_dom, CLIENT, &at);
                    (client, server)
                };
                let dom0_end: Arc<dyn End> = dom0_end.into();
                let blocked = {
                    let dom0_end = Arc::clone(&dom0_end);
                    thread::spawn(move || {
                        if dom0_serves {
                            dom0_end.read(&mut [0u8; 16]).map(|n| n as i64)
                        } else {
                            let chunk = vec![7u8; 64 * 1024];
                            loop {
                                if let Err(e) = dom0_end.write(&chunk) {
                                    break Err(e);
                                }
                            }
                        }
                    })
                };
                thread::sleep(Duration::from_millis(100));
                let store = host.server_dom.open_store().unwrap();
                store
                    .rm(TxId::NONE, &format!("/local/domain/{CLIENT}"))
                    .unwrap();
                match (dom0_serves, blocked.join().unwrap()) {
                    (true, Ok(0)) | (false, Err(Fail::PeerClosed)) => {}
                    (serves, other) => {
                        panic!("{}: dom0 serves: {serves}: {other:?}", driver.name())
                    }
                }
                assert_eq!(dom0_end.state(), State::PeerClosed);
                drop((dom0_end, guest_end));
            }
        });
    });
}

#[test]
fn drained_returns_once_the_peer_has_read_everything() {
    each_driver(|driver| {
        bounded(driver.name(), BOUND, move || {
            let host = Host::new();
            let (server, client) = pair(
                &host,
                driver,
                1,
                RingSizes {
                    server_read: 65536,
                    server_write: 65536,
                },
            );
            let data = pattern(40_000, 9);
            server.write_all(&data).unwrap();
            assert_eq!(client.data_ready(), data.len());
            let client: Arc<dyn End> = client.into();
            let reading = {
                let client = Arc::clone(&client);
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(50));
                    let mut got = vec![0u8; data.len()];
                    let mut filled = 0;
                    while filled < got.len() {
                        filled += client.read(&mut got[filled..]).unwrap();
                    }
                    assert!(got == data);
                })
            };
            server.drained().unwrap();
            // Everything written has been consumed by the time `drained` returns.
            assert_eq!(client.data_ready(), 0);
            reading.join().unwrap();
            // A closed peer counts as drained.
            server.write_all(b"unread").unwrap();
            drop(client);
            server.drained().unwrap();
            drop(server);
            host.assert_clean();
        });
    });
}

#[test]
fn every_driver_talks_to_every_other() {
    bounded("mixed", Duration::from_secs(60), || {
        for server_driver in DRIVERS {
            for client_driver in DRIVERS {
                let host = Host::new();
                let at = Address::Port(1);
                let sizes = RingSizes {
                    server_read: 4096,
                    server_write: 65536,
                };
                let server = server_driver.server(&host.server_dom, CLIENT, &at, sizes);
                let client = client_driver.client(&host.client_dom, SERVER, &at);
                exchange(server, client, pattern(200_000, 4), pattern(300_000, 5));
                host.assert_clean();
            }
        }
    });
}

/// The bare driver's `unpublish`, as the guest's `http` job serves one client after another: once
/// its client has joined, the server's keys are gone, so a second client finds no server (rather
/// than joining a taken channel); the first connection still works, and the close has nothing
/// left to withdraw.
#[test]
fn a_bare_server_withdraws_its_keys_once_its_client_joined() {
    bounded("unpublish", Duration::from_secs(30), || {
        let host = Host::new();
        let at = Address::Port(3);
        let mut server =
            BareVchan::server(&host.server_dom, CLIENT, &at, RingSizes::default()).unwrap();
        let keys = format!("/local/domain/{SERVER}/data/vchan/{CLIENT}/3/ring-ref");
        let store = host.server_dom.open_store().unwrap();
        assert!(store.read(TxId::NONE, &keys).is_ok(), "published");
        let mut client = BareVchan::client(&host.client_dom, SERVER, &at, None).unwrap();
        assert_eq!(server.wait_connected().unwrap(), State::Connected);
        server.unpublish().unwrap();
        server.unpublish().unwrap();
        assert!(store.read(TxId::NONE, &keys).is_err(), "withdrawn");
        match BareVchan::client(&host.client_dom, SERVER, &at, None) {
            Err(vchan::Error::NoServer { .. }) => {}
            other => panic!("a second client: {other:?}"),
        }
        client.write_all(b"still connected").unwrap();
        client.close().unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"still connected");
        server.close().unwrap();
        host.assert_clean();
    });
}
