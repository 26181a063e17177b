//! A tool facing a hostile peer says so in one line, once: `vchan-cat` connects to a server the
//! test plays by hand on the simulated host, which then claims more bytes in its ring than the
//! ring holds. vchan-cat must exit 1 with one line naming the corruption, its cause said once.

#[path = "xensim_support.rs"]
mod support;

use std::process::Stdio;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use evtchn::EventChannel;
use gnttab::{GrantShare, SharedMemory, SharedPages, UnmapNotify};
use support::{artifacts, stderr_of, wait_for, Host};
use vchan::abi;
use vchan::xensim::XensimDomain;
use vchan::Backend;
use xen_types::DomId;
use xenstore::{Access, Perm, TxId, XenStore};

const CLIENT: DomId = DomId(1);

#[test]
fn vchan_cat_reports_a_corrupted_ring_in_one_line_said_once() {
    let host = Host::start("hostile-tool", &[CLIENT.0]);
    let dom0 = XensimDomain::new(&host.dir, DomId::DOM0);
    // A server by hand: in-page rings (1024 bytes left, 2048 right), honest at first.
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
    page.store_u16(abi::LEFT_ORDER, 10, SeqCst);
    page.store_u16(abi::RIGHT_ORDER, 11, SeqCst);
    page.store_u8(abi::CLI_LIVE, abi::LIVE_WAITING, SeqCst);
    page.store_u8(abi::SRV_LIVE, abi::LIVE_CONNECTED, SeqCst);
    page.store_u8(abi::CLI_NOTIFY, abi::NOTIFY_WRITE, SeqCst);
    let store = dom0.open_store().expect("store");
    let perms = [
        Perm::new(DomId::DOM0, Access::None),
        Perm::new(CLIENT, Access::Read),
    ];
    for (key, value) in [
        ("ring-ref", control.refs()[0].0.to_string()),
        ("event-channel", port.0.to_string()),
    ] {
        let key = format!("data/vchan/{CLIENT}/4/{key}");
        store
            .write(TxId::NONE, &key, value.as_bytes())
            .expect("write a key");
        store
            .set_perms(TxId::NONE, &key, &perms)
            .expect("set its perms");
    }
    let mut cat = host
        .run_as(
            CLIENT.0,
            &artifacts().vchan_cat,
            &["--wait", "10", "0", "4"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vchan-cat");
    let deadline = Instant::now() + Duration::from_secs(20);
    while page.load_u8(abi::CLI_LIVE, SeqCst) != abi::LIVE_CONNECTED {
        assert!(Instant::now() < deadline, "vchan-cat did not connect");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The server claims 5000 bytes in its 2048-byte ring, and says so.
    page.store_u32(abi::RIGHT_PROD, 5000, SeqCst);
    events.notify(port).expect("notify");
    let corrupted = Instant::now();
    let status = wait_for(&mut cat, Duration::from_secs(20), "vchan-cat");
    println!(
        "vchan-cat exited {:?} after the corruption",
        corrupted.elapsed()
    );
    let stderr = stderr_of(&mut cat);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    assert!(
        line.starts_with("vchan-cat: cannot receive: the peer corrupted the ring: "),
        "{line}"
    );
    assert_eq!(line.matches("claim 5000 bytes").count(), 1, "{line}");
    drop(cat.stdin.take());
    let _ = store.rm(TxId::NONE, &format!("data/vchan/{CLIENT}"));
}
