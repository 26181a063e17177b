//! The cross-process host ([`xensim::Host`], what `xensim serve` runs) through its clients.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use evtchn::EventChannel;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use xen_types::{DomId, Port};
use xensim::{Host, XensimEvtchn};

/// A host serving a fresh directory on a thread of its own; stopped and removed on drop.
struct Served {
    host: Host,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl Served {
    fn start() -> Served {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xensim-host-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let host = Host::bind(&dir).expect("bind the host");
        let runner = host.clone();
        let thread = std::thread::spawn(move || runner.run());
        Served {
            host,
            thread: Some(thread),
            dir,
        }
    }
}

impl Served {
    /// Wait until the host holds no handle or port (it reclaims a closed handle when its
    /// connection's end reaches it), up to 10 s.
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stats = self.host.stats();
        while (stats.handles, stats.ports) != (0, 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            stats = self.host.stats();
        }
        assert_eq!(
            (stats.handles, stats.ports),
            (0, 0),
            "the host still holds {stats:?}"
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.host.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How many one-port event messages a fresh `SOCK_SEQPACKET` pair holds on this machine: what a
/// handle's event socket holds before the host must wait for room.
fn event_socket_capacity() -> usize {
    let (a, _b) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let mut queued = 0;
    while socket::send(a.as_raw_fd(), &[0u8; 4], MsgFlags::MSG_DONTWAIT).is_ok() {
        queued += 1;
    }
    queued
}

/// Take events from `handle` until every port of `expected` has been delivered, each once.
/// Waits at most 30 s for any one event: past that, the rest were lost.
fn take_each_once(handle: &XensimEvtchn, expected: &HashSet<Port>, round: &str) {
    let mut seen = HashSet::new();
    while seen.len() < expected.len() {
        let mut fds = [PollFd::new(handle.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(30_000u16)).expect("poll");
        assert!(
            ready > 0,
            "{round}: {} of {} ports delivered, the rest lost",
            seen.len(),
            expected.len()
        );
        while let Some(port) = handle.pending().expect("pending") {
            assert!(expected.contains(&port), "{round}: port {port} not ours");
            assert!(seen.insert(port), "{round}: port {port} delivered twice");
        }
    }
}

#[test]
fn a_handle_with_more_ports_pending_than_its_event_socket_holds_loses_none() {
    const PORTS: usize = 1000;
    let capacity = event_socket_capacity();
    assert!(
        capacity < PORTS,
        "the premise: an event socket holds {capacity} events here, fewer than {PORTS} ports"
    );
    let served = Served::start();
    served.host.create_domain(DomId(1)).expect("domain 1");
    let receiver = XensimEvtchn::open(&served.dir, DomId::DOM0).expect("dom0's handle");
    let sender = XensimEvtchn::open(&served.dir, DomId(1)).expect("domain 1's handle");
    let mut ours = HashSet::new();
    let mut theirs = Vec::new();
    for _ in 0..PORTS {
        let port = receiver.bind_unbound_port(DomId(1)).expect("bind unbound");
        theirs.push(
            sender
                .bind_interdomain(DomId::DOM0, port)
                .expect("bind interdomain"),
        );
        ours.insert(port);
    }

    // Two events per port while nobody reads: the first is delivered (and masks the port), the
    // second coalesces into the port's pending bit.
    for &port in theirs.iter().chain(&theirs) {
        sender.notify(port).expect("notify");
    }
    take_each_once(&receiver, &ours, "the first events");

    // Unmasking delivers each pending one, again more than the socket holds.
    for &port in &ours {
        receiver.unmask(port).expect("unmask");
    }
    take_each_once(&receiver, &ours, "the coalesced events");

    // Nothing else: a round trip on each handle has put every request behind it.
    let last = sender.bind_unbound_port(DomId::DOM0).expect("a round trip");
    receiver
        .unbind(*ours.iter().next().unwrap())
        .expect("a round trip");
    assert_eq!(receiver.pending().expect("pending"), None, "no extra event");
    sender.unbind(last).expect("unbind");
    drop((receiver, sender));
    served.assert_clean();
}

#[test]
fn a_handle_that_closes_with_events_waiting_is_reclaimed_and_the_host_serves_on() {
    const PORTS: usize = 600;
    let served = Served::start();
    served.host.create_domain(DomId(1)).expect("domain 1");
    let sender = XensimEvtchn::open(&served.dir, DomId(1)).expect("domain 1's handle");
    let receiver = XensimEvtchn::open(&served.dir, DomId::DOM0).expect("dom0's handle");
    let mut theirs = Vec::new();
    for _ in 0..PORTS {
        let port = receiver.bind_unbound_port(DomId(1)).expect("bind unbound");
        theirs.push(sender.bind_interdomain(DomId::DOM0, port).expect("bind"));
    }
    for &port in &theirs {
        sender.notify(port).expect("notify");
    }
    // A round trip: every notify has been handled, so events wait for the receiver's room.
    sender.unbind(theirs.pop().unwrap()).expect("unbind");
    drop(receiver);
    for port in theirs {
        sender.unbind(port).expect("unbind");
    }
    drop(sender);

    // The host serves a new pair as before.
    let receiver = XensimEvtchn::open(&served.dir, DomId::DOM0).expect("dom0's handle");
    let sender = XensimEvtchn::open(&served.dir, DomId(1)).expect("domain 1's handle");
    let port = receiver.bind_unbound_port(DomId(1)).expect("bind unbound");
    let theirs = sender.bind_interdomain(DomId::DOM0, port).expect("bind");
    sender.notify(theirs).expect("notify");
    take_each_once(&receiver, &HashSet::from([port]), "after the close");
    drop((receiver, sender));
    served.assert_clean();
}
