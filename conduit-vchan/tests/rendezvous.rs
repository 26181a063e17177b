//! The service rendezvous against misbehaving and unlucky clients, on the in-process simulation:
//! who is asking comes from the request's owner, never from what the client wrote; refused,
//! abandoned and orphaned requests leave nothing behind; names resolve through the toolstack's
//! keys.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use conduit_vchan::{ConduitError, Connector, ListenOptions, Listener, Peer, Xen};
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
        Listener::bind_with(
            &name.parse().unwrap(),
            options.xen(Xen::Sim(self.listener.clone())),
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
        let store = self.xen.store().connect(DomId::DOM0);
        let dir = format!("/local/domain/{LISTENER}/data/conduit/{service}");
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
    store
        .transaction(|tx| {
            store.write(tx, node, b"")?;
            store.set_perms(
                tx,
                node,
                &[
                    Perm::new(owner, Access::None),
                    Perm::new(LISTENER, Access::Both),
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
