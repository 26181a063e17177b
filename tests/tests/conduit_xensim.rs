//! conduit-vchan on the cross-process simulated host, where domains can be destroyed: a dom0
//! listener drops the requests of a domain that dies before it connects (it watches
//! `@releaseDomain`), long before the request timeout, and nothing is left behind.

#[path = "xensim_support.rs"]
mod support;

use std::time::{Duration, Instant};

use conduit_vchan::{ListenOptions, Listener, Xen};
use vchan::xensim::XensimDomain;
use vchan::Backend;
use xen_types::DomId;
use xenstore::{Access, Perm, TxId, XenStore};

#[test]
fn a_domain_destroyed_with_requests_pending_leaves_nothing_behind() {
    let host = support::Host::start("conduit-destroy", &[3]);
    let dom0 = XensimDomain::new(&host.dir, DomId(0));
    // A request timeout far beyond the test: only the domain's death can end these requests.
    let listener = Listener::bind_with(
        &"vchan://*/svc".parse().unwrap(),
        ListenOptions::new()
            .xen(Xen::Xensim(dom0.clone()))
            .request_timeout(Duration::from_secs(600)),
    )
    .unwrap();
    let dir = "/local/domain/0/data/conduit/svc";
    {
        // Domain 3 asks twice and never connects.
        let guest = XensimDomain::new(&host.dir, DomId(3)).open_store().unwrap();
        for id in ["a", "b"] {
            let node = format!("{dir}/{id}");
            guest
                .transaction(|tx| {
                    guest.write(tx, &node, b"")?;
                    guest.set_perms(
                        tx,
                        &node,
                        &[
                            Perm::new(DomId(3), Access::None),
                            Perm::new(DomId(0), Access::Both),
                        ],
                    )
                })
                .unwrap();
        }
    }
    let store = dom0.open_store().unwrap();
    let answered = |id: &str| {
        store
            .read(TxId::NONE, &format!("{dir}/{id}/vchan/ring-ref"))
            .is_ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(answered("a") && answered("b")) {
        assert!(Instant::now() < deadline, "the requests were not answered");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The toolstack destroys the domain: its home goes and @releaseDomain fires.
    host.xensim(&["destroy", "--domid", "3"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = store.directory(TxId::NONE, dir).unwrap_or_default();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests of the dead domain stayed: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(listener);
    assert!(store.read(TxId::NONE, dir).is_err(), "the service stayed");
    drop(store);
    host.assert_clean();
}
