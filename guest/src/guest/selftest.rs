//! The platform's self-test against a dom0 peer (`selftest PEER`), the guest's half of the QEMU
//! tier's `guest-selftest` check; the dom0 half is `qemu-peer guest-selftest` (tests/qemu/peer,
//! `guest.rs`), which defines the same byte patterns.
//!
//! Under `data/selftest` of the guest's home:
//! 1. the guest writes, reads back and lists a key, and watches `dom0` (the watch fires at once);
//! 2. it grants two writable pages (the first filled with pattern A) and one read-only page
//!    (pattern B) to the peer, offers an unbound port, publishes `guest` = "R0 R1 R2 PORT" in a
//!    transaction, and prints `READY`;
//! 3. dom0 maps the pages (checks A, B, that the second page is zeroed, and that the read-only
//!    grant refuses a writable map), writes pattern C into the second page, binds the port,
//!    grants a page of its own (pattern D), offers a port, writes `dom0` = "mapped REF PORT" and
//!    notifies;
//! 4. the guest takes the event, checks C, drops its grants while dom0 still maps them (they
//!    must stay out of the pool: the MSA02 rule, on real Xen), maps dom0's page (checks D,
//!    writes pattern E into its second half), binds dom0's port, notifies both ports and writes
//!    `guest-step` = "mapped";
//! 5. dom0 takes both events, checks E, unmaps the guest's pages, writes `dom0` = "unmapped" and
//!    notifies;
//! 6. the guest takes the event, finds its three pages back in the pool, unmaps dom0's page,
//!    closes its ports and writes `guest-step` = "done".

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::time::Duration;

use xen_pv::pv::Platform;
use xen_pv::{Instant, PvError};
use xen_types::memory::{AsSharedRegion, SharedRegion};
use xen_types::{DomId, GrantRef, Port};
use xenstore::{Errno, TxId};

const DIR: &str = "data/selftest";
const PAGE: usize = 4096;
/// How long the guest waits for each of dom0's steps (dom0 runs under emulation).
const STEP_WAIT: Duration = Duration::from_secs(120);

/// Pattern A: the guest's first shared page.
fn pattern_a(i: usize) -> u8 {
    (i % 251) as u8
}
/// Pattern B: the guest's read-only page.
fn pattern_b(i: usize) -> u8 {
    (i * 3 % 251) as u8
}
/// Pattern C: what dom0 writes into the guest's second page.
fn pattern_c(i: usize) -> u8 {
    ((i + 100) % 251) as u8
}
/// Pattern D: the first half of dom0's page.
fn pattern_d(i: usize) -> u8 {
    ((i * 5 + 1) % 251) as u8
}
/// Pattern E: what the guest writes into the second half of dom0's page.
fn pattern_e(i: usize) -> u8 {
    ((i * 11 + 7) % 251) as u8
}

fn fill(region: SharedRegion<'_>, offset: usize, len: usize, pattern: fn(usize) -> u8) {
    let bytes: Vec<u8> = (0..len).map(pattern).collect();
    region.copy_in(offset, &bytes);
}

fn check(
    region: SharedRegion<'_>,
    offset: usize,
    len: usize,
    pattern: fn(usize) -> u8,
    what: &str,
) -> Result<(), String> {
    let mut bytes = alloc::vec![0u8; len];
    region.copy_out(offset, &mut bytes);
    match (0..len).find(|&i| bytes[i] != pattern(i)) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: byte {i} is {}, expected {}",
            bytes[i],
            pattern(i)
        )),
    }
}

fn ensure(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

fn pv(what: &str) -> impl Fn(PvError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Wait (through the watch on `dom0`) until `key` holds a value `accept` takes.
fn wait_for(
    platform: &Platform,
    key: &str,
    accept: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let store = platform.store();
    let deadline = platform.now().after(STEP_WAIT);
    loop {
        match store.read_string(TxId::NONE, key) {
            Ok(value) if accept(&value) => return Ok(value),
            Ok(_) | Err(PvError::Store(Errno::ENOENT)) => {}
            Err(e) => return Err(format!("read {key}: {e}")),
        }
        if store
            .next_watch_event(deadline)
            .map_err(pv("watch"))?
            .is_none()
        {
            return Err(format!(
                "no acceptable {key} from dom0 within {} s",
                STEP_WAIT.as_secs()
            ));
        }
    }
}

fn wait_event(platform: &Platform, port: Port, what: &str) -> Result<(), String> {
    let deadline: Instant = platform.now().after(STEP_WAIT);
    match platform
        .wait_event(&[port], Some(deadline))
        .map_err(pv(what))?
    {
        Some(_) => Ok(()),
        None => Err(format!("no {what} within {} s", STEP_WAIT.as_secs())),
    }
}

/// Run the self-test with `peer` (dom0).
pub(crate) fn run(platform: &Platform, peer: DomId) -> Result<(), String> {
    let store = platform.store();
    let me = platform.domid().map_err(pv("read domid"))?;
    say!(platform, "selftest: domain {me}, peer {peer}");
    let baseline = platform.pages_in_use();
    let before = platform.now();
    let slept = platform.wait_event(&[], Some(before.after(Duration::from_millis(100))));
    say!(
        platform,
        "selftest: clock at {} ms of Xen's time; a 100 ms poll took {} ms ({slept:?})",
        before.0 / 1_000_000,
        platform.now().since(before).as_millis()
    );

    // 1. The store: write, read back, list, watch.
    let hello = format!("{DIR}/hello");
    store
        .write(TxId::NONE, &hello, b"xen-pv")
        .map_err(pv("write"))?;
    ensure(
        store.read(TxId::NONE, &hello).map_err(pv("read"))? == b"xen-pv",
        "read back",
    )?;
    let names = store.directory(TxId::NONE, DIR).map_err(pv("directory"))?;
    ensure(
        names.iter().any(|n| n == "hello"),
        "directory lists the key",
    )?;
    let dom0_key = format!("{DIR}/dom0");
    store.watch(&dom0_key, "dom0").map_err(pv("watch"))?;
    let asked = platform.now();
    let first = store
        .next_watch_event(asked.after(Duration::from_secs(10)))
        .map_err(pv("watch event"))?;
    match first {
        Some(ev) if ev.path == dom0_key && ev.token == "dom0" => {}
        Some(ev) => {
            return Err(format!(
                "the new watch fired with {:?} {:?}",
                ev.path, ev.token
            ))
        }
        None => {
            return Err(format!(
                "a new watch did not fire within {} ms",
                platform.now().since(asked).as_millis()
            ))
        }
    }
    say!(
        platform,
        "selftest: xenstore write, read, directory, watch ok"
    );

    // 2. Grants and a port for dom0.
    let shared = platform.share_pages(peer, 2, true).map_err(pv("share"))?;
    fill(shared.region(), 0, PAGE, pattern_a);
    let read_only = platform
        .share_pages(peer, 1, false)
        .map_err(pv("share read-only"))?;
    fill(read_only.region(), 0, PAGE, pattern_b);
    let port = platform
        .bind_unbound_port(peer)
        .map_err(pv("alloc_unbound"))?;
    let refs: Vec<GrantRef> = shared
        .refs()
        .iter()
        .chain(read_only.refs())
        .copied()
        .collect();
    ensure(refs.iter().all(|r| r.0 >= 8), "refs past the reserved ones")?;
    let published = format!("{} {} {} {}", refs[0].0, refs[1].0, refs[2].0, port.0);
    loop {
        let tx = store.transaction_start().map_err(pv("transaction"))?;
        store
            .write(tx, &format!("{DIR}/guest"), published.as_bytes())
            .map_err(pv("write in transaction"))?;
        match store.transaction_end(tx, true) {
            Ok(()) => break,
            Err(PvError::Store(Errno::EAGAIN)) => continue,
            Err(e) => return Err(format!("commit: {e}")),
        }
    }
    say!(
        platform,
        "selftest: granted refs {} {} {}, port {}",
        refs[0].0,
        refs[1].0,
        refs[2].0,
        port.0
    );
    say!(platform, "READY");

    // 4. dom0 mapped our pages and offers its own.
    let mapped = wait_for(platform, &dom0_key, |v| v.starts_with("mapped "))?;
    let mut words = mapped.split(' ').skip(1).map(str::parse::<u32>);
    let (Some(Ok(dom0_ref)), Some(Ok(dom0_port)), None) =
        (words.next(), words.next(), words.next())
    else {
        return Err(format!("dom0 wrote {mapped:?}"));
    };
    wait_event(platform, port, "event from dom0 on the guest's port")?;
    check(
        shared.region(),
        PAGE,
        PAGE,
        pattern_c,
        "dom0's write into the guest's page",
    )?;
    drop(shared);
    drop(read_only);
    ensure(
        platform.quarantined_pages() == 3,
        "grants the peer still maps must not end (MSA02)",
    )?;
    ensure(platform.reap_grants() == 0, "still mapped: nothing to reap")?;
    say!(
        platform,
        "selftest: 3 grants dom0 maps stay out of the pool"
    );

    let foreign = platform
        .map_grant_refs(peer, &[GrantRef(dom0_ref)], true)
        .map_err(pv("map dom0's grant"))?;
    check(foreign.region(), 0, PAGE / 2, pattern_d, "dom0's page")?;
    fill(foreign.region(), PAGE / 2, PAGE / 2, pattern_e);
    let port2 = platform
        .bind_interdomain(peer, Port(dom0_port))
        .map_err(pv("bind_interdomain"))?;
    // Xen marks a freshly bound port pending (for notifications the unbound end may have
    // missed): take that one, so that the wait below sees only dom0's notify.
    platform
        .take_event(port2)
        .map_err(pv("take the bind's event"))?;
    platform.notify(port2).map_err(pv("notify"))?;
    platform.notify(port).map_err(pv("notify"))?;
    store
        .write(TxId::NONE, &format!("{DIR}/guest-step"), b"mapped")
        .map_err(pv("write"))?;
    say!(
        platform,
        "selftest: mapped dom0's grant {dom0_ref}, bound its port {dom0_port} as {}",
        port2.0
    );

    // 6. dom0 unmapped our pages.
    wait_for(platform, &dom0_key, |v| v == "unmapped")?;
    wait_event(platform, port2, "event from dom0 on its port")?;
    ensure(
        platform.reap_grants() == 3,
        "the grants end once dom0 unmapped",
    )?;
    drop(foreign);
    ensure(platform.leaked_pages() == 0, "dom0's page unmapped")?;
    ensure(platform.pages_in_use() == baseline, "every pool page back")?;
    platform.unbind(port).map_err(pv("close"))?;
    platform.unbind(port2).map_err(pv("close"))?;
    ensure(
        platform.notify(port).is_err(),
        "a closed port refuses a notify",
    )?;
    store.unwatch(&dom0_key, "dom0").map_err(pv("unwatch"))?;
    store
        .write(TxId::NONE, &format!("{DIR}/guest-step"), b"done")
        .map_err(pv("write"))?;
    say!(
        platform,
        "selftest: all grants ended, ports closed; heap in use {} bytes, pool pages in use {}",
        platform.heap_used(),
        platform.pages_in_use()
    );
    Ok(())
}
