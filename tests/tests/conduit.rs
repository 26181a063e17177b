//! conduit-vchan's conformance suite: the same cases over TCP, Unix sockets, vchan on the
//! in-process simulation and vchan on the cross-process simulated host (`xensim`), through a
//! service's rendezvous and through libxenvchan's integer-port convention, blocking and async.
//! Each case ends with its transport's leak check.

#[path = "xensim_support.rs"]
mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use conduit_vchan::{
    describe, AsyncListener, Connection, Connector, Endpoint, ListenOptions, Listener, Peer, Xen,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vchan::sim::SimXen;
use vchan::xensim::XensimDomain;
use xen_types::DomId;
use xenstore::{TxId, XenStore};

/// The guest that serves in every vchan rig, and the domain that connects.
const SERVER: DomId = DomId(5);
const CLIENT: DomId = DomId(0);

/// A transport under test: how to listen, how to connect, and how to check nothing leaked.
struct Rig {
    name: &'static str,
    listen: Endpoint,
    connect: Option<Endpoint>,
    listen_xen: Option<Xen>,
    connector: Connector,
    /// Several connections at once (not an integer vchan port: one at a time).
    concurrent: bool,
    check: Box<dyn Fn() + Send + Sync>,
    _keep: Option<Box<dyn Send + Sync>>,
}

impl Rig {
    fn options(&self) -> ListenOptions {
        match &self.listen_xen {
            Some(xen) => ListenOptions::new().xen(xen.clone()),
            None => ListenOptions::new(),
        }
    }

    fn bind(&self) -> (Listener, Endpoint) {
        let listener = Listener::bind_with(&self.listen, self.options())
            .unwrap_or_else(|e| panic!("{}: bind: {e}", self.name));
        let target = self
            .connect
            .clone()
            .unwrap_or_else(|| listener.local_endpoint());
        (listener, target)
    }

    fn connect(&self, target: &Endpoint) -> Connection {
        self.connector
            .connect(target)
            .unwrap_or_else(|e| panic!("{}: connect: {}", self.name, describe(&e)))
    }
}

fn sim_rig(name: &'static str, listen: &str, connect: &str, concurrent: bool) -> Rig {
    sim_rig_between(name, listen, connect, concurrent, SERVER, CLIENT)
}

/// A rig on the in-process simulation whose listener runs in `server` and whose connects come
/// from `client` (one of them dom0, the other a guest: 5).
fn sim_rig_between(
    name: &'static str,
    listen: &str,
    connect: &str,
    concurrent: bool,
    server: DomId,
    client: DomId,
) -> Rig {
    let xen = SimXen::new();
    let guest = if server == DomId::DOM0 {
        client
    } else {
        server
    };
    xen.create_domain(guest).unwrap();
    let checked = xen.clone();
    Rig {
        name,
        listen: listen.parse().unwrap(),
        connect: Some(connect.parse().unwrap()),
        listen_xen: Some(Xen::Sim(xen.domain(server))),
        connector: Connector::new().xen(Xen::Sim(xen.domain(client))),
        concurrent,
        check: Box::new(move || {
            if let Err(leaks) = checked.check_leaks() {
                panic!("{name}: leaked {leaks}");
            }
            let left: Vec<String> = checked
                .store()
                .paths()
                .into_iter()
                .filter(|p| p.contains("/data/conduit/"))
                .collect();
            assert!(left.is_empty(), "{name}: rendezvous keys left: {left:?}");
        }),
        _keep: None,
    }
}

/// A tag no other rig of this process uses (tests run in parallel).
fn unique(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}-{n}")
}

fn xensim_rig(name: &'static str, listen: &str, connect: &str, concurrent: bool) -> Rig {
    xensim_rig_between(name, listen, connect, concurrent, SERVER, CLIENT)
}

/// A rig on `xensim serve` whose listener runs in `server` and whose connects come from
/// `client` (one of them dom0, the other a guest: 5).
fn xensim_rig_between(
    name: &'static str,
    listen: &str,
    connect: &str,
    concurrent: bool,
    server: DomId,
    client: DomId,
) -> Rig {
    let guest = if server == DomId::DOM0 {
        client
    } else {
        server
    };
    let host = std::sync::Arc::new(support::Host::start(&unique(name), &[guest.0]));
    let checked = std::sync::Arc::clone(&host);
    let dom0 = XensimDomain::new(&host.dir, DomId::DOM0);
    Rig {
        name,
        listen: listen.parse().unwrap(),
        connect: Some(connect.parse().unwrap()),
        listen_xen: Some(Xen::Xensim(XensimDomain::new(&host.dir, server))),
        connector: Connector::new().xen(Xen::Xensim(XensimDomain::new(&host.dir, client))),
        concurrent,
        check: Box::new(move || {
            checked.assert_clean();
            let store = vchan::Backend::open_store(&dom0).unwrap();
            let services = store
                .directory(TxId::NONE, &format!("/local/domain/{server}/data/conduit"))
                .unwrap_or_default();
            assert!(services.is_empty(), "{name}: services left: {services:?}");
            let vchans = store
                .directory(
                    TxId::NONE,
                    &format!("/local/domain/{server}/data/vchan/{client}"),
                )
                .unwrap_or_default();
            assert!(vchans.is_empty(), "{name}: vchan keys left: {vchans:?}");
        }),
        _keep: Some(Box::new(host)),
    }
}

fn unix_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("conduit-{tag}-{}.sock", std::process::id()))
}

fn rigs() -> Vec<Rig> {
    let unix = unix_path(&unique("rig"));
    let _ = std::fs::remove_file(&unix);
    let unix_name = format!("unix://{}", unix.display());
    vec![
        Rig {
            name: "tcp",
            listen: "tcp://127.0.0.1:0".parse().unwrap(),
            connect: None,
            listen_xen: None,
            connector: Connector::new(),
            concurrent: true,
            check: Box::new(|| {}),
            _keep: None,
        },
        Rig {
            name: "unix",
            listen: unix_name.parse().unwrap(),
            connect: Some(unix_name.parse().unwrap()),
            listen_xen: None,
            connector: Connector::new(),
            concurrent: true,
            check: Box::new(move || assert!(!unix.exists(), "unix: the socket file was left")),
            _keep: None,
        },
        sim_rig("sim-service", "vchan://*/svc", "vchan://5/svc", true),
        sim_rig("sim-port", "vchan://0/7", "vchan://5/7", false),
        xensim_rig("xensim-service", "vchan://*/svc", "vchan://5/svc", true),
        xensim_rig("xensim-port", "vchan://0/7", "vchan://5/7", false),
    ]
}

/// Deterministic bytes that show loss, reordering and duplication.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    support::random_bytes(len, seed)
}

/// The server of most cases: read the request to EOF, answer with `reply`, half-close.
fn answer(mut conn: Connection, reply: &[u8]) -> Vec<u8> {
    let mut request = Vec::new();
    conn.read_to_end(&mut request).unwrap();
    conn.write_all(reply).unwrap();
    conn.shutdown_write().unwrap();
    request
}

#[test]
fn a_request_then_half_close_gets_the_whole_reply_on_every_transport() {
    for rig in rigs() {
        let (listener, target) = rig.bind();
        let request = pattern(100_000, 1);
        let reply = pattern(300_000, 2);
        thread::scope(|s| {
            let serving = s.spawn(|| {
                let (conn, peer) = listener.accept().unwrap();
                (answer(conn, &reply), peer)
            });
            let mut conn = rig.connect(&target);
            conn.write_all(&request).unwrap();
            conn.shutdown_write().unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            assert!(got == reply, "{}: reply differs", rig.name);
            let (got_request, peer) = serving.join().unwrap();
            assert!(got_request == request, "{}: request differs", rig.name);
            if rig.listen_xen.is_some() {
                assert_eq!(peer, Peer::Vchan(CLIENT), "{}: peer", rig.name);
                assert_eq!(conn.peer(), &Peer::Vchan(SERVER), "{}: peer", rig.name);
            }
        });
        drop(listener);
        (rig.check)();
    }
}

#[test]
fn transfers_far_larger_than_the_ring_flow_both_ways_at_once() {
    for rig in rigs() {
        let (listener, target) = rig.bind();
        let up = pattern(8 << 20, 3);
        let down = pattern(6 << 20, 4);
        thread::scope(|s| {
            s.spawn(|| {
                let (conn, _) = listener.accept().unwrap();
                // Reader and writer on separate threads of one connection.
                thread::scope(|t| {
                    let sending = t.spawn(|| {
                        (&conn).write_all(&down).unwrap();
                        conn.shutdown_write().unwrap();
                    });
                    let mut got = Vec::new();
                    (&conn).read_to_end(&mut got).unwrap();
                    assert!(got == up, "{}: upload differs", rig.name);
                    sending.join().unwrap();
                });
            });
            let conn = rig.connect(&target);
            thread::scope(|t| {
                let sending = t.spawn(|| {
                    for piece in up.chunks(70_001) {
                        (&conn).write_all(piece).unwrap();
                    }
                    conn.shutdown_write().unwrap();
                });
                let mut got = Vec::new();
                (&conn).read_to_end(&mut got).unwrap();
                assert!(got == down, "{}: download differs", rig.name);
                sending.join().unwrap();
            });
        });
        drop(listener);
        (rig.check)();
    }
}

#[test]
fn a_close_is_eof_after_every_byte() {
    for rig in rigs() {
        let (listener, target) = rig.bind();
        let data = pattern(200_000, 5);
        thread::scope(|s| {
            s.spawn(|| {
                let (mut conn, _) = listener.accept().unwrap();
                conn.write_all(&data).unwrap();
                drop(conn);
            });
            let mut conn = rig.connect(&target);
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            assert!(got == data, "{}: lost bytes before EOF", rig.name);
            assert_eq!(
                conn.read(&mut [0u8; 8]).unwrap(),
                0,
                "{}: EOF stays",
                rig.name
            );
        });
        drop(listener);
        (rig.check)();
    }
}

#[test]
fn a_hundred_connections_at_once_each_get_their_own_answer() {
    for rig in rigs().into_iter().filter(|r| r.concurrent) {
        let (listener, target) = rig.bind();
        const N: usize = 100;
        thread::scope(|s| {
            s.spawn(|| {
                // Accept all first: every connection is open at the same time.
                let conns: Vec<Connection> = (0..N).map(|_| listener.accept().unwrap().0).collect();
                thread::scope(|t| {
                    for conn in conns {
                        t.spawn(move || {
                            let mut conn = conn;
                            let mut request = Vec::new();
                            conn.read_to_end(&mut request).unwrap();
                            request.reverse();
                            conn.write_all(&request).unwrap();
                        });
                    }
                });
            });
            let clients: Vec<_> = (0..N)
                .map(|i| {
                    let (rig, target) = (&rig, &target);
                    s.spawn(move || {
                        let mut conn = rig.connect(target);
                        let request = format!("request {i} from one domain").into_bytes();
                        conn.write_all(&request).unwrap();
                        conn.shutdown_write().unwrap();
                        let mut got = Vec::new();
                        conn.read_to_end(&mut got).unwrap();
                        let mut expected = request;
                        expected.reverse();
                        assert_eq!(got, expected, "{}: connection {i}", rig.name);
                    })
                })
                .collect();
            for c in clients {
                c.join().unwrap();
            }
        });
        drop(listener);
        (rig.check)();
    }
}

/// The rigs in which a guest (domain 5, bound by xenstore's quotas for guests: 10 transactions,
/// 128 watches and 1000 nodes at once) connects to a service that dom0 serves.
fn guest_client_rigs() -> Vec<Rig> {
    let (dom0, guest) = (DomId::DOM0, SERVER);
    vec![
        sim_rig_between(
            "sim-guest-client",
            "vchan://*/svc",
            "vchan://0/svc",
            true,
            dom0,
            guest,
        ),
        xensim_rig_between(
            "xensim-guest-client",
            "vchan://*/svc",
            "vchan://0/svc",
            true,
            dom0,
            guest,
        ),
    ]
}

/// Regression (issue 20): a burst of connects from one guest met the guest's xenstore quotas
/// (at most 10 transactions at once) and failed with `ENOSPC`. Now 200 connects at once from
/// one guest to one dom0 service all succeed, each with its own answer.
#[test]
fn two_hundred_connects_at_once_from_a_guest_all_succeed() {
    const N: usize = 200;
    let mut failures = Vec::new();
    for rig in guest_client_rigs() {
        let (listener, target) = rig.bind();
        // The server answers each connection on a thread of its own, as they come: the request
        // names a number, the reply is that number's pattern. (Not scoped: if a connect failed,
        // the accept loop would wait for ever, and the test must report the failures instead.)
        let listener = std::sync::Arc::new(listener);
        let serving = {
            let listener = std::sync::Arc::clone(&listener);
            thread::spawn(move || {
                let mut answering = Vec::new();
                for _ in 0..N {
                    let (mut conn, peer) = listener.accept().unwrap();
                    assert_eq!(peer, Peer::Vchan(SERVER));
                    answering.push(thread::spawn(move || {
                        let mut request = String::new();
                        conn.read_to_string(&mut request).unwrap();
                        let n: u64 = request.parse().unwrap();
                        conn.write_all(&pattern(20_000, n)).unwrap();
                        conn.shutdown_write().unwrap();
                    }));
                }
                for a in answering {
                    a.join().unwrap();
                }
            })
        };
        // A bound against a hang only: each connect waits its turn, and a loaded machine may
        // take longer than the default 10 s to get through 200.
        let connector = rig.connector.clone().timeout(Duration::from_secs(120));
        let started = std::time::Instant::now();
        let outcomes: Vec<Result<(), String>> = thread::scope(|s| {
            let clients: Vec<_> = (0..N)
                .map(|i| {
                    let (connector, target) = (&connector, &target);
                    s.spawn(move || {
                        let mut conn = connector.connect(target).map_err(|e| describe(&e))?;
                        conn.write_all(i.to_string().as_bytes()).unwrap();
                        conn.shutdown_write().unwrap();
                        let mut got = Vec::new();
                        conn.read_to_end(&mut got).unwrap();
                        match got == pattern(20_000, i as u64) {
                            true => Ok(()),
                            false => Err(format!("connection {i}: the reply differs")),
                        }
                    })
                })
                .collect();
            clients.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        eprintln!(
            "{}: {} of {N} connects at once from domain {SERVER} succeeded in {:.2} s",
            rig.name,
            N - failed.len(),
            started.elapsed().as_secs_f64()
        );
        if let Some(first) = failed.first() {
            // The server still waits for the missing connections: left behind (its accept
            // fails once the rig is gone).
            failures.push(format!(
                "{}: {} of {N} connects failed, the first: {first}",
                rig.name,
                failed.len(),
            ));
            continue;
        }
        serving.join().unwrap();
        drop(listener);
        (rig.check)();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn an_integer_port_serves_one_connection_at_a_time_and_publishes_afresh() {
    for rig in rigs().into_iter().filter(|r| r.name.ends_with("-port")) {
        let (listener, target) = rig.bind();
        thread::scope(|s| {
            s.spawn(|| {
                for i in 0..3u8 {
                    let (conn, _) = listener.accept().unwrap();
                    answer(conn, &[i; 10]);
                }
            });
            for i in 0..3u8 {
                let mut conn = rig.connect(&target);
                conn.shutdown_write().unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).unwrap();
                assert_eq!(got, [i; 10], "{}: connection {i}", rig.name);
            }
        });
        drop(listener);
        (rig.check)();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn async_request_reply_split_halves_and_many_at_once_on_every_transport() {
    let rt = runtime();
    for rig in rigs() {
        rt.block_on(async {
            let listener = AsyncListener::bind_with(&rig.listen, rig.options())
                .await
                .unwrap_or_else(|e| panic!("{}: bind: {e}", rig.name));
            let target = rig
                .connect
                .clone()
                .unwrap_or_else(|| listener.local_endpoint());
            let count = if rig.concurrent { 20 } else { 1 };
            let work = async {
                let serving = async {
                    let mut tasks = Vec::new();
                    for _ in 0..count {
                        let (conn, _) = listener.accept().await.unwrap();
                        tasks.push(tokio::spawn(async move {
                            // Split halves in two tasks: echo until EOF, then half-close.
                            let (mut reader, mut writer) = tokio::io::split(conn);
                            let echo = tokio::spawn(async move {
                                tokio::io::copy(&mut reader, &mut writer).await.unwrap();
                                writer.shutdown().await.unwrap();
                            });
                            echo.await.unwrap();
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                };
                let clients = async {
                    let mut tasks = Vec::new();
                    for i in 0..count {
                        let (connector, target) = (rig.connector.clone(), target.clone());
                        tasks.push(tokio::spawn(async move {
                            let conn = connector.connect_async(&target).await.unwrap();
                            let data = pattern(if i == 0 { 3 << 20 } else { 10_000 }, i as u64);
                            let (mut reader, mut writer) = tokio::io::split(conn);
                            let sent = data.clone();
                            let sending = tokio::spawn(async move {
                                writer.write_all(&sent).await.unwrap();
                                writer.shutdown().await.unwrap();
                            });
                            let mut got = Vec::new();
                            reader.read_to_end(&mut got).await.unwrap();
                            sending.await.unwrap();
                            assert!(got == data, "connection {i}: echo differs");
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                };
                tokio::join!(serving, clients);
            };
            tokio::time::timeout(Duration::from_secs(60), work)
                .await
                .unwrap_or_else(|_| panic!("{}: async case hung", rig.name));
            listener.close().await;
        });
        (rig.check)();
    }
}

/// Regression: clients of one domain connecting at once to an integer port raced for the one
/// published server; the loser's event-channel bind failed (`EINVAL`) and its connect with it.
/// Now the loser looks again, like a client that finds the server taken (`NotWaiting`).
#[test]
fn clients_at_once_on_an_integer_port_are_served_one_after_another() {
    for rig in rigs().into_iter().filter(|r| r.name.ends_with("-port")) {
        let (listener, target) = rig.bind();
        const N: u8 = 6;
        thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..N {
                    let (mut conn, _) = listener.accept().unwrap();
                    let mut request = Vec::new();
                    conn.read_to_end(&mut request).unwrap();
                    conn.write_all(&request).unwrap();
                }
            });
            let clients: Vec<_> = (0..N)
                .map(|i| {
                    let (rig, target) = (&rig, &target);
                    s.spawn(move || {
                        let mut conn = rig.connect(target);
                        conn.write_all(&[i; 1000]).unwrap();
                        conn.shutdown_write().unwrap();
                        let mut got = Vec::new();
                        conn.read_to_end(&mut got).unwrap();
                        assert_eq!(got, [i; 1000], "{}: client {i}", rig.name);
                    })
                })
                .collect();
            for c in clients {
                c.join().unwrap();
            }
        });
        drop(listener);
        (rig.check)();
    }
}

/// An async listener dropped while its accept waits (a vchan service, or an integer port whose
/// accept has published keys on the blocking pool) withdraws what it published, and `closed`
/// says when: a server can exit cleanly right after.
#[test]
fn a_dropped_async_listener_withdraws_what_it_published_before_closed_resolves() {
    let rt = runtime();
    for rig in rigs() {
        rt.block_on(async {
            let listener = AsyncListener::bind_with(&rig.listen, rig.options())
                .await
                .unwrap_or_else(|e| panic!("{}: bind: {e}", rig.name));
            let closed = listener.closed();
            let listener = std::sync::Arc::new(listener);
            let waiting = {
                let listener = std::sync::Arc::clone(&listener);
                tokio::spawn(async move {
                    let _ = listener.accept().await;
                })
            };
            // Let the accept start (an integer port publishes its keys now).
            tokio::time::sleep(Duration::from_millis(100)).await;
            waiting.abort();
            let _ = waiting.await;
            drop(listener);
            tokio::time::timeout(Duration::from_secs(10), closed)
                .await
                .unwrap_or_else(|_| panic!("{}: closed never resolved", rig.name));
        });
        (rig.check)();
    }
}
