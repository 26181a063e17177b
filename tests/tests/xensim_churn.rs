//! Churn on the cross-process simulated host: 10,000 connections opened and closed in turn, in
//! both roles, over five ring placements, closed in order, dropped, and (one in 250) with one
//! end a process killed with SIGKILL. Afterwards the host holds nothing, every xenstore node
//! holds what it held before, and the host's memory (hypervisor and xenstore daemon, one
//! process) has not grown beyond what the first thousand connections brought.
//!
//! A server killed with SIGKILL cannot remove its keys (nor can anyone but its domain: on real
//! Xen they stay until the next server at that path replaces them, or the domain goes). So the
//! killed servers all use one path, and the last connection is an orderly server there, which
//! replaces the stale keys and removes them when it closes. The directories above that path,
//! which the first killed server created, stay behind empty, as they would under xenstored.

#[path = "xensim_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use support::{artifacts, killed, wait_for, Host};
use vchan::xensim::XensimDomain;
use vchan::{Address, Backend, RingSizes, Vchan, VchanError};
use xen_types::DomId;
use xenstore::{TxId, XenStore};

const CONNECTIONS: usize = 10_000;
/// One connection in this many has an end in a child process that is killed.
const KILL_EVERY: usize = 250;
/// The host's memory is measured after this many connections, and again at the end.
const WARM_UP: usize = 1_000;
/// How much the host's resident memory may grow after the warm-up (allocator slack), in KiB.
/// A leak of 100 bytes per connection would be 900 KB by the end.
const RSS_SLACK_KIB: u64 = 768;
const GUEST: DomId = DomId(1);
const WAIT: Duration = Duration::from_secs(20);

/// Every node of the store under `path`, with its value.
fn tree<S: XenStore>(store: &S, path: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    let value = store.read(TxId::NONE, path).unwrap_or_default();
    out.insert(path.to_owned(), value);
    let children = store.directory(TxId::NONE, path).unwrap_or_default();
    for child in children {
        let child_path = match path {
            "/" => format!("/{child}"),
            _ => format!("{path}/{child}"),
        };
        tree(store, &child_path, out);
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read its status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in its status")
}

const PLACEMENTS: [RingSizes; 5] = [
    RingSizes {
        server_read: 1024,
        server_write: 2048,
    },
    RingSizes {
        server_read: 2048,
        server_write: 1024,
    },
    RingSizes {
        server_read: 4096,
        server_write: 4096,
    },
    RingSizes {
        server_read: 65536,
        server_write: 16384,
    },
    RingSizes {
        server_read: 16384,
        server_write: 65536,
    },
];

/// One connection between two in-process endpoints: a ping, a pong, and one way of ending.
fn connect_and_close(dom0: &XensimDomain, guest: &XensimDomain, i: usize) {
    let (server_side, client_side, server_dom, client_dom) = match i % 2 {
        0 => (dom0, guest, DomId::DOM0, GUEST),
        _ => (guest, dom0, GUEST, DomId::DOM0),
    };
    let port = Address::Port(1000 + (i % 64) as u32);
    let sizes = PLACEMENTS[(i / 2) % PLACEMENTS.len()];
    let server = Vchan::server(server_side, client_dom, &port, sizes)
        .unwrap_or_else(|e| panic!("connection {i}: serve: {e}"));
    let client = Vchan::client(client_side, server_dom, &port, Some(WAIT))
        .unwrap_or_else(|e| panic!("connection {i}: connect: {e}"));
    (&client).write_all(b"ping").expect("ping");
    let mut buf = [0u8; 4];
    (&server).read_exact(&mut buf).expect("read the ping");
    (&server).write_all(b"pong").expect("pong");
    (&client).read_exact(&mut buf).expect("read the pong");
    assert_eq!(&buf, b"pong");
    match i % 3 {
        0 => {
            client.close().expect("close the client");
            server.close().expect("close the server");
        }
        1 => {
            server.close().expect("close the server");
            client.close().expect("close the client");
        }
        _ => drop((server, client)),
    }
}

/// One connection whose other end is `vchan-cat` in a child process, killed with SIGKILL once
/// connected; the in-process end sees the peer gone.
fn connect_and_kill(host: &Host, dom0: &XensimDomain, i: usize) {
    let cat = &artifacts().vchan_cat;
    let port = KILLED_SERVER_PORT + ((i / KILL_EVERY) % 2) as u32;
    let port_text = port.to_string();
    let mut buf = [0u8; 16];
    if (i / KILL_EVERY).is_multiple_of(2) {
        // The child serves dom0 from the guest; we connect, then it dies.
        let mut child = host
            .run_as(GUEST.0, cat, &["-l", "0", &port_text])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vchan-cat -l");
        let client = connect_over_stale_keys(dom0, port, i);
        (&client).write_all(b"x").expect("write to the child");
        child.kill().expect("SIGKILL the child");
        assert!(killed(&wait_for(&mut child, WAIT, "vchan-cat -l")));
        match client.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("connection {i}: {n} bytes from a killed peer"),
            Err(e) => panic!("connection {i}: {e}"),
        }
    } else {
        // We serve the guest; the child connects, then dies.
        let server = Vchan::server(
            dom0,
            GUEST,
            &Address::Port(port),
            PLACEMENTS[i % PLACEMENTS.len()],
        )
        .expect("serve the child");
        let mut child = host
            .run_as(GUEST.0, cat, &["--wait", "20", "0", &port_text])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vchan-cat");
        server
            .wait_connected(Some(WAIT))
            .unwrap_or_else(|e| panic!("connection {i}: the child did not connect: {e}"));
        child.kill().expect("SIGKILL the child");
        assert!(killed(&wait_for(&mut child, WAIT, "vchan-cat")));
        match server.read(&mut buf) {
            Ok(0) | Err(VchanError::PeerClosed) => {}
            Ok(n) => panic!("connection {i}: {n} bytes from a killed peer"),
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
}

/// The port of the servers that are killed (the guest serves there); the next one after it is
/// where dom0 serves the clients that are killed.
const KILLED_SERVER_PORT: u32 = 2000;

/// Connect to the guest's server at `port`, where a killed server's keys may still be, until
/// the new server has replaced them (the client finds them stale: their grant or port is gone).
fn connect_over_stale_keys(dom0: &XensimDomain, port: u32, i: usize) -> Vchan<XensimDomain> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match Vchan::client(dom0, GUEST, &Address::Port(port), Some(WAIT)) {
            Ok(client) => return client,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("connection {i}: connect to the child: {e}"),
        }
    }
}

#[test]
fn ten_thousand_connections_leave_the_host_and_the_store_as_they_were() {
    let host = Host::start("churn", &[GUEST.0]);
    let dom0 = XensimDomain::new(&host.dir, DomId::DOM0);
    let guest = XensimDomain::new(&host.dir, GUEST);
    let store = dom0.open_store().expect("open xenstore as dom0");
    let mut before = BTreeMap::new();
    tree(&store, "/", &mut before);
    let mut warm_rss = 0;
    for i in 0..CONNECTIONS {
        if i % KILL_EVERY == KILL_EVERY - 1 {
            connect_and_kill(&host, &dom0, i);
        } else {
            connect_and_close(&dom0, &guest, i);
        }
        if i + 1 == WARM_UP {
            warm_rss = rss_kib(host.serve_pid());
        }
    }
    // An orderly server where the killed ones served: it replaces their stale keys, and
    // removes its own when it closes.
    let last = Vchan::server(
        &guest,
        DomId::DOM0,
        &Address::Port(KILLED_SERVER_PORT),
        PLACEMENTS[0],
    )
    .expect("serve where the killed servers did");
    let client = connect_over_stale_keys(&dom0, KILLED_SERVER_PORT, CONNECTIONS);
    client.close().expect("close the last client");
    last.close().expect("close the last server");
    let end_rss = rss_kib(host.serve_pid());
    let mut after = BTreeMap::new();
    tree(&store, "/", &mut after);
    // Every node as before, but for empty directories left above the killed servers' path.
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .filter(|k| before.contains_key(*k) || !after[*k].is_empty())
        .collect();
    assert!(changed.is_empty(), "the store changed: {changed:?}");
    let left: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(
        left.iter()
            .all(|k| format!("/local/domain/{}/data/vchan/0", GUEST.0).starts_with(k.as_str())),
        "directories left elsewhere: {left:?}"
    );
    drop(store);
    host.assert_clean();
    println!(
        "{CONNECTIONS} connections: host resident memory {warm_rss} KiB after {WARM_UP}, \
         {end_rss} KiB at the end"
    );
    assert!(
        end_rss <= warm_rss + RSS_SLACK_KIB,
        "the host grew from {warm_rss} KiB to {end_rss} KiB over {} connections",
        CONNECTIONS - WARM_UP
    );
}
