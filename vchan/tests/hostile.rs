//! A hostile peer: the test plays one side by hand through the simulated grant table and writes
//! nonsense into the shared page. Every case must end in a typed error within a bounded time, or
//! in correct data: never a panic, an out-of-bounds access or a hang.

mod common;

use std::sync::atomic::Ordering::{self, SeqCst};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use evtchn::EventChannel;
use gnttab::{GrantMap, GrantShare, SharedMemory, SharedPages, UnmapNotify};
use vchan::abi;
use vchan::layout::LayoutError;
use vchan::{Address, Backend, RingSizes, Vchan, VchanError};
use xen_types::{GrantRef, Port};
use xenstore::{Access, Perm, TxId, XenStore};

/// A server written by hand: it shares a control page (and ring pages) and publishes keys, but
/// the test decides what goes in the page.
struct RawServer {
    events: <common::SimDomainAlias as Backend>::Events,
    port: Port,
    control: <<common::SimDomainAlias as Backend>::Sharer as GrantShare>::Pages,
    _rings: Vec<<<common::SimDomainAlias as Backend>::Sharer as GrantShare>::Pages>,
}

impl RawServer {
    /// Publish a page with the given orders; page rings get real shared pages.
    fn publish(host: &Host, port_no: u32, left: u16, right: u16) -> RawServer {
        let dom = &host.server_dom;
        let sharer = dom.open_sharer().unwrap();
        let events = dom.open_events().unwrap();
        let port = events.bind_unbound_port(CLIENT).unwrap();
        let notify = UnmapNotify {
            clear_byte: Some(abi::SRV_LIVE),
            event: Some(port),
        };
        let control = sharer.share_pages(CLIENT, 1, true, Some(notify)).unwrap();
        // The hand-played server's view of its page: atomics only, never a reference.
        let page = control.region();
        page.store_u16(abi::LEFT_ORDER, left, SeqCst);
        page.store_u16(abi::RIGHT_ORDER, right, SeqCst);
        page.store_u8(abi::CLI_LIVE, abi::LIVE_WAITING, SeqCst);
        page.store_u8(abi::SRV_LIVE, abi::LIVE_CONNECTED, SeqCst);
        page.store_u8(abi::CLI_NOTIFY, abi::NOTIFY_WRITE, SeqCst);
        let mut rings = Vec::new();
        let mut index = 0;
        for order in [left, right] {
            if (12..=20).contains(&order) {
                let pages = sharer
                    .share_pages(CLIENT, 1 << (order - 12), true, None)
                    .unwrap();
                for gref in pages.refs() {
                    page.store_u32(abi::GRANTS + 4 * index, gref.0, SeqCst);
                    index += 1;
                }
                rings.push(pages);
            }
        }
        let raw = RawServer {
            events,
            port,
            control,
            _rings: rings,
        };
        raw.write_keys(
            host,
            port_no,
            &raw.control.refs()[0].0.to_string(),
            &port.0.to_string(),
        );
        raw
    }

    fn write_keys(&self, host: &Host, port_no: u32, ring_ref: &str, event: &str) {
        let store = host.server_dom.open_store().unwrap();
        let path = format!("data/vchan/{CLIENT}/{port_no}");
        let perms = [
            Perm::new(SERVER, Access::None),
            Perm::new(CLIENT, Access::Read),
        ];
        for (key, value) in [("ring-ref", ring_ref), ("event-channel", event)] {
            let key = format!("{path}/{key}");
            store.write(TxId::NONE, &key, value.as_bytes()).unwrap();
            store.set_perms(TxId::NONE, &key, &perms).unwrap();
        }
    }

    fn remove_keys(host: &Host, port_no: u32) {
        let store = host.server_dom.open_store().unwrap();
        store
            .rm(TxId::NONE, &format!("data/vchan/{CLIENT}/{port_no}"))
            .unwrap();
        for dir in [
            format!("data/vchan/{CLIENT}"),
            "data/vchan".into(),
            "data".into(),
        ] {
            if store
                .directory(TxId::NONE, &dir)
                .map(|d| d.is_empty())
                .unwrap_or(false)
            {
                store.rm(TxId::NONE, &dir).unwrap();
            }
        }
    }

    fn kick(&self) {
        self.events.notify(self.port).unwrap();
    }
}

fn connect(host: &Host, port_no: u32) -> Result<Endpoint, VchanError> {
    Vchan::client(&host.client_dom, SERVER, &Address::Port(port_no), None)
}

/// Map the control page of the server at port 1 a second time, as the client domain: a third
/// party with the peer's access that the endpoints do not know about.
fn map_server_page(host: &Host) -> <<SimDomainAlias as Backend>::Mapper as GrantMap>::Mapping {
    let store = host.client_dom.open_store().unwrap();
    let path = format!("/local/domain/0/data/vchan/{CLIENT}/1/ring-ref");
    let raw = store.read(TxId::NONE, &path).unwrap();
    let ring_ref = GrantRef(String::from_utf8(raw).unwrap().parse().unwrap());
    let mapper = host.client_dom.open_mapper().unwrap();
    mapper
        .map_grant_refs(SERVER, &[ring_ref], true, None)
        .unwrap()
}

#[test]
fn a_client_refuses_every_invalid_layout() {
    let host = Host::new();
    type Expect = fn(&VchanError) -> bool;
    let cases: [(u16, u16, Expect); 6] = [
        (9, 11, |e| {
            matches!(e, VchanError::Layout(LayoutError::OrderOutOfRange { .. }))
        }),
        (10, 21, |e| {
            matches!(e, VchanError::Layout(LayoutError::OrderOutOfRange { .. }))
        }),
        (0xffff, 0xffff, |e| {
            matches!(e, VchanError::Layout(LayoutError::OrderOutOfRange { .. }))
        }),
        (10, 10, |e| {
            matches!(e, VchanError::Layout(LayoutError::SameInPageOrder { .. }))
        }),
        (11, 11, |e| {
            matches!(e, VchanError::Layout(LayoutError::SameInPageOrder { .. }))
        }),
        (20, 10, |e| {
            matches!(e, VchanError::Layout(LayoutError::GrantListOverlaps { .. }))
        }),
    ];
    for (i, (left, right, expected)) in cases.into_iter().enumerate() {
        let port_no = 100 + i as u32;
        let raw = RawServer::publish(&host, port_no, left, right);
        let err = connect(&host, port_no).unwrap_err();
        assert!(expected(&err), "orders ({left}, {right}): {err:?}");
        drop(raw);
        RawServer::remove_keys(&host, port_no);
    }
    host.assert_clean();
}

#[test]
fn a_client_refuses_grants_it_cannot_map() {
    let host = Host::new();
    let raw = RawServer::publish(&host, 1, 12, 11);
    raw.control
        .region()
        .store_u32(abi::GRANTS, 0x7fff_0000, SeqCst);
    let err = connect(&host, 1).unwrap_err();
    assert!(matches!(err, VchanError::Backend { .. }), "{err:?}");
    drop(raw);
    RawServer::remove_keys(&host, 1);
    host.assert_clean();
}

#[test]
fn a_client_refuses_nonsense_keys() {
    let host = Host::new();
    let raw = RawServer::publish(&host, 1, 10, 11);
    let good_ref = raw.control.refs()[0].0.to_string();
    let good_port = raw.port.0.to_string();
    for (ring_ref, event, key) in [
        ("0", good_port.as_str(), "ring-ref"),
        ("abc", good_port.as_str(), "ring-ref"),
        ("-1", good_port.as_str(), "ring-ref"),
        ("99999999999", good_port.as_str(), "ring-ref"),
        (good_ref.as_str(), "0", "event-channel"),
        (good_ref.as_str(), "", "event-channel"),
    ] {
        raw.write_keys(&host, 1, ring_ref, event);
        match connect(&host, 1) {
            Err(VchanError::BadKey { key: k, .. }) => assert_eq!(k, key),
            other => panic!("({ring_ref:?}, {event:?}) gave {other:?}"),
        }
    }
    // A valid-looking port that is not ours to bind.
    raw.write_keys(&host, 1, &good_ref, "4000");
    assert!(matches!(connect(&host, 1), Err(VchanError::Backend { .. })));
    drop(raw);
    RawServer::remove_keys(&host, 1);
    host.assert_clean();
}

#[test]
fn corrupted_indices_are_errors_for_a_blocked_reader_and_a_writer() {
    let host = Host::new();
    let raw = RawServer::publish(&host, 1, 10, 11);
    let client = connect(&host, 1).unwrap();
    client.set_read_timeout(Some(BOUND));
    let started = Instant::now();
    thread::scope(|s| {
        let reader = s.spawn(|| client.read(&mut [0u8; 16]));
        thread::sleep(Duration::from_millis(30));
        // The right ring is 2048 bytes: claim 2049 are ready.
        raw.control
            .region()
            .store_u32(abi::RIGHT_PROD, 2049, SeqCst);
        raw.kick();
        let result = reader.join().unwrap();
        assert!(
            matches!(result, Err(VchanError::RingCorrupted(_))),
            "{result:?}"
        );
    });
    assert!(
        started.elapsed() < BOUND,
        "the error must come from the event, not the timeout"
    );
    // The peer moves our write ring's consumer index past what we produced.
    raw.control.region().store_u32(abi::LEFT_CONS, 5, SeqCst);
    assert!(matches!(
        client.write(b"x"),
        Err(VchanError::RingCorrupted(_))
    ));
    assert!(matches!(
        client.send(b"x"),
        Err(VchanError::RingCorrupted(_))
    ));
    assert!(matches!(
        client.data_ready(),
        Err(VchanError::RingCorrupted(_))
    ));
    // Corruption is never mistaken for "nothing to read, ever" (XSA-86).
    raw.control
        .region()
        .store_u32(abi::RIGHT_PROD, u32::MAX, SeqCst);
    assert!(matches!(
        client.read(&mut [0u8; 1]),
        Err(VchanError::RingCorrupted(_))
    ));
    drop(client);
    drop(raw);
    RawServer::remove_keys(&host, 1);
    host.assert_clean();
}

#[test]
fn a_nonsense_live_byte_is_an_error_not_a_state() {
    let host = Host::new();
    let raw = RawServer::publish(&host, 1, 10, 11);
    let client = connect(&host, 1).unwrap();
    raw.control.region().store_u8(abi::SRV_LIVE, 7, SeqCst);
    assert!(matches!(client.state(), Err(VchanError::BadLiveByte(7))));
    raw.kick();
    assert!(matches!(
        client.read(&mut [0u8; 1]),
        Err(VchanError::BadLiveByte(7))
    ));
    assert!(matches!(
        client.write(b"x"),
        Err(VchanError::BadLiveByte(7))
    ));
    // A client may not claim "not yet connected" to a server that already saw it connect: the
    // server treats only its own three states as meaningful.
    raw.control
        .region()
        .store_u8(abi::SRV_LIVE, abi::LIVE_WAITING, SeqCst);
    assert!(matches!(client.state(), Err(VchanError::BadLiveByte(2))));
    drop(client);
    drop(raw);
    RawServer::remove_keys(&host, 1);
    host.assert_clean();
}

#[test]
fn orders_and_grants_rewritten_after_connect_change_nothing() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes {
        server_read: 8192,
        server_write: 8192,
    });
    // Scribble the shared copy through a second mapping.
    let page = map_server_page(&host);
    page.region().store_u16(abi::LEFT_ORDER, 20, SeqCst);
    page.region().store_u16(abi::RIGHT_ORDER, 3, SeqCst);
    for i in 0..4 {
        page.region()
            .store_u32(abi::GRANTS + 4 * i, 0xdead_0000 + i as u32, SeqCst);
    }
    let data = pattern(100_000, 5);
    let got = thread::scope(|s| {
        s.spawn(|| {
            let mut w = &client;
            std::io::Write::write_all(&mut w, &data).unwrap();
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < data.len() {
            let n = server.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    assert!(got == data);
    assert_eq!(page.region().load_u32(abi::LEFT_PROD, SeqCst), 100_000);
    drop((page, server, client));
    host.assert_clean();
}

#[test]
fn a_hostile_client_cannot_break_the_server() {
    let host = Host::new();
    let server = Vchan::server(
        &host.server_dom,
        CLIENT,
        &Address::Port(1),
        RingSizes::default(),
    )
    .unwrap();
    let page = map_server_page(&host);
    page.region()
        .store_u8(abi::CLI_LIVE, abi::LIVE_CONNECTED, SeqCst);
    page.region().store_u32(abi::LEFT_PROD, 1025, SeqCst);
    assert!(matches!(
        server.read(&mut [0u8; 8]),
        Err(VchanError::RingCorrupted(_))
    ));
    assert!(matches!(
        server.recv(&mut [0u8; 8]),
        Err(VchanError::RingCorrupted(_))
    ));
    page.region()
        .store_u32(abi::RIGHT_CONS, 0x8000_0000, SeqCst);
    assert!(matches!(
        server.write(b"x"),
        Err(VchanError::RingCorrupted(_))
    ));
    page.region().store_u8(abi::CLI_LIVE, 0xee, SeqCst);
    assert!(matches!(server.state(), Err(VchanError::BadLiveByte(0xee))));
    drop((page, server));
    host.assert_clean();
}

#[test]
fn notify_bytes_scribbled_during_a_transfer_never_corrupt_data() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes::default());
    let page = map_server_page(&host);
    server.set_read_timeout(Some(Duration::from_millis(50)));
    client.set_write_timeout(Some(Duration::from_millis(50)));
    // 64 rounds of the 1 KiB ring: each withheld event costs one 50 ms timeout.
    let data = pattern(64 << 10, 11);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let got = thread::scope(|s| {
        s.spawn(|| {
            let mut x = 1u8;
            while !stop.load(Ordering::Relaxed) {
                x = x.wrapping_mul(37).wrapping_add(11);
                page.region().store_u8(abi::CLI_NOTIFY, x, SeqCst);
                page.region()
                    .store_u8(abi::SRV_NOTIFY, x.rotate_left(3), SeqCst);
                thread::yield_now();
            }
        });
        let writer = s.spawn(|| {
            let mut sent = 0;
            while sent < data.len() {
                match client.write(&data[sent..]) {
                    Ok(n) => sent += n,
                    Err(VchanError::TimedOut) => continue,
                    Err(e) => panic!("writer: {e:?}"),
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < data.len() && Instant::now() < deadline {
            match server.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // A peer that withholds events can only slow us down: the timeout re-checks.
                Err(VchanError::TimedOut) => continue,
                Err(e) => panic!("reader: {e:?}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        got
    });
    assert!(got == data, "every byte arrives intact, in order");
    drop((page, server, client));
    host.assert_clean();
}

#[cfg(feature = "tokio")]
#[test]
fn a_hostile_peer_gives_an_async_reader_a_typed_error_not_a_hang() {
    use tokio::io::AsyncReadExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = Host::new();
    let raw = RawServer::publish(&host, 1, 10, 11);
    let client = connect(&host, 1).unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let mut client = vchan::AsyncVchan::new(client).unwrap();
        let reading = async {
            let mut buf = [0u8; 16];
            client.read(&mut buf).await
        };
        let corrupting = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            // The right ring is 2048 bytes: claim 2049 are ready, and wake the reader.
            raw.control
                .region()
                .store_u32(abi::RIGHT_PROD, 2049, SeqCst);
            raw.kick();
        };
        let (result, ()) = tokio::time::timeout(BOUND, async { tokio::join!(reading, corrupting) })
            .await
            .expect("the async reader hung on a corrupted ring");
        let err = result.unwrap_err();
        let cause = err.get_ref().and_then(|e| e.downcast_ref::<VchanError>());
        assert!(
            matches!(cause, Some(VchanError::RingCorrupted(_))),
            "{err:?}"
        );
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        drop(client);
    });
    assert!(started.elapsed() < BOUND);
    drop(raw);
    RawServer::remove_keys(&host, 1);
    host.assert_clean();
}

/// A client that fails after it has mapped the control page (the page makes no sense, or its
/// ring pages cannot be mapped) leaves the server's page as it found it: its unmap
/// notification, armed only once a client has joined, must not clear the waiting server's
/// `cli_live` as the failed attempt unmaps (the server would read a client that came and went).
#[test]
fn a_client_that_fails_after_mapping_leaves_a_waiting_servers_page_as_it_was() {
    let host = Host::new();
    // Orders no client accepts, then rings whose grants cannot be mapped.
    for (port_no, left, right, break_grants) in [(300, 9, 11, false), (301, 12, 12, true)] {
        let raw = RawServer::publish(&host, port_no, left, right);
        if break_grants {
            let page = raw.control.region();
            page.store_u32(abi::GRANTS, 0xdead, SeqCst);
        }
        assert!(connect(&host, port_no).is_err());
        let page = raw.control.region();
        assert_eq!(
            page.load_u8(abi::CLI_LIVE, SeqCst),
            abi::LIVE_WAITING,
            "orders ({left}, {right}): the failed client cleared the server's cli_live"
        );
        drop(raw);
        RawServer::remove_keys(&host, port_no);
    }
    host.assert_clean();
}

/// A second client that finds the server taken is refused, and its attempt leaves the first
/// client's connection alone: the server still sees it connected, and data flows.
#[test]
fn a_refused_second_client_leaves_the_first_ones_connection_alone() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes::default());
    // Refused, whether at the port (taken) or at the page (not waiting).
    assert!(connect(&host, 1).is_err());
    assert_eq!(server.state().unwrap(), vchan::State::Connected);
    client.write(b"still here").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).unwrap(), 10);
    drop((server, client));
    host.assert_clean();
}
