//! The service rendezvous against misbehaving and unlucky clients, on the in-process simulation:
//! who is asking comes from the request's owner, never from what the client wrote; refused,
//! abandoned and orphaned requests leave nothing behind; names resolve through the toolstack's
//! keys; a destroyed domain's requests and connections end at once, not at a timeout.

use std::io::{Read, Write};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use conduit_vchan::{describe, ConduitError, Connector, Limit, ListenOptions, Listener, Peer, Xen};
use vchan::sim::{SimDomain, SimXen};
use vchan::Backend;
use xen_types::DomId;
use xenstore::{Access, Errno, Perm, TxId, XenStore, XenstoreError};

const LISTENER: DomId = DomId(5);

struct World {
    xen: SimXen,
    listener: SimDomain,
}

impl World {
    fn new(guests: &[u16]) -> World {
        let xen = SimXen::new();
        let listener = xen.create_domain(LISTENER).unwrap();
        for &g in guests {
            xen.create_domain(DomId(g)).unwrap();
        }
        World { xen, listener }
    }

    fn bind(&self, name: &str, options: ListenOptions) -> Listener {
        self.bind_in(LISTENER, name, options)
    }

    /// Bind `name` in domain `domid` (dom0, say, which may watch `@releaseDomain`).
    fn bind_in(&self, domid: DomId, name: &str, options: ListenOptions) -> Listener {
        Listener::bind_with(
            &name.parse().unwrap(),
            options.xen(Xen::Sim(self.xen.domain(domid))),
        )
        .unwrap()
    }

    fn connector(&self, domid: u16) -> Connector {
        Connector::new()
            .xen(Xen::Sim(self.xen.domain(DomId(domid))))
            .timeout(Duration::from_secs(2))
    }

    /// Nothing of the rendezvous or of any vchan is left.
    fn assert_clean(&self) {
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

    /// Wait (bounded) until the service directory has no request left.
    fn wait_for_no_requests(&self, service: &str) {
        self.wait_for_no_requests_in(LISTENER, service);
    }

    /// Wait (bounded) until the directory of `service` in domain `listener` has no request left.
    fn wait_for_no_requests_in(&self, listener: DomId, service: &str) {
        let store = self.xen.store().connect(DomId::DOM0);
        let dir = service_dir(listener, service);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children = store.directory(TxId::NONE, &dir).unwrap_or_default();
            if children.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "requests stayed: {children:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait (bounded) until the listener in `listener` has answered each of these requests of
    /// `service` (their vchan keys appear).
    fn wait_until_answered(&self, listener: DomId, service: &str, ids: &[&str]) {
        let store = self.xen.store().connect(DomId::DOM0);
        let dir = service_dir(listener, service);
        let deadline = Instant::now() + Duration::from_secs(10);
        for id in ids {
            while store
                .read(TxId::NONE, &format!("{dir}/{id}/vchan/ring-ref"))
                .is_err()
            {
                assert!(Instant::now() < deadline, "request {id} was not answered");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The directory of `service` in domain `listener`'s home.
fn service_dir(listener: DomId, service: &str) -> String {
    format!("/local/domain/{listener}/data/conduit/{service}")
}

fn echo_once(listener: &Listener) -> Peer {
    let (mut conn, peer) = listener.accept().unwrap();
    let mut request = Vec::new();
    conn.read_to_end(&mut request).unwrap();
    conn.write_all(&request).unwrap();
    peer
}

/// `guest` calls `name` once while `listener` serves it; the listener must see `guest` calling.
fn served(world: &World, listener: &Listener, guest: u16, name: &str) {
    thread::scope(|s| {
        let serving = s.spawn(|| echo_once(listener));
        let message = format!("from {guest}").into_bytes();
        assert_eq!(
            call(&world.connector(guest), name, &message).unwrap(),
            message
        );
        assert_eq!(serving.join().unwrap(), Peer::Vchan(DomId(guest)));
    });
}

/// Make a request by hand, as domain `owner` (who must be the caller of `store`).
fn ask_by_hand<S: XenStore>(store: &S, node: &str, owner: DomId) {
    ask_by_hand_of(store, node, owner, LISTENER);
}

/// Make a request by hand, as domain `owner` (who must be the caller of `store`), of a listener
/// in domain `listener`.
fn ask_by_hand_of<S: XenStore>(store: &S, node: &str, owner: DomId, listener: DomId) {
    store
        .transaction(|tx| {
            store.write(tx, node, b"")?;
            store.set_perms(
                tx,
                node,
                &[
                    Perm::new(owner, Access::None),
                    Perm::new(listener, Access::Both),
                ],
            )
        })
        .unwrap();
}

fn call(connector: &Connector, name: &str, message: &[u8]) -> Result<Vec<u8>, ConduitError> {
    let mut conn = connector.connect(&name.parse().unwrap())?;
    conn.write_all(message).unwrap();
    conn.shutdown_write().unwrap();
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).unwrap();
    Ok(reply)
}

#[test]
fn the_listener_learns_the_client_from_the_owner_of_its_request() {
    let world = World::new(&[7, 9]);
    let listener = world.bind("vchan://*/echo", ListenOptions::new());
    thread::scope(|s| {
        let serving = s.spawn(|| [echo_once(&listener), echo_once(&listener)]);
        for guest in [7u16, 9] {
            let reply = call(&world.connector(guest), "vchan://5/echo", b"hi").unwrap();
            assert_eq!(reply, b"hi");
        }
        let peers = serving.join().unwrap();
        assert_eq!(peers, [Peer::Vchan(DomId(7)), Peer::Vchan(DomId(9))]);
    });
    drop(listener);
    world.assert_clean();
}

#[test]
fn a_request_claiming_to_be_another_domain_is_taken_for_its_creator() {
    let world = World::new(&[7, 9]);
    let listener = world.bind("vchan://*/echo", ListenOptions::new());
    let dir = format!("/local/domain/{LISTENER}/data/conduit/echo");
    let intruder = world.xen.domain(DomId(9)).open_store().unwrap();
    // Domain 9 cannot make a request owned by domain 7: only a privileged domain changes owners.
    let node = format!("{dir}/forged");
    let forged = intruder.transaction(|tx| {
        intruder.write(tx, &node, b"7")?;
        intruder.set_perms(
            tx,
            &node,
            &[
                Perm::new(DomId(7), Access::None),
                Perm::new(LISTENER, Access::Both),
            ],
        )
    });
    assert!(
        matches!(forged, Err(XenstoreError::Errno(Errno::EPERM))),
        "{forged:?}"
    );
    assert!(intruder.read(TxId::NONE, &node).is_err(), "aborted with it");
    // Whatever a client writes, the listener takes the request for its owner's.
    served(&world, &listener, 9, "vchan://5/echo");
    drop(listener);
    world.assert_clean();
}

#[test]
fn a_domain_outside_the_policy_cannot_even_ask() {
    let world = World::new(&[7, 9]);
    // Only domain 7 may use the service.
    let listener = world.bind("vchan://*/echo", ListenOptions::new().allow(vec![DomId(7)]));
    let dir = format!("/local/domain/{LISTENER}/data/conduit/echo");
    let intruder = world.xen.domain(DomId(9)).open_store().unwrap();
    let written = intruder.write(TxId::NONE, &format!("{dir}/attempt"), b"");
    assert!(
        matches!(written, Err(XenstoreError::Errno(Errno::EACCES))),
        "{written:?}"
    );
    let refused = call(&world.connector(9), "vchan://5/echo", b"x").unwrap_err();
    assert!(
        matches!(refused, ConduitError::NoService { .. }),
        "{refused}"
    );
    // Domain 7 is served.
    served(&world, &listener, 7, "vchan://5/echo");
    drop(listener);
    world.assert_clean();
}

#[test]
fn a_requester_that_never_connects_leaves_nothing_behind() {
    let world = World::new(&[7]);
    let listener = world.bind(
        "vchan://*/svc",
        ListenOptions::new().request_timeout(Duration::from_millis(300)),
    );
    // A request made by hand, as a client that died right after asking would leave it: the
    // listener answers with a vchan server that nobody joins, then gives up on it.
    let store = world.xen.domain(DomId(7)).open_store().unwrap();
    let node = format!("/local/domain/{LISTENER}/data/conduit/svc/orphan");
    ask_by_hand(&store, &node, DomId(7));
    world.wait_for_no_requests("svc");
    // The answer's grants and port went with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while world.xen.leaks().ports != 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        world.xen.leaks().ports,
        0,
        "the abandoned answer's port stayed"
    );
    drop(listener);
    world.assert_clean();
}

#[test]
fn too_many_pending_requests_are_refused_not_queued_for_ever() {
    let world = World::new(&[7]);
    let listener = world.bind(
        "vchan://*/svc",
        ListenOptions::new()
            .max_pending(2)
            .request_timeout(Duration::from_secs(30)),
    );
    let store = world.xen.domain(DomId(7)).open_store().unwrap();
    let dir = format!("/local/domain/{LISTENER}/data/conduit/svc");
    for i in 0..2 {
        let node = format!("{dir}/held{i}");
        ask_by_hand(&store, &node, DomId(7));
    }
    // Both are answered and pending (their vchan keys appear).
    let deadline = Instant::now() + Duration::from_secs(5);
    for i in 0..2 {
        while store
            .read(TxId::NONE, &format!("{dir}/held{i}/vchan/ring-ref"))
            .is_err()
        {
            assert!(Instant::now() < deadline, "request {i} was not answered");
            thread::sleep(Duration::from_millis(10));
        }
    }
    let refused = call(&world.connector(7), "vchan://5/svc", b"x").unwrap_err();
    assert!(matches!(refused, ConduitError::Refused { .. }), "{refused}");
    drop(listener);
    world.assert_clean();
}

#[test]
fn naming_mistakes_are_clear_errors() {
    let world = World::new(&[7]);
    let connector = world.connector(7);
    let missing = call(&connector, "vchan://5/nothing", b"x").unwrap_err();
    assert!(
        matches!(missing, ConduitError::NoService { .. }),
        "{missing}"
    );
    let listener = world.bind("vchan://*/svc", ListenOptions::new());
    let again = Listener::bind_with(
        &"vchan://*/svc".parse().unwrap(),
        ListenOptions::new().xen(Xen::Sim(world.listener.clone())),
    )
    .unwrap_err();
    assert!(matches!(again, ConduitError::InUse { .. }), "{again}");
    let nobody = call(&connector, "vchan://no-such-guest/svc", b"x").unwrap_err();
    assert!(
        matches!(nobody, ConduitError::NoSuchDomain { .. }),
        "{nobody}"
    );
    let any = connector
        .connect(&"vchan://*/svc".parse().unwrap())
        .unwrap_err();
    assert!(matches!(any, ConduitError::Unsupported { .. }), "{any}");
    drop(listener);
    world.assert_clean();
}

#[test]
fn a_domain_is_reached_by_the_name_its_toolstack_gave_it() {
    let world = World::new(&[7]);
    let listener = world.bind("vchan://*/echo", ListenOptions::new());
    thread::scope(|s| {
        let serving = s.spawn(|| echo_once(&listener));
        // dom0 may read every domain's name; the simulation names domain 5 "sim-5".
        assert_eq!(
            call(&world.connector(0), "vchan://sim-5/echo", b"by name").unwrap(),
            b"by name"
        );
        assert_eq!(serving.join().unwrap(), Peer::Vchan(DomId(0)));
    });
    drop(listener);
    world.assert_clean();
}

#[test]
fn a_listener_for_one_domain_refuses_the_others() {
    let world = World::new(&[7, 9]);
    let listener = world.bind("vchan://7/echo", ListenOptions::new());
    let refused = call(&world.connector(9), "vchan://5/echo", b"x").unwrap_err();
    assert!(
        matches!(
            refused,
            ConduitError::Refused { .. } | ConduitError::NoService { .. }
        ),
        "{refused}"
    );
    served(&world, &listener, 7, "vchan://5/echo");
    drop(listener);
    world.assert_clean();
}

#[test]
fn a_domain_destroyed_with_requests_pending_leaves_nothing_behind() {
    let world = World::new(&[3]);
    // A request timeout far beyond the test: only the domain's death can end these requests.
    let listener = world.bind_in(
        DomId::DOM0,
        "vchan://*/svc",
        ListenOptions::new().request_timeout(Duration::from_secs(600)),
    );
    let dir = service_dir(DomId::DOM0, "svc");
    {
        // Domain 3 asks twice and never connects.
        let guest = world.xen.domain(DomId(3)).open_store().unwrap();
        for id in ["a", "b"] {
            ask_by_hand_of(&guest, &format!("{dir}/{id}"), DomId(3), DomId::DOM0);
        }
    }
    world.wait_until_answered(DomId::DOM0, "svc", &["a", "b"]);
    // The toolstack destroys the domain: its handles close, its home goes and @releaseDomain
    // fires.
    world.xen.destroy_domain(DomId(3)).unwrap();
    world.wait_for_no_requests_in(DomId::DOM0, "svc");
    // The listener dropped them, and is still serving.
    let store = world.xen.store().connect(DomId::DOM0);
    assert!(
        store.read(TxId::NONE, &dir).is_ok(),
        "the service went early"
    );
    drop(listener);
    assert!(store.read(TxId::NONE, &dir).is_err(), "the service stayed");
    world.assert_clean();
}

#[test]
fn a_guest_destroyed_mid_transfer_ends_its_peers_stream_at_once() {
    let world = World::new(&[3]);
    let listener = world.bind_in(DomId::DOM0, "vchan://*/stream", ListenOptions::new());
    let (server, mut client) = thread::scope(|s| {
        let accepting = s.spawn(|| listener.accept().unwrap());
        let client = world
            .connector(3)
            .connect(&"vchan://0/stream".parse().unwrap())
            .unwrap();
        let (server, peer) = accepting.join().unwrap();
        assert_eq!(peer, Peer::Vchan(DomId(3)));
        (Arc::new(server), client)
    });
    // The transfer is under way both ways: the guest's first bytes arrive...
    client.write_all(b"hello").unwrap();
    let mut hello = [0u8; 5];
    (&*server).read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello");
    // ...and dom0 sends far more than a ring holds while it waits for the rest.
    let (done, outcomes) = mpsc::channel();
    let reader = {
        let (server, done) = (Arc::clone(&server), done.clone());
        thread::spawn(move || {
            let mut rest = Vec::new();
            let read = (&*server).read_to_end(&mut rest).map(|_| rest);
            // The test may have given up waiting (and dropped the receiver).
            let _ = done.send(("read", read.map(|rest| rest.len())));
        })
    };
    let writer = {
        let server = Arc::clone(&server);
        thread::spawn(move || {
            let big = vec![0x5a; 1 << 20];
            let written = (&*server).write_all(&big).map(|()| big.len());
            let _ = done.send(("write", written));
        })
    };
    let mut first = vec![0u8; 4096];
    client.read_exact(&mut first).unwrap();
    assert!(first.iter().all(|&b| b == 0x5a));
    // The guest dies with both directions open.
    world.xen.destroy_domain(DomId(3)).unwrap();
    // Both of dom0's calls end soon: a generous bound that only tells "ends" from "hangs".
    let mut read = None;
    let mut written = None;
    for _ in 0..2 {
        let (which, outcome) = outcomes
            .recv_timeout(Duration::from_secs(10))
            .expect("dom0's side still blocked after its peer was destroyed");
        match which {
            "read" => read = Some(outcome),
            _ => written = Some(outcome),
        }
    }
    // Nothing more came from the guest: end of stream or an error, never made-up data.
    match read.unwrap() {
        Ok(n) => assert_eq!(n, 0, "dom0 read {n} bytes the guest never wrote"),
        Err(e) => eprintln!("the read ended with: {e}"),
    }
    // The guest took 4096 bytes at most of a megabyte: the write cannot have completed.
    let written = written.unwrap();
    assert!(written.is_err(), "the write completed: {written:?}");
    reader.join().unwrap();
    writer.join().unwrap();
    drop(client);
    drop(Arc::into_inner(server).expect("the threads let go of the connection"));
    drop(listener);
    world.assert_clean();
}

/// Regression (issue 20): a domain the service admits may write into its directory, so it may
/// remove it; the listener then stopped (`ListenerStopped`) and every later client was turned
/// away. Now it publishes the directory again (its permissions, and the requests it was
/// answering), says so once through `on_recovered`, and goes on serving: every honest connect
/// made while another guest removes the directory over and over succeeds.
#[test]
fn a_guest_that_removes_the_service_directory_over_and_over_stops_nobody() {
    const THREADS: usize = 8;
    const EACH: usize = 20;
    let world = World::new(&[7, 9]);
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = {
        let reports = Arc::clone(&reports);
        world.bind_in(
            DomId::DOM0,
            "vchan://*/svc",
            ListenOptions::new().on_recovered(move |e| reports.lock().unwrap().push(e.to_string())),
        )
    };
    let dir = service_dir(DomId::DOM0, "svc");
    let dom0 = world.xen.store().connect(DomId::DOM0);
    let published = dom0.get_perms(TxId::NONE, &dir).unwrap();
    let listener = Arc::new(listener);
    let serving = {
        let listener = Arc::clone(&listener);
        thread::spawn(move || {
            let mut answering = Vec::new();
            for _ in 0..THREADS * EACH {
                let (mut conn, peer) = listener.accept().unwrap();
                assert_eq!(peer, Peer::Vchan(DomId(7)));
                answering.push(thread::spawn(move || {
                    let mut request = String::new();
                    conn.read_to_string(&mut request).unwrap();
                    conn.write_all(format!("answer to {request}").as_bytes())
                        .unwrap();
                }));
            }
            for a in answering {
                a.join().unwrap();
            }
        })
    };
    let attacking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let attacker = {
        let (attacking, dir) = (Arc::clone(&attacking), dir.clone());
        let store = world.xen.domain(DomId(9)).open_store().unwrap();
        thread::spawn(move || {
            let mut removed = 0;
            // ORDERING: Relaxed: a polled request to stop.
            while attacking.load(std::sync::atomic::Ordering::Relaxed) {
                if store.rm(TxId::NONE, &dir).is_ok() {
                    removed += 1;
                }
                thread::sleep(Duration::from_millis(2));
            }
            removed
        })
    };
    let connector = world.connector(7).timeout(Duration::from_secs(20));
    let failures: Vec<String> = thread::scope(|s| {
        let clients: Vec<_> = (0..THREADS)
            .map(|t| {
                let connector = &connector;
                s.spawn(move || {
                    let mut failures = Vec::new();
                    for i in 0..EACH {
                        let request = format!("{t}.{i}");
                        match call(connector, "vchan://0/svc", request.as_bytes()) {
                            Ok(reply) if reply == format!("answer to {request}").as_bytes() => {}
                            Ok(reply) => failures.push(format!("{request}: {reply:?}")),
                            Err(e) => failures.push(format!("{request}: {}", describe(&e))),
                        }
                    }
                    failures
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    // ORDERING: Relaxed, as above.
    attacking.store(false, std::sync::atomic::Ordering::Relaxed);
    let removed = attacker.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} honest connects failed while domain 9 removed the directory {removed} times: {failures:#?}",
        failures.len(),
        THREADS * EACH
    );
    assert!(removed > 0, "domain 9 never removed the directory");
    serving.join().unwrap();
    // The listener is serving, with the directory as it published it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dom0.get_perms(TxId::NONE, &dir).ok().as_ref() != Some(&published) {
        assert!(
            Instant::now() < deadline,
            "the directory was not published again"
        );
        thread::sleep(Duration::from_millis(10));
    }
    served(&world, &listener, 7, "vchan://0/svc");
    // Each restoration is reported, once at first, then grouped: never more lines than
    // removals, and at least the first.
    let reports = reports.lock().unwrap().clone();
    assert!(!reports.is_empty(), "no restoration was reported");
    assert!(
        reports.len() <= removed,
        "{} reports for {removed} removals",
        reports.len()
    );
    assert!(
        reports[0].contains("vchan://*/svc") && reports[0].contains("published again"),
        "{}",
        reports[0]
    );
    drop(Arc::into_inner(listener).expect("the server let go of the listener"));
    world.assert_clean();
}

/// A guest at one of its xenstore quotas (its other programs hold the rest: here, a connection
/// of its own): a connect waits it out within its timeout and succeeds once the quota frees up;
/// past the timeout it fails with `ConduitError::Limit`, whose one line names the quota. At the
/// watch quota it does not even wait: it looks for its answer without a watch.
#[test]
fn a_guest_at_its_xenstore_quotas_waits_them_out_or_names_the_one_it_met() {
    let world = World::new(&[7]);
    let listener = world.bind_in(DomId::DOM0, "vchan://*/svc", ListenOptions::new());
    let hog = world.xen.domain(DomId(7)).open_store().unwrap();
    let short = world.connector(7).timeout(Duration::from_millis(500));
    let long = world.connector(7).timeout(Duration::from_secs(20));
    let serving = thread::scope(|s| {
        let serving = s.spawn(|| (0..3).map(|_| echo_once(&listener)).collect::<Vec<_>>());
        let limit_of = |e: ConduitError| match e {
            ConduitError::Limit { limit, .. } => {
                let line = e.to_string();
                assert_eq!(line.lines().count(), 1, "{line}");
                assert!(
                    line.starts_with("vchan://0/svc: no connection within 0.5 s"),
                    "{line}"
                );
                eprintln!("{line}");
                limit
            }
            other => panic!("not a limit: {}", describe(&other)),
        };

        // Transactions: the guest's 10 are all open.
        let held: Vec<TxId> = (0..10).map(|_| hog.transaction_start().unwrap()).collect();
        let e = call(&short, "vchan://0/svc", b"t").unwrap_err();
        assert_eq!(limit_of(e), Limit::StoreTransactions);
        let waiting = s.spawn(|| call(&long, "vchan://0/svc", b"after transactions"));
        thread::sleep(Duration::from_millis(300));
        for tx in held {
            hog.transaction_end(tx, false).unwrap();
        }
        assert_eq!(waiting.join().unwrap().unwrap(), b"after transactions");

        // Watches: the guest's 128 are all registered; the connect looks without one.
        for i in 0..128 {
            hog.watch(&format!("data/w{i}"), "hog").unwrap();
        }
        assert_eq!(
            call(&long, "vchan://0/svc", b"without a watch").unwrap(),
            b"without a watch"
        );
        for i in 0..128 {
            hog.unwatch(&format!("data/w{i}"), "hog").unwrap();
        }

        // Nodes: the guest owns all the nodes it may.
        let mut filled = 0;
        while hog
            .write(TxId::NONE, &format!("data/fill/{filled}"), b"")
            .is_ok()
        {
            filled += 1;
        }
        assert!(filled > 900, "the node quota met after {filled} nodes");
        let e = call(&short, "vchan://0/svc", b"n").unwrap_err();
        assert_eq!(limit_of(e), Limit::StoreNodes);
        let waiting = s.spawn(|| call(&long, "vchan://0/svc", b"after nodes"));
        thread::sleep(Duration::from_millis(300));
        hog.rm(TxId::NONE, "data/fill").unwrap();
        assert_eq!(waiting.join().unwrap().unwrap(), b"after nodes");
        serving.join().unwrap()
    });
    assert_eq!(serving, vec![Peer::Vchan(DomId(7)); 3]);
    drop(listener);
    world.assert_clean();
}
