//! The in-process store: the API the vchan simulation uses.

use std::sync::Arc;
use std::time::Duration;
use xenstore::local::LocalStore;
use xenstore::{DomId, Errno, TxId, XenStore, XenstoreError};

const T0: TxId = TxId::NONE;
const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn local_connection_is_send_and_sync_and_store_is_clone() {
    assert_send_sync::<xenstore::local::LocalConnection>();
    assert_send_sync::<LocalStore>();
    assert_send_sync::<xenstore::client::Client>();
}

#[test]
fn new_store_has_xenstoreds_initial_tree() {
    let s = LocalStore::new();
    assert_eq!(s.paths(), ["/", "/local", "/local/domain", "/tool"]);
    assert!(s.is_domain_introduced(DomId(0)));
    let c = s.clone().connect(DomId(0));
    c.write(T0, "/z", b"").unwrap();
    assert_eq!(s.paths(), ["/", "/local", "/local/domain", "/tool", "/z"]);
}

#[test]
fn next_watch_event_times_out_and_wakes_on_a_write_from_another_thread() {
    let s = LocalStore::new();
    let c = Arc::new(s.connect(DomId(0)));
    c.watch("/k", "t").unwrap();
    c.next_watch_event(WAIT).unwrap().unwrap();
    assert_eq!(
        c.next_watch_event(Some(Duration::from_millis(1))).unwrap(),
        None
    );
    let writer = s.connect(DomId(0));
    let waiter = {
        let c = Arc::clone(&c);
        std::thread::spawn(move || c.next_watch_event(WAIT))
    };
    writer.write(T0, "/k", b"1").unwrap();
    let ev = waiter.join().unwrap().unwrap().unwrap();
    assert_eq!(ev.path, "/k");
}

#[test]
fn dropping_a_connection_drops_its_watches_and_aborts_its_transactions() {
    let s = LocalStore::new();
    let other = s.connect(DomId(0));
    {
        let c = s.connect(DomId(0));
        c.watch("/w", "t").unwrap();
        let tx = c.transaction_start().unwrap();
        c.write(tx, "/w/in-tx", b"").unwrap();
    }
    other.write(T0, "/w/x", b"").unwrap();
    assert_eq!(
        other.read(T0, "/w/in-tx").unwrap_err().errno(),
        Some(Errno::ENOENT)
    );
    // No connection left holding watches: the store has only the nodes.
    assert_eq!(
        s.paths(),
        ["/", "/local", "/local/domain", "/tool", "/w", "/w/x"]
    );
}

#[test]
fn introduce_and_release_fire_special_watches_and_close_the_domain() {
    let s = LocalStore::new();
    let d0 = s.connect(DomId(0));
    d0.watch("@introduceDomain", "i").unwrap();
    d0.watch("@releaseDomain", "r").unwrap();
    d0.next_watch_event(WAIT).unwrap();
    d0.next_watch_event(WAIT).unwrap();
    let guest = s.connect(DomId(3));
    s.introduce_domain(DomId(3));
    assert_eq!(
        d0.next_watch_event(WAIT).unwrap().unwrap().path,
        "@introduceDomain"
    );
    assert!(s.is_domain_introduced(DomId(3)));
    s.release_domain(DomId(3));
    assert_eq!(
        d0.next_watch_event(WAIT).unwrap().unwrap().path,
        "@releaseDomain"
    );
    assert!(!s.is_domain_introduced(DomId(3)));
    assert!(matches!(
        guest.read(T0, "/"),
        Err(XenstoreError::Errno(Errno::EIO))
    ));
    assert!(guest.next_watch_event(WAIT).is_err());
}

#[test]
fn transaction_helper_retries_until_the_commit_sticks() {
    let s = LocalStore::new();
    let c = s.connect(DomId(0));
    let rival = s.connect(DomId(0));
    c.write(T0, "/counter", b"0").unwrap();
    let mut attempts = 0;
    c.transaction(|tx| {
        attempts += 1;
        let v: u32 = String::from_utf8_lossy(&c.read(tx, "/counter")?)
            .parse()
            .unwrap_or(0);
        if attempts < 3 {
            // Someone else bumps the counter meanwhile: this attempt must fail with EAGAIN.
            rival.write(T0, "/counter", (v + 10).to_string().as_bytes())?;
        }
        c.write(tx, "/counter", (v + 1).to_string().as_bytes())
    })
    .unwrap();
    assert_eq!(attempts, 3);
    assert_eq!(c.read(T0, "/counter").unwrap(), b"21");
}

#[test]
fn guests_see_relative_paths_under_their_home() {
    let s = LocalStore::new();
    let d0 = s.connect(DomId(0));
    d0.mkdir(T0, "/local/domain/4").unwrap();
    d0.set_perms(T0, "/local/domain/4", &["n4".parse().unwrap()])
        .unwrap();
    let g = s.connect(DomId(4));
    g.write(T0, "domid", b"4").unwrap();
    assert_eq!(d0.read(T0, "/local/domain/4/domid").unwrap(), b"4");
    assert_eq!(g.get_domain_path(DomId(4)).unwrap(), "/local/domain/4");
    assert_eq!(
        g.read(T0, "/tool").unwrap_err().errno(),
        Some(Errno::EACCES)
    );
}
