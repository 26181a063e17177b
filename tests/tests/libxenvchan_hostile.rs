//! A hostile or dying peer against a C program on the drop-in, on the simulated host: the test
//! plays the server by hand (its control page is ours to scribble on) or destroys the client's
//! domain, and `tests/c/vchan-probe.c`, built against Debian's header, runs on the drop-in.
//! Every case ends in -1 with `errno` set, or in the count written, never in a hang or a 0 for
//! ever; each ends with the leak check. Where Debian's library can run the same case without
//! hanging, it runs too, to show what the fix changes.

#[path = "xensim_support.rs"]
mod support;

#[path = "libxenvchan/support.rs"]
mod dropin;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use dropin::{c_program, lines, run_on, value, wait_for_key, Lib};
use evtchn::EventChannel;
use gnttab::{GrantShare, SharedMemory, SharedPages, UnmapNotify};
use support::{wait_for, Host};
use vchan::abi;
use vchan::xensim::XensimDomain;
use vchan::{Address, Backend, RingSizes, Vchan};
use xen_types::memory::SharedRegion;
use xen_types::{DomId, Port};
use xenstore::{Access, Perm, TxId, XenStore};

const CLIENT: DomId = DomId(1);
const LIMIT: Duration = Duration::from_secs(30);
/// The in-page rings the hand-played server offers: the client writes the left one (1024 bytes
/// at 1024) and reads the right one (2048 bytes at 2048).
const LEFT: usize = 1024;
const RIGHT: usize = 2048;

/// A server played by hand in dom0: a control page with in-page rings, the test's to write.
struct RawServer {
    events: <XensimDomain as Backend>::Events,
    port: Port,
    control: <<XensimDomain as Backend>::Sharer as GrantShare>::Pages,
    store: <XensimDomain as Backend>::Store,
    path: String,
}

impl RawServer {
    /// Share a page with the given ring orders and publish `ring-ref` (the real one unless
    /// `ring_ref` says otherwise) and `event-channel` at `data/vchan/1/PORT`.
    fn publish(host: &Host, port_no: u32, orders: (u16, u16), ring_ref: Option<&str>) -> RawServer {
        let dom0 = XensimDomain::new(&host.dir, DomId::DOM0);
        let sharer = dom0.open_sharer().expect("sharer");
        let events = dom0.open_events().expect("events");
        let port = events.bind_unbound_port(CLIENT).expect("port");
        let notify = UnmapNotify {
            clear_byte: Some(abi::SRV_LIVE),
            event: Some(port),
        };
        let control = sharer
            .share_pages(CLIENT, 1, true, Some(notify))
            .expect("share the control page");
        let page = control.region();
        page.store_u16(abi::LEFT_ORDER, orders.0, SeqCst);
        page.store_u16(abi::RIGHT_ORDER, orders.1, SeqCst);
        page.store_u8(abi::CLI_LIVE, abi::LIVE_WAITING, SeqCst);
        page.store_u8(abi::SRV_LIVE, abi::LIVE_CONNECTED, SeqCst);
        page.store_u8(abi::CLI_NOTIFY, abi::NOTIFY_WRITE, SeqCst);
        let store = dom0.open_store().expect("store");
        let path = format!("data/vchan/{CLIENT}/{port_no}");
        let perms = [
            Perm::new(DomId::DOM0, Access::None),
            Perm::new(CLIENT, Access::Read),
        ];
        let real_ref = control.refs()[0].0.to_string();
        for (key, value) in [
            ("ring-ref", ring_ref.unwrap_or(&real_ref)),
            ("event-channel", &port.0.to_string()),
        ] {
            let key = format!("{path}/{key}");
            store
                .write(TxId::NONE, &key, value.as_bytes())
                .expect("write a key");
            store
                .set_perms(TxId::NONE, &key, &perms)
                .expect("set its perms");
        }
        RawServer {
            events,
            port,
            control,
            store,
            path,
        }
    }

    fn page(&self) -> SharedRegion<'_> {
        self.control.region()
    }

    fn kick(&self) {
        self.events.notify(self.port).expect("notify");
    }

    /// Wait (bounded) until `done` holds of the page.
    fn wait_until(&self, what: &str, done: impl Fn(SharedRegion<'_>) -> bool) {
        let deadline = Instant::now() + LIMIT;
        while !done(self.page()) {
            assert!(Instant::now() < deadline, "the probe never {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn wait_connected(&self) {
        self.wait_until("connected", |p| {
            p.load_u8(abi::CLI_LIVE, SeqCst) == abi::LIVE_CONNECTED
        });
    }

    /// Write `data` into the right ring (the client's read ring) and publish it.
    fn send(&self, data: &[u8]) {
        let page = self.page();
        let prod = page.load_u32(abi::RIGHT_PROD, SeqCst);
        for (i, b) in data.iter().enumerate() {
            let at = (prod as usize + i) % RIGHT;
            page.copy_in(RIGHT + at, std::slice::from_ref(b));
        }
        page.store_u32(
            abi::RIGHT_PROD,
            prod.wrapping_add(data.len() as u32),
            SeqCst,
        );
        self.kick();
    }

    /// Take `n` bytes from the left ring (the client's write ring) without looking at them.
    fn consume(&self, n: u32) {
        let page = self.page();
        let cons = page.load_u32(abi::LEFT_CONS, SeqCst);
        page.store_u32(abi::LEFT_CONS, cons.wrapping_add(n), SeqCst);
        self.kick();
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        let _ = self.store.rm(TxId::NONE, &self.path);
        let _ = self.store.rm(TxId::NONE, &format!("data/vchan/{CLIENT}"));
    }
}

/// The probe as a client of the hand-played server at `port_no`, on `lib`.
fn probe_client(host: &Host, lib: Lib, port_no: u32, scenario: &[&str]) -> Child {
    let path = format!("/local/domain/0/data/vchan/{CLIENT}/{port_no}");
    let mut args = vec!["client", "0", &path];
    args.extend_from_slice(scenario);
    run_on(host, CLIENT.0, lib, &c_program("vchan-probe"), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the probe")
}

/// Wait for the probe to finish (bounded) and return its lines; it must exit 0.
fn finish(mut probe: Child, stdout: Option<ChildStdout>) -> Vec<String> {
    let status = wait_for(&mut probe, LIMIT, "the probe");
    let mut out = Vec::new();
    if let Some(mut stdout) = stdout.or_else(|| probe.stdout.take()) {
        stdout
            .read_to_end(&mut out)
            .expect("read the probe's output");
    }
    let stderr = support::stderr_of(&mut probe);
    assert!(status.success(), "the probe exited {status}: {stderr}");
    let lines = lines(&out);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("done"),
        "{lines:#?}\n{stderr}"
    );
    lines
}

/// The peer claims more bytes than its ring holds while a blocking read waits: the read fails
/// with `EPROTO` after the honest bytes, and the handle says closed; the size queries stay 0.
/// (Debian's library returns 0 from its internal look for ever here: the read hangs.)
#[test]
fn a_corrupt_index_fails_a_blocking_read_with_eproto() {
    let host = Host::start("dropin-hostile-read", &[CLIENT.0]);
    let server = RawServer::publish(&host, 3, (10, 11), None);
    let probe = probe_client(&host, Lib::Dropin, 3, &["read-until-error"]);
    server.wait_connected();
    server.send(&[7u8; 100]);
    // The probe reads the 100 honest bytes and waits for more (its request for an event).
    server.wait_until("read the honest bytes", |p| {
        p.load_u32(abi::RIGHT_CONS, SeqCst) == 100
            && p.load_u8(abi::SRV_NOTIFY, SeqCst) & abi::NOTIFY_WRITE != 0
    });
    server.page().store_u32(abi::RIGHT_PROD, 5000, SeqCst);
    server.kick();
    let lines = finish(probe, None);
    assert_eq!(value(&lines, "read"), "-1 EPROTO");
    assert_eq!(value(&lines, "total"), "100");
    assert_eq!(value(&lines, "is_open"), "0 EPROTO");
    assert_eq!(value(&lines, "data_ready"), "0");
    assert_eq!(value(&lines, "buffer_space"), "0");
    drop(server);
    host.assert_clean();
}

/// vchan-socket-proxy's loop (select, wait, is_open, `while (data_ready) read`) on a corrupt
/// ring: `data_ready` stays a size (0) and `is_open` says 0 at the next event, so the loop ends
/// instead of selecting for ever (Qubes issue 10833).
#[test]
fn a_corrupt_index_ends_a_select_loop() {
    let host = Host::start("dropin-hostile-select", &[CLIENT.0]);
    let server = RawServer::publish(&host, 4, (10, 11), None);
    let probe = probe_client(&host, Lib::Dropin, 4, &["select-loop"]);
    server.wait_connected();
    server.send(&[9u8; 100]);
    server.wait_until("read the honest bytes", |p| {
        p.load_u32(abi::RIGHT_CONS, SeqCst) == 100
    });
    server.page().store_u32(abi::RIGHT_PROD, 100 + 4096, SeqCst);
    server.kick();
    let lines = finish(probe, None);
    assert_eq!(value(&lines, "is_open"), "0 EPROTO");
    assert_eq!(value(&lines, "total"), "100");
    drop(server);
    host.assert_clean();
}

/// The peer moves its consumer index past what was written while a blocking write waits for
/// room: the write reports the bytes it wrote, and the next one fails with `EPROTO`.
#[test]
fn a_corrupt_index_cuts_a_blocking_write_short_and_the_next_fails_with_eproto() {
    let host = Host::start("dropin-hostile-write", &[CLIENT.0]);
    let server = RawServer::publish(&host, 5, (10, 11), None);
    let probe = probe_client(&host, Lib::Dropin, 5, &["write-until-error", "10000"]);
    server.wait_connected();
    server.wait_until("filled its ring", |p| {
        p.load_u32(abi::LEFT_PROD, SeqCst) == LEFT as u32
            && p.load_u8(abi::SRV_NOTIFY, SeqCst) & abi::NOTIFY_READ != 0
    });
    server.page().store_u32(abi::LEFT_CONS, 50_000, SeqCst);
    server.kick();
    let lines = finish(probe, None);
    assert_eq!(value(&lines, "write"), format!("{LEFT} 0"));
    assert_eq!(value(&lines, "write-again"), "-1 EPROTO");
    drop(server);
    host.assert_clean();
}

/// A live byte with no meaning (255) is not a count of anything: `is_open` says 0, with
/// `EPROTO`, where the C library returned the byte.
#[test]
fn a_live_byte_with_no_meaning_makes_is_open_zero_not_the_byte() {
    let host = Host::start("dropin-hostile-live", &[CLIENT.0]);
    let run = |lib: Lib, port: u32| {
        let server = RawServer::publish(&host, port, (10, 11), None);
        let probe = probe_client(&host, lib, port, &["watch-open"]);
        server.wait_connected();
        server.page().store_u8(abi::SRV_LIVE, 255, SeqCst);
        server.kick();
        let lines = finish(probe, None);
        drop(server);
        value(&lines, "is_open").to_owned()
    };
    assert_eq!(run(Lib::Dropin, 6), "0 EPROTO");
    // What the fix is for: the C library hands the raw byte back.
    assert_eq!(run(Lib::Debian, 7), "255 0");
    host.assert_clean();
}

/// Nonsense published by the server: the client init fails with `EPROTO` (the C library
/// returns NULL with errno unset for a zero ring-ref).
#[test]
fn a_server_that_publishes_nonsense_is_refused_with_eproto() {
    let host = Host::start("dropin-hostile-init", &[CLIENT.0]);
    let cases: [(&str, (u16, u16), Option<&str>); 4] = [
        ("an order below 10", (9, 11), None),
        ("two in-page rings of one size", (10, 10), None),
        ("an order above 20", (10, 21), None),
        ("ring-ref 0", (10, 11), Some("0")),
    ];
    for (port, (what, orders, ring_ref)) in (10..).zip(cases) {
        let server = RawServer::publish(&host, port, orders, ring_ref);
        let lines = finish(probe_client(&host, Lib::Dropin, port, &["fields"]), None);
        assert_eq!(value(&lines, "init"), "NULL EPROTO", "{what}");
        drop(server);
    }
    host.assert_clean();
}

/// Run `signal-write SIZE MODE` against the hand-played server: the ring fills, the test takes
/// 300 bytes, the probe writes 300 more and waits again, and SIGUSR1 comes until the write
/// returns (`interrupt`) or for a while (`restart`), after which the test takes everything.
fn signal_write(host: &Host, port: u32, size: usize, mode: &str) -> Vec<String> {
    let server = RawServer::publish(host, port, (10, 11), None);
    let mut probe = probe_client(
        host,
        Lib::Dropin,
        port,
        &["signal-write", &size.to_string(), mode],
    );
    let mut stdout = BufReader::new(probe.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the probe");
    assert_eq!(line.trim(), "armed");
    server.wait_connected();
    server.wait_until("filled its ring", |p| {
        p.load_u32(abi::LEFT_PROD, SeqCst) == LEFT as u32
    });
    server.consume(300);
    server.wait_until("wrote 300 more", |p| {
        p.load_u32(abi::LEFT_PROD, SeqCst) == LEFT as u32 + 300
            && p.load_u8(abi::SRV_NOTIFY, SeqCst) & abi::NOTIFY_READ != 0
    });
    let pid = probe.id().to_string();
    // (A kill that finds the probe gone, having just returned, is fine.)
    let signal = || {
        let _ = std::process::Command::new("kill")
            .args(["-USR1", &pid])
            .stderr(Stdio::null())
            .status();
    };
    if mode == "interrupt" {
        // A signal that lands before the probe sleeps is handled and forgotten; one lands
        // while it sleeps, and the write returns.
        let deadline = Instant::now() + LIMIT;
        while probe.try_wait().expect("poll the probe").is_none() {
            assert!(Instant::now() < deadline, "the write never returned");
            signal();
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        for _ in 0..5 {
            signal();
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            probe.try_wait().expect("poll the probe").is_none(),
            "the write returned though every handler has SA_RESTART"
        );
        // Take everything: the write completes.
        let deadline = Instant::now() + LIMIT;
        while probe.try_wait().expect("poll the probe").is_none() {
            assert!(Instant::now() < deadline, "the write never completed");
            let page = server.page();
            let (prod, cons) = (
                page.load_u32(abi::LEFT_PROD, SeqCst),
                page.load_u32(abi::LEFT_CONS, SeqCst),
            );
            if prod != cons {
                server.consume(prod.wrapping_sub(cons));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let rest = BufReader::into_inner(stdout);
    let lines = finish(probe, Some(rest));
    drop(server);
    lines
}

/// A blocking write that a signal handler interrupts midway reports what it wrote (the C
/// library returned -1 and lost the count); with `SA_RESTART` it carries on, as C's does.
#[test]
fn a_blocking_write_interrupted_by_a_signal_reports_its_count() {
    let host = Host::start("dropin-signal", &[CLIENT.0]);
    let interrupted = signal_write(&host, 20, 5000, "interrupt");
    assert_eq!(value(&interrupted, "write"), format!("{} 0", LEFT + 300));
    let restarted = signal_write(&host, 21, 5000, "restart");
    assert_eq!(value(&restarted, "write"), "5000 0");
    host.assert_clean();
}

/// A packet larger than the ring can never be sent or received: `EMSGSIZE` in both modes (the
/// C library's non-blocking calls return 0 for ever).
#[test]
fn packets_larger_than_the_ring_are_emsgsize_in_both_modes() {
    let host = Host::start("dropin-oversize", &[CLIENT.0]);
    let dom0 = XensimDomain::new(&host.dir, DomId::DOM0);
    let run = |lib: Lib, port: u32| {
        let server =
            Vchan::server(&dom0, CLIENT, &Address::Port(port), RingSizes::default()).unwrap();
        let lines = finish(probe_client(&host, lib, port, &["oversize"]), None);
        drop(server);
        lines
    };
    let ours = run(Lib::Dropin, 30);
    for mode in ["nonblocking", "blocking"] {
        for call in ["recv", "send"] {
            assert_eq!(value(&ours, &format!("{mode}-{call}")), "-1 EMSGSIZE");
        }
    }
    let debian = run(Lib::Debian, 31);
    assert_eq!(value(&debian, "nonblocking-recv"), "0 0");
    assert_eq!(value(&debian, "nonblocking-send"), "0 0");
    host.assert_clean();
}

/// The client's domain is destroyed without its kernel running again (nothing clears its live
/// byte, no event comes: real Xen's `xl destroy`; here its xenstore home is removed while its
/// end stays mapped): a drop-in server blocked in a read in dom0 looks at the home after 500 ms
/// of sleep and reports the close (`EPIPE`) after the bytes it had.
#[test]
fn a_blocking_read_ends_when_the_peer_domain_is_gone() {
    let host = Host::start("dropin-liveness", &[CLIENT.0]);
    let path = format!("data/vchan/{CLIENT}/40");
    let mut probe = run_on(
        &host,
        0,
        Lib::Dropin,
        &c_program("vchan-probe"),
        &["server", "1", &path, "0", "0", "read-until-error"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn the probe");
    wait_for_key(&host, &format!("/local/domain/0/{path}/event-channel"));
    let guest = XensimDomain::new(&host.dir, CLIENT);
    let mut client = Vchan::client(&guest, DomId::DOM0, &Address::Port(40), Some(LIMIT)).unwrap();
    client.write_all(&[5u8; 100]).unwrap();
    // Most likely the probe has taken the bytes and sleeps by now (either way it must read them
    // and then see the end); remove the guest's home as the toolstack does when it destroys a
    // domain.
    std::thread::sleep(Duration::from_millis(200));
    let store = xenstore::client::Client::open_path(&host.dir.join("dom0.sock")).unwrap();
    store
        .rm(TxId::NONE, &format!("/local/domain/{CLIENT}"))
        .unwrap();
    let removed = Instant::now();
    let status = wait_for(&mut probe, LIMIT, "the probe");
    println!(
        "the drop-in saw the domain gone {:?} after",
        removed.elapsed()
    );
    let mut out = Vec::new();
    probe.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(status.success(), "{}", support::stderr_of(&mut probe));
    let lines = lines(&out);
    assert_eq!(value(&lines, "read"), "-1 EPIPE");
    assert_eq!(value(&lines, "total"), "100");
    assert_eq!(value(&lines, "is_open"), "0 0");
    drop(client);
    host.assert_clean();
    dropin::assert_no_server_keys(&host);
}

/// A drop-in client killed while connected (SIGKILL: no close runs) still tells its server, as
/// its unmap notification (armed once it joined) clears its live byte and sends an event. Its
/// domain lives on, so nothing else can end the server's blocking read: without the
/// notification the read waits for ever (here, until its timeout).
#[test]
fn a_killed_dropin_client_is_seen_closed_by_its_server() {
    let host = Host::start("dropin-killed", &[CLIENT.0]);
    let dom0 = XensimDomain::new(&host.dir, DomId::DOM0);
    let port = 41;
    let mut server =
        Vchan::server(&dom0, CLIENT, &Address::Port(port), RingSizes::default()).unwrap();
    let mut probe = probe_client(&host, Lib::Dropin, port, &["read-until-error"]);
    assert_eq!(
        server.wait_connected(Some(LIMIT)).unwrap(),
        vchan::State::Connected
    );
    server.write_all(b"before").unwrap();
    probe.kill().expect("kill the probe");
    let killed = Instant::now();
    wait_for(&mut probe, LIMIT, "the killed probe");
    server.set_read_timeout(Some(LIMIT));
    let mut buf = [0u8; 16];
    assert_eq!(
        server.read(&mut buf).expect("the end, not a timeout"),
        0,
        "the server read the end of the stream"
    );
    println!("the server saw the kill {:?} after", killed.elapsed());
    server.close().unwrap();
    host.assert_clean();
}
