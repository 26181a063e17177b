//! The endpoints over the in-process simulation: every placement, both directions, blocking and
//! non-blocking, packets, close and EOF. Each test ends with the leak check.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use vchan::{Address, RingSizes, State, Vchan, VchanError};
use xen_types::DomId;

fn sizes(read: usize, write: usize) -> RingSizes {
    RingSizes {
        server_read: read,
        server_write: write,
    }
}

/// Push `data` through `from` on one thread while `to` drains it on another; return what arrived.
fn transfer(from: &Endpoint, to: &Endpoint, data: &[u8]) -> Vec<u8> {
    thread::scope(|s| {
        s.spawn(|| {
            let mut w = from;
            // Odd chunk sizes so writes straddle the wrap point in every way.
            for chunk in data.chunks(3001) {
                w.write_all(chunk).unwrap();
            }
        });
        let mut got = Vec::with_capacity(data.len());
        let mut buf = vec![0u8; 7777];
        while got.len() < data.len() {
            let n = to.read(&mut buf).unwrap();
            assert!(n > 0, "unexpected EOF");
            got.extend_from_slice(&buf[..n]);
        }
        got
    })
}

#[test]
fn every_ring_placement_carries_data_both_ways_across_the_wrap() {
    for (read, write, name) in PLACEMENTS {
        let host = Host::new();
        let (server, client) = host.pair(sizes(read, write));
        assert!(server.read_capacity() >= read.max(1024), "{name}");
        assert!(server.write_capacity() >= write.max(1024), "{name}");
        assert_eq!(server.read_capacity(), client.write_capacity(), "{name}");
        assert_eq!(server.write_capacity(), client.read_capacity(), "{name}");
        let up = pattern(3 * (1 << 20) + 17, 1);
        let down = pattern(2 * (1 << 20) + 5, 2);
        // Both directions at once.
        let (got_up, got_down) = thread::scope(|s| {
            let up_t = s.spawn(|| transfer(&client, &server, &up));
            let down_t = s.spawn(|| transfer(&server, &client, &down));
            (up_t.join().unwrap(), down_t.join().unwrap())
        });
        assert!(got_up == up, "client-to-server bytes differ ({name})");
        assert!(got_down == down, "server-to-client bytes differ ({name})");
        drop((server, client));
        host.assert_clean();
    }
}

#[test]
fn exact_orders_match_the_libxenvchan_rule() {
    let host = Host::new();
    let cases = [
        ((0, 0), (1024, 2048)),
        ((2048, 1024), (2048, 1024)),
        ((4096, 5000), (4096, 8192)),
        ((1 << 20, 1), (1 << 20, 2048)),
    ];
    for ((read, write), (read_cap, write_cap)) in cases {
        let (server, client) = host.pair(sizes(read, write));
        assert_eq!(
            (server.read_capacity(), server.write_capacity()),
            (read_cap, write_cap)
        );
        assert_eq!(
            (client.write_capacity(), client.read_capacity()),
            (read_cap, write_cap)
        );
    }
    host.assert_clean();
}

#[test]
fn server_reports_waiting_then_connected_then_closed() {
    let host = Host::new();
    let server = Vchan::server(
        &host.server_dom,
        CLIENT,
        &Address::Port(3),
        RingSizes::default(),
    )
    .unwrap();
    assert_eq!(server.state().unwrap(), State::WaitingForPeer);
    assert!(matches!(
        server.wait_connected(Some(Duration::from_millis(20))),
        Err(VchanError::TimedOut)
    ));
    let client = Vchan::client(&host.client_dom, SERVER, &Address::Port(3), None).unwrap();
    assert_eq!(
        server.wait_connected(Some(BOUND)).unwrap(),
        State::Connected
    );
    assert_eq!(client.state().unwrap(), State::Connected);
    client.close().unwrap();
    assert_eq!(server.state().unwrap(), State::PeerClosed);
    drop(server);
    host.assert_clean();
}

#[test]
fn data_written_just_before_close_is_read_before_eof() {
    for (read, write, name) in PLACEMENTS {
        let host = Host::new();
        let (server, client) = host.pair(sizes(read, write));
        let data = pattern(client.write_capacity(), 9);
        (&client).write_all(&data).unwrap();
        client.close().unwrap();
        let mut got = Vec::new();
        (&server).read_to_end(&mut got).unwrap();
        assert!(got == data, "{name}: lost bytes at close");
        assert_eq!(server.read(&mut [0u8; 8]).unwrap(), 0, "EOF stays EOF");
        assert!(matches!(server.write(b"x"), Err(VchanError::PeerClosed)));
        drop(server);
        host.assert_clean();
    }
}

#[test]
fn a_blocked_reader_wakes_on_the_peers_close() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes::default());
    let started = Instant::now();
    thread::scope(|s| {
        let reader = s.spawn(|| client.read(&mut [0u8; 16]));
        thread::sleep(Duration::from_millis(50));
        server.close().unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), 0);
    });
    assert!(started.elapsed() < BOUND);
    drop(client);
    host.assert_clean();
}

#[test]
fn a_blocked_writer_wakes_on_the_peers_close_with_an_error() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes::default());
    (&client)
        .write_all(&vec![1u8; client.write_capacity()])
        .unwrap();
    thread::scope(|s| {
        let writer = s.spawn(|| client.write(b"more"));
        thread::sleep(Duration::from_millis(50));
        drop(server);
        assert!(matches!(
            writer.join().unwrap(),
            Err(VchanError::PeerClosed)
        ));
    });
    drop(client);
    host.assert_clean();
}

#[test]
fn non_blocking_mode_says_would_block_and_the_fd_wakes_the_poller() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes::default());
    server.set_nonblocking(true);
    client.set_nonblocking(true);
    let err = std::io::Read::read(&mut &server, &mut [0u8; 4]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
    // Fill the client's write ring, then one more byte would block.
    let cap = client.write_capacity();
    assert_eq!(client.write(&vec![5u8; cap + 100]).unwrap(), cap);
    assert!(matches!(client.write(b"x"), Err(VchanError::WouldBlock)));
    // The server's fd is readable now (the client's write raised the event we asked for).
    assert!(
        poll_readable(&server, 1000),
        "the event fd should be readable"
    );
    let mut buf = vec![0u8; cap];
    assert_eq!(server.read(&mut buf).unwrap(), cap);
    assert!(buf.iter().all(|b| *b == 5));
    drop((server, client));
    host.assert_clean();
}

fn poll_readable(fd: &impl AsFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call's duration; the fd is kept open by the borrow.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

#[test]
fn packets_are_all_or_nothing_and_oversized_ones_are_refused() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes::default());
    let cap = client.write_capacity();
    assert!(matches!(
        client.send(&vec![0u8; cap + 1]),
        Err(VchanError::MessageTooLarge { .. })
    ));
    client.set_nonblocking(true);
    assert!(matches!(
        client.send(&vec![0u8; cap + 1]),
        Err(VchanError::MessageTooLarge { .. })
    ));
    client.send(&pattern(cap - 10, 3)).unwrap();
    assert!(
        matches!(client.send(&[0u8; 11]), Err(VchanError::WouldBlock)),
        "all or nothing"
    );
    assert_eq!(server.data_ready().unwrap(), cap - 10);
    let mut small = vec![0u8; 100];
    server.recv(&mut small).unwrap();
    assert_eq!(&small[..], &pattern(cap - 10, 3)[..100]);
    assert!(matches!(
        server.recv(&mut vec![0u8; server.read_capacity() + 1]),
        Err(VchanError::MessageTooLarge { .. })
    ));
    server.set_nonblocking(true);
    let mut rest = vec![0u8; cap];
    assert!(
        matches!(server.recv(&mut rest), Err(VchanError::WouldBlock)),
        "not enough: nothing taken"
    );
    assert_eq!(server.data_ready().unwrap(), cap - 110);
    client.close().unwrap();
    assert!(matches!(
        server.recv(&mut rest),
        Err(VchanError::PeerClosed)
    ));
    let mut tail = vec![0u8; cap - 110];
    server.recv(&mut tail).unwrap();
    drop(server);
    host.assert_clean();
}

#[test]
fn blocking_send_waits_for_room_and_timeouts_end_waits() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes::default());
    let cap = client.write_capacity();
    client.send(&vec![1u8; cap]).unwrap();
    client.set_write_timeout(Some(Duration::from_millis(30)));
    assert!(matches!(client.send(&[2u8; 10]), Err(VchanError::TimedOut)));
    client.set_write_timeout(None);
    thread::scope(|s| {
        let sender = s.spawn(|| client.send(&[2u8; 10]));
        thread::sleep(Duration::from_millis(30));
        let mut buf = vec![0u8; 10];
        server.recv(&mut buf).unwrap();
        sender.join().unwrap().unwrap();
    });
    server.set_read_timeout(Some(Duration::from_millis(30)));
    let mut all = vec![0u8; cap];
    server.recv(&mut all).unwrap();
    assert!(matches!(
        server.recv(&mut all[..1]),
        Err(VchanError::TimedOut)
    ));
    drop((server, client));
    host.assert_clean();
}

#[test]
fn data_written_before_the_client_connects_is_delivered() {
    let host = Host::new();
    let server = Vchan::server(
        &host.server_dom,
        CLIENT,
        &Address::Port(4),
        RingSizes::default(),
    )
    .unwrap();
    server.send(b"early").unwrap();
    let client = Vchan::client(&host.client_dom, SERVER, &Address::Port(4), None).unwrap();
    let mut buf = [0u8; 5];
    client.recv(&mut buf).unwrap();
    assert_eq!(&buf, b"early");
    drop((client, server));
    host.assert_clean();
}

#[test]
fn a_client_waits_for_its_server_or_reports_none() {
    let host = Host::new();
    let err = Vchan::client(&host.client_dom, SERVER, &Address::Port(9), None).unwrap_err();
    assert!(matches!(err, VchanError::NoServer { .. }), "{err}");
    let err = Vchan::client(
        &host.client_dom,
        SERVER,
        &Address::Port(9),
        Some(Duration::from_millis(30)),
    )
    .unwrap_err();
    assert!(matches!(err, VchanError::NoServer { .. }), "{err}");
    thread::scope(|s| {
        let client =
            s.spawn(|| Vchan::client(&host.client_dom, SERVER, &Address::Port(9), Some(BOUND)));
        thread::sleep(Duration::from_millis(30));
        let server = Vchan::server(
            &host.server_dom,
            CLIENT,
            &Address::Port(9),
            RingSizes::default(),
        )
        .unwrap();
        let client = client.join().unwrap().unwrap();
        client.send(b"hi").unwrap();
        let mut buf = [0u8; 2];
        server.recv(&mut buf).unwrap();
    });
    host.assert_clean();
}

#[test]
fn arbitrary_paths_work_beside_the_port_convention() {
    let host = Host::new();
    let path = "/local/domain/0/data/custom-service";
    let address = Address::Path(path.to_owned());
    let server = Vchan::server(&host.server_dom, CLIENT, &address, RingSizes::default()).unwrap();
    let client = Vchan::client(&host.client_dom, SERVER, &address, None).unwrap();
    client.send(b"ok").unwrap();
    let mut buf = [0u8; 2];
    server.recv(&mut buf).unwrap();
    assert_eq!("5".parse::<Address>().unwrap(), Address::Port(5));
    assert_eq!(
        "data/x".parse::<Address>().unwrap(),
        Address::Path("data/x".into())
    );
    drop((client, server));
    host.assert_clean();
}

#[test]
fn another_domain_cannot_connect_to_a_server_for_someone_else() {
    let host = Host::new();
    let intruder = host.xen.create_domain(DomId(8)).unwrap();
    let _server = Vchan::server(
        &host.server_dom,
        CLIENT,
        &Address::Port(2),
        RingSizes::default(),
    )
    .unwrap();
    let path = Address::Path(format!("/local/domain/0/data/vchan/{}/2", CLIENT));
    let err = Vchan::client(&intruder, SERVER, &path, None).unwrap_err();
    // The keys are readable by the client domain only: to anyone else there is no server.
    assert!(matches!(err, VchanError::NoServer { .. }), "{err}");
}

#[test]
fn many_pairs_in_one_host_are_independent() {
    let host = Host::new();
    let doms: Vec<_> = (10..14)
        .map(|d| host.xen.create_domain(DomId(d)).unwrap())
        .collect();
    let pairs: Vec<_> = doms
        .iter()
        .map(|d| {
            let s = Vchan::server(
                &host.server_dom,
                d.domid(),
                &Address::Port(1),
                RingSizes::default(),
            )
            .unwrap();
            let c = Vchan::client(d, SERVER, &Address::Port(1), None).unwrap();
            (s, c)
        })
        .collect();
    for (i, (s, c)) in pairs.iter().enumerate() {
        c.send(&[i as u8; 3]).unwrap();
        let mut buf = [0u8; 3];
        s.recv(&mut buf).unwrap();
        assert_eq!(buf, [i as u8; 3]);
    }
    drop(pairs);
    host.assert_clean();
}

#[test]
fn size_queries_answer_while_a_read_and_a_write_are_blocked() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes::default());
    // Fill the client's write ring so a write blocks too.
    let capacity = client.write_capacity();
    client.write_all_bytes(&vec![5u8; capacity]);
    let blocked = &client;
    thread::scope(|s| {
        let reader = s.spawn(move || blocked.read(&mut [0u8; 8]));
        let writer = s.spawn(move || blocked.write(b"more"));
        // Both are asleep on the event channel by now (well past the spin budget).
        thread::sleep(Duration::from_millis(100));
        let (tx, rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let answers = (
                blocked.data_ready().unwrap(),
                blocked.buffer_space().unwrap(),
                blocked.read_capacity(),
                blocked.write_capacity(),
            );
            tx.send(answers).unwrap();
        });
        let answers = rx
            .recv_timeout(BOUND)
            .expect("the size queries waited for the blocked calls");
        assert_eq!(answers, (0, 0, 2048, capacity));
        // Release both blocked calls.
        server.write_all_bytes(b"hi");
        let mut sink = vec![0u8; capacity];
        (&server).read_exact(&mut sink).unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), 2);
        assert_eq!(writer.join().unwrap().unwrap(), 4);
    });
    drop((server, client));
    host.assert_clean();
}

/// `Write::write_all` on a shared reference, unwrapped.
trait WriteAllBytes {
    fn write_all_bytes(&self, data: &[u8]);
}

impl WriteAllBytes for Endpoint {
    fn write_all_bytes(&self, data: &[u8]) {
        let mut w = self;
        w.write_all(data).unwrap();
    }
}

#[test]
fn shutdown_write_is_a_half_close_for_a_peer_of_this_crate() {
    for (read, write, name) in PLACEMENTS {
        let host = Host::new();
        let (server, client) = host.pair(sizes(read, write));
        let request = pattern(client.write_capacity() + 1000, 4);
        let reply = pattern(3 * server.write_capacity() + 7, 5);
        thread::scope(|s| {
            let serving = s.spawn(|| {
                let mut got = Vec::new();
                (&server).read_to_end(&mut got).unwrap();
                server.write_all_bytes(&reply);
                server.shutdown_write().unwrap();
                got
            });
            client.write_all_bytes(&request);
            client.shutdown_write().unwrap();
            assert!(
                matches!(client.write(b"x"), Err(VchanError::ShutDown)),
                "{name}: write after shutdown"
            );
            let mut got = Vec::new();
            (&client).read_to_end(&mut got).unwrap();
            assert!(got == reply, "{name}: reply lost after the half-close");
            assert!(serving.join().unwrap() == request, "{name}: request lost");
        });
        // Both still connected: a half-close is not a close.
        assert_eq!(client.state().unwrap(), State::Connected);
        drop((server, client));
        host.assert_clean();
    }
}

/// A server may be started for a client domain the toolstack has not created yet: its wait for
/// the client outlasts several liveness looks and ends when the client comes.
#[test]
fn a_server_waits_for_a_client_whose_domain_does_not_exist_yet() {
    let host = Host::new();
    let later = DomId(9);
    let server = Vchan::server(
        &host.server_dom,
        later,
        &Address::Port(3),
        RingSizes::default(),
    )
    .unwrap();
    thread::scope(|s| {
        let waiting = s.spawn(|| server.wait_connected(Some(Duration::from_secs(10))));
        thread::sleep(Duration::from_millis(1200));
        let guest = host.xen.create_domain(later).unwrap();
        let client = Vchan::client(&guest, SERVER, &Address::Port(3), None).unwrap();
        assert_eq!(waiting.join().unwrap().unwrap(), State::Connected);
        drop(client);
    });
}

/// The toolstack destroys the client's domain (it removes the domain's xenstore home; the
/// domain's kernel never runs again, so no unmap notification clears a live byte and no event
/// comes): dom0's endpoint, asleep in a read (server) or in a write with its ring full
/// (client), reports the peer gone within a second. A peer whose domain lives is never taken for
/// gone, however long the sleep.
#[test]
fn a_destroyed_peer_domain_is_noticed_by_a_sleeping_dom0_endpoint_within_a_second() {
    use vchan::Backend;
    use xenstore::{TxId, XenStore};
    for dom0_serves in [true, false] {
        let host = Host::new();
        let sizes = RingSizes {
            server_read: 4096,
            server_write: 4096,
        };
        let (dom0_end, guest_end) = if dom0_serves {
            host.pair(sizes)
        } else {
            // The guest serves dom0.
            let server = Vchan::server(&host.client_dom, SERVER, &Address::Port(2), sizes).unwrap();
            let client = Vchan::client(&host.server_dom, CLIENT, &Address::Port(2), None).unwrap();
            (client, server)
        };
        // Both asleep well past a liveness look: nobody is taken for gone.
        let started = Instant::now();
        thread::scope(|s| {
            let guest = s.spawn(|| guest_end.read(&mut [0u8; 16]));
            thread::sleep(Duration::from_millis(1300));
            assert_eq!(dom0_end.state().unwrap(), State::Connected);
            assert_eq!(guest_end.state().unwrap(), State::Connected);
            (&dom0_end).write_all(b"x").unwrap();
            assert_eq!(guest.join().unwrap().unwrap(), 1);
        });
        assert!(started.elapsed() >= Duration::from_millis(1300));
        // dom0 asleep: reading (it serves) or writing into a full ring (it is the client); a
        // timeout far past the bound, so that missing the death fails rather than hangs.
        dom0_end.set_read_timeout(Some(Duration::from_secs(5)));
        dom0_end.set_write_timeout(Some(Duration::from_secs(5)));
        let outcome = thread::scope(|s| {
            let blocked = s.spawn(|| {
                if dom0_serves {
                    dom0_end.read(&mut [0u8; 16]).map(|n| n as i64)
                } else {
                    let chunk = vec![7u8; 64 * 1024];
                    loop {
                        match dom0_end.write(&chunk) {
                            Ok(_) => continue,
                            Err(e) => break Err(e),
                        }
                    }
                }
            });
            thread::sleep(Duration::from_millis(200));
            let destroyed = Instant::now();
            let store = host.server_dom.open_store().unwrap();
            store
                .rm(TxId::NONE, &format!("/local/domain/{CLIENT}"))
                .unwrap();
            let outcome = blocked.join().unwrap();
            (outcome, destroyed.elapsed())
        });
        let (result, noticed) = outcome;
        match (dom0_serves, result) {
            (true, Ok(0)) | (false, Err(VchanError::PeerClosed)) => {}
            (serves, other) => panic!("dom0 serves: {serves}: {other:?}"),
        }
        assert!(
            noticed < Duration::from_secs(1),
            "noticed after {noticed:?}"
        );
        assert_eq!(dom0_end.state().unwrap(), State::PeerClosed);
        println!("dom0 serves: {dom0_serves}: the destroyed domain noticed in {noticed:?}");
        drop((dom0_end, guest_end));
    }
}

/// The simulated hypervisor destroys the client's domain mid-transfer (as `xensim destroy`
/// does, in process): the domain's handles close, their unmap notifications fire, and dom0's
/// server reads what the ring held and then the end of the stream, at once. The destroyed
/// domain's endpoint fails rather than hangs, and once both are dropped nothing is left.
#[test]
fn destroying_the_client_domain_mid_transfer_ends_the_stream_and_frees_everything() {
    let host = Host::new();
    let (server, client) = host.pair(RingSizes {
        server_read: 4096,
        server_write: 4096,
    });
    // Far past the bound: a missed death fails the test rather than hanging it.
    client.set_write_timeout(Some(Duration::from_secs(20)));
    server.set_read_timeout(Some(Duration::from_secs(20)));
    let (received, noticed, sender) = thread::scope(|s| {
        let sender = s.spawn(|| {
            let chunk = pattern(64 * 1024, 3);
            loop {
                if let Err(e) = (&client).write_all(&chunk) {
                    return e;
                }
            }
        });
        let mut first = [0u8; 1];
        (&server).read_exact(&mut first).expect("data flows");
        let destroyed = Instant::now();
        host.xen
            .destroy_domain(CLIENT)
            .expect("destroy the client's domain");
        // Read to the end; a stream that does not end within the bound fails (never hangs).
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            match server.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) if destroyed.elapsed() > BOUND => break Err("the stream did not end"),
                Ok(_) => continue,
                Err(_) => break Err("the read failed instead of ending"),
            }
        };
        (end, destroyed.elapsed(), sender.join().unwrap())
    });
    received.expect("the server reads to the end of the stream");
    assert!(noticed < BOUND, "noticed after {noticed:?}");
    assert_eq!(server.state().unwrap(), State::PeerClosed);
    println!("the destroyed client's end failed with: {sender}");
    assert!(
        host.xen.hypervisor().stats().handles > 0,
        "dom0's handles stay"
    );
    drop((server, client));
    host.assert_clean();
    assert_eq!(host.xen.hypervisor().stats().handles, 0);
    assert!(
        host.xen.create_domain(CLIENT).is_ok(),
        "the id is free again"
    );
}
